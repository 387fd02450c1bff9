"""Batch and historical results as arrays, API items or DataFrames (one home for the shapes).

The broker answers batch/historical requests with one float64 block of the selected features
plus per-row arrays; `FeatureBatch` wraps them, and turns them into the JSON items of the HTTP
API or into a pandas DataFrame without a per-value Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from featurestore.features.registry import feature_set
from featurestore.protocol import get_array
from featurestore.queries import GetPlan

# The cache figures of GET /features/stats (`cache_stats`), in this order.
CACHE_STATS_FIELDS = (
    "size",
    "max_size",
    "hit_rate",
    "utilization",
    "evictions",
    "expirations",
    "memory_bytes",
)
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


@dataclass(frozen=True)
class FeatureBatch:
    entity_ids: list[str]
    version: str
    names: list[str]
    values: np.ndarray  # (m, len(names)) float64, NaN = null
    found: np.ndarray  # bool (m,)
    cached: np.ndarray | None = None  # bool (m,), batch only
    timestamps: np.ndarray | list | None = None  # T of each row (int64), or as given
    timestamp: int | None = None  # T of the request (batch)

    @classmethod
    def from_reply(
        cls, entity_ids: list[str], body: dict, blocks: list, timestamps: np.ndarray | None = None
    ) -> FeatureBatch:
        cached = get_array(blocks, body["cached"]) if "cached" in body else None
        stamps = get_array(blocks, body["timestamps"]) if "timestamps" in body else timestamps
        return cls(
            entity_ids,
            body["version"],
            list(body["features"]),
            get_array(blocks, body["values"]),
            get_array(blocks, body["found"]),
            cached,
            stamps,
            body.get("timestamp"),
        )

    def int_columns(self) -> list[bool]:
        int_mask = feature_set(self.version).int_mask
        return [bool(int_mask[i]) for i in feature_set(self.version).index_of(self.names)]

    def feature_dicts(self) -> list[dict | None]:
        """Per row {name: value} (None for null, int for int features), None when not found."""
        names = self.names
        rows = python_rows(self.values, self.int_columns())
        return [
            dict(zip(names, row, strict=True)) if ok else None
            for row, ok in zip(rows, self.found.tolist(), strict=True)
        ]

    def items(self) -> list[dict]:
        """The `features` list of POST /features/batch (or `rows` of /features/historical)."""
        features = self.feature_dicts()
        status = [STATUS_OK if f else STATUS_NOT_FOUND for f in self.found.tolist()]
        if self.timestamps is None:
            stamps = [None] * len(status)
        elif isinstance(self.timestamps, np.ndarray):
            stamps = self.timestamps.tolist()
        else:
            stamps = list(self.timestamps)
        if self.cached is None:
            return [
                {"entity_id": e, "timestamp": t, "features": f, "status": s}
                for e, t, f, s in zip(self.entity_ids, stamps, features, status, strict=True)
            ]
        return [
            {"entity_id": e, "features": f, "status": s, "cached": c, "timestamp": t}
            for e, f, s, c, t in zip(
                self.entity_ids, features, status, self.cached.tolist(), stamps, strict=True
            )
        ]

    def to_frame(self) -> pd.DataFrame:
        """entity_id, timestamp, one column per feature (ints as nullable Int64), status
        [, cached]."""
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


def single_body(plan: GetPlan, vector: np.ndarray, cached: bool, t_ms: int) -> dict:
    """The result of a single get (the HTTP body less latency_ms)."""
    return {
        "entity_id": plan.entity_id,
        "features": plan.query.view.to_dict(vector),
        "version": plan.query.version,
        "cached": cached,
        "timestamp": int(t_ms),
    }
