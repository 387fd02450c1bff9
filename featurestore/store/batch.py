"""`EventBatch`: the events of several entities as flat NumPy columns (CSR layout).

This is what every store returns and what the feature engine consumes. Entity `i` owns rows
`offsets[i]:offsets[i + 1]`, sorted by (timestamp, sequence), so "the events with ts <= T" is
always a prefix and a time window is always a contiguous slice. Each numeric field is a
float64 column (NaN = the event lacks it), each categorical field an int32 column of labels
(NO_LABEL = it lacks it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

NO_LABEL = -1
NO_CATEGORY = NO_LABEL  # the name of Part I, for the `category` field
STORE_COLUMNS = (("ts", "<i8"), ("seq", "<i8"), ("ingested_at", "<i8"))
NUMERIC_DTYPE = "<f8"
LABEL_DTYPE = "<i4"


def record_dtype(fields: Sequence[tuple[str, str]]) -> np.dtype:
    """The packed record of one stored event with these (name, kind) fields, in order:
    ts, seq, ingested_at, then a float64 per numeric field and an int32 per categorical one.
    The on-disk blob layout of the stores too."""
    columns = [(name, NUMERIC_DTYPE if kind == "numeric" else LABEL_DTYPE) for name, kind in fields]
    return np.dtype([*STORE_COLUMNS, *columns])


DEFAULT_FIELDS = (("value", "numeric"), ("category", "categorical"))
EVENT_DTYPE = record_dtype(DEFAULT_FIELDS)  # the record of the default schema (Part I's)


@dataclass(frozen=True)
class EventBatch:
    """Events of `entity_ids`, entity `i` in rows `offsets[i]:offsets[i+1]`."""

    entity_ids: list[str]
    offsets: np.ndarray  # int64, len(entity_ids) + 1
    ts: np.ndarray  # int64 epoch ms
    seq: np.ndarray  # int64 store sequence
    numeric: Mapping[str, np.ndarray]  # float64 per numeric field, NaN = missing
    labels: Mapping[str, np.ndarray]  # int32 per categorical field, NO_LABEL = missing

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def value(self) -> np.ndarray:
        """The `value` field of the default schema."""
        return self.numeric["value"]

    @property
    def category(self) -> np.ndarray:
        """The `category` field of the default schema."""
        return self.labels["category"]

    def select(self, keep: np.ndarray) -> EventBatch:
        """The same entities with only the rows where `keep` holds."""
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        return EventBatch(
            self.entity_ids,
            kept_before[self.offsets],
            self.ts[keep],
            self.seq[keep],
            {name: column[keep] for name, column in self.numeric.items()},
            {name: column[keep] for name, column in self.labels.items()},
        )

    def until(self, as_of_ms: int) -> EventBatch:
        """The same entities with only their events at or before `as_of_ms`."""
        return self.select(self.ts <= as_of_ms)

    @classmethod
    def from_records(
        cls, entity_ids: list[str], records: Sequence[bytes], dtype: np.dtype = EVENT_DTYPE
    ) -> EventBatch:
        """Build from one packed `dtype` buffer per entity, each in (ts, seq) order."""
        size = dtype.itemsize
        lengths = np.fromiter((len(r) // size for r in records), dtype=np.int64, count=len(records))
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls.from_array(entity_ids, offsets, np.frombuffer(b"".join(records), dtype=dtype))

    @classmethod
    def from_array(cls, entity_ids: list[str], offsets: np.ndarray, flat: np.ndarray) -> EventBatch:
        """Build from one structured array of records (`record_dtype`) in CSR order."""
        fields = [name for name, _ in STORE_COLUMNS]
        numeric, labels = {}, {}
        for name in flat.dtype.names:
            if name in fields:
                continue
            target = numeric if flat.dtype[name].kind == "f" else labels
            target[name] = np.ascontiguousarray(flat[name])
        return cls(
            entity_ids=list(entity_ids),
            offsets=offsets,
            ts=np.ascontiguousarray(flat["ts"]),
            seq=np.ascontiguousarray(flat["seq"]),
            numeric=numeric,
            labels=labels,
        )

    @classmethod
    def from_columns(
        cls,
        entity_ids: Sequence[str],
        ts: Sequence[int] | np.ndarray,
        value: Sequence[float] | np.ndarray | None = None,
        category: Sequence[int] | np.ndarray | None = None,
        entity_of_event: Sequence[int] | np.ndarray | None = None,
        *,
        numeric: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        labels: Mapping[str, Sequence[int] | np.ndarray] | None = None,
    ) -> EventBatch:
        """Build from unsorted columns; `entity_of_event[k]` indexes `entity_ids`. `value`
        and `category` are the default schema's fields (with `value` given, `category`
        defaults to all missing); `numeric` and `labels` any others.

        The order of the input is the insertion order (sequence), so equal timestamps keep it.
        """
        ts_arr = np.asarray(ts, dtype=np.int64)
        n = ts_arr.size
        numeric_columns = {k: np.asarray(v, dtype=np.float64) for k, v in (numeric or {}).items()}
        label_columns = {k: np.asarray(v, dtype=np.int32) for k, v in (labels or {}).items()}
        if value is not None:
            numeric_columns["value"] = np.asarray(value, dtype=np.float64)
            label_columns.setdefault("category", np.full(n, NO_LABEL, dtype=np.int32))
        if category is not None:
            label_columns["category"] = np.asarray(category, dtype=np.int32)
        owner = (
            np.zeros(n, dtype=np.int64)
            if entity_of_event is None
            else np.asarray(entity_of_event, dtype=np.int64)
        )
        seq = np.arange(n, dtype=np.int64)
        order = np.lexsort((seq, ts_arr, owner))
        counts = np.bincount(owner, minlength=len(entity_ids)).astype(np.int64)
        offsets = np.zeros(len(entity_ids) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(
            entity_ids=list(entity_ids),
            offsets=offsets,
            ts=ts_arr[order],
            seq=seq[order],
            numeric={k: v[order] for k, v in numeric_columns.items()},
            labels={k: v[order] for k, v in label_columns.items()},
        )
