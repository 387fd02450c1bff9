"""Feature results as typed answers, API items or DataFrames (one home for the shapes).

The broker answers batch and historical requests with a `MatrixAnswer`: the selected features
as one float64 block plus per-row arrays. `FeatureBatch` wraps such arrays and turns them
into the items of the HTTP API or into a pandas DataFrame, without a per-value Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.features.vectors import VectorView
from featurestore.validation.requests import GetPlan
from featurestore.wire.frames import get_array, put_array
from featurestore.wire.messages import BatchItem, GetAnswer, HistoricalItem, MatrixAnswer

STATUS_OK = "ok"
STATUS_NOT_FOUND = "not_found"


def python_rows(values: np.ndarray, int_columns: list[bool]) -> list[list]:
    """Rows of `values` as Python lists: None for NaN, int in integer columns (vectorised)."""
    objects = values.astype(object)
    missing = np.isnan(values)
    for column in np.flatnonzero(int_columns).tolist():
        ints = np.where(missing[:, column], 0, values[:, column]).astype(np.int64)
        objects[:, column] = ints.astype(object)
    objects[missing] = None
    return objects.tolist()


def distinct(entity_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """(codes, uniques): entity_ids[i] == uniques[codes[i]], uniques in first-seen order."""
    position: dict[str, int] = {}
    codes = np.fromiter(
        (position.setdefault(e, len(position)) for e in entity_ids),
        dtype=np.int64,
        count=len(entity_ids),
    )
    return codes, list(position)


def single_answer(plan: GetPlan, vector: np.ndarray, cached: bool, t_ms: int) -> GetAnswer:
    """The answer of a single get (HTTP adds latency_ms)."""
    return GetAnswer(
        plan.entity_id,
        plan.query.view.to_dict(vector),
        plan.query.version,
        cached,
        int(t_ms),
    )


def matrix_answer(
    view: VectorView,
    values: np.ndarray,
    found: np.ndarray,
    *,
    cached: np.ndarray | None = None,
    timestamps: np.ndarray | None = None,
    timestamp: int | None = None,
) -> tuple[MatrixAnswer, list]:
    """A batch/historical answer: the view's columns of full vectors as one block."""
    blocks: list = []
    selected = view.select(values)
    answer = MatrixAnswer(
        count=int(found.size),
        version=view.version,
        features=view.names,
        integer=view.is_int,
        values=put_array(blocks, selected),
        found=put_array(blocks, found),
        cached=None if cached is None else put_array(blocks, cached),
        timestamps=None if timestamps is None else put_array(blocks, timestamps),
        timestamp=timestamp,
    )
    return answer, blocks


@dataclass(frozen=True)
class FeatureBatch:
    entity_ids: list[str]
    version: str
    names: list[str]
    integer: list[bool]  # per name: an integer-valued feature
    values: np.ndarray  # (m, len(names)) float64, NaN = null
    found: np.ndarray  # bool (m,)
    cached: np.ndarray | None = None  # bool (m,), batch only
    timestamps: np.ndarray | list | None = None  # T of each row (int64), or as given
    timestamp: int | None = None  # T of the request (batch)

    @classmethod
    def from_answer(
        cls,
        entity_ids: list[str],
        answer: MatrixAnswer,
        blocks: list,
        timestamps: np.ndarray | None = None,
    ) -> FeatureBatch:
        return cls(
            entity_ids,
            answer.version,
            list(answer.features),
            list(answer.integer),
            get_array(blocks, answer.values),
            get_array(blocks, answer.found),
            None if answer.cached is None else get_array(blocks, answer.cached),
            timestamps if answer.timestamps is None else get_array(blocks, answer.timestamps),
            answer.timestamp,
        )

    def int_columns(self) -> list[bool]:
        return self.integer

    def feature_dicts(self) -> list[dict | None]:
        """Per row {name: value} (None for null, int for int features), None when not found."""
        names = self.names
        rows = python_rows(self.values, self.int_columns())
        return [
            dict(zip(names, row, strict=True)) if ok else None
            for row, ok in zip(rows, self.found.tolist(), strict=True)
        ]

    def _stamps(self) -> list:
        if self.timestamps is None:
            return [None] * len(self.entity_ids)
        if isinstance(self.timestamps, np.ndarray):
            return self.timestamps.tolist()
        return list(self.timestamps)

    def batch_items(self) -> list[BatchItem]:
        """The `features` list of POST /features/batch."""
        features = self.feature_dicts()
        return [
            BatchItem(e, f, STATUS_OK if f is not None else STATUS_NOT_FOUND, c, t)
            for e, f, c, t in zip(
                self.entity_ids, features, self.cached.tolist(), self._stamps(), strict=True
            )
        ]

    def historical_items(self) -> list[HistoricalItem]:
        """The `rows` list of POST /features/historical."""
        features = self.feature_dicts()
        return [
            HistoricalItem(e, t, f, STATUS_OK if f is not None else STATUS_NOT_FOUND)
            for e, t, f in zip(self.entity_ids, self._stamps(), features, strict=True)
        ]

    def items(self) -> list[dict]:
        """The items as plain dicts (what the Python client returns)."""
        import msgspec

        rows = self.batch_items() if self.cached is not None else self.historical_items()
        return [msgspec.structs.asdict(row) for row in rows]

    def to_frame(self):
        """entity_id, timestamp, one column per feature (ints as nullable Int64), status
        [, cached]."""
        import pandas as pd

        data: dict = {"entity_id": self.entity_ids}
        if self.timestamps is not None:
            data["timestamp"] = self.timestamps
        for i, (name, integer) in enumerate(zip(self.names, self.int_columns(), strict=True)):
            column = self.values[:, i]
            if integer:
                missing = np.isnan(column)
                data[name] = pd.arrays.IntegerArray(
                    np.where(missing, 0, column).astype(np.int64), missing
                )
            else:
                data[name] = column
        data["status"] = np.where(self.found, STATUS_OK, STATUS_NOT_FOUND)
        if self.cached is not None:
            data["cached"] = self.cached
        return pd.DataFrame(data)
