"""`EventBatch`: the events of several entities as flat NumPy columns (CSR layout).

This is what every store returns and what the feature engine consumes. Entity `i` owns rows
`offsets[i]:offsets[i + 1]`, sorted by (timestamp, sequence), so "the events with ts <= T" is
always a prefix and a time window is always a contiguous slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

NO_CATEGORY = -1

# The packed record of one stored event; the on-disk blob layout of the SQLite store too.
EVENT_DTYPE = np.dtype(
    [("ts", "<i8"), ("seq", "<i8"), ("ingested_at", "<i8"), ("value", "<f8"), ("category", "<i4")]
)


@dataclass(frozen=True)
class EventBatch:
    """Events of `entity_ids`, entity `i` in rows `offsets[i]:offsets[i+1]`."""

    entity_ids: list[str]
    offsets: np.ndarray  # int64, len(entity_ids) + 1
    ts: np.ndarray  # int64 epoch ms
    seq: np.ndarray  # int64 store sequence
    value: np.ndarray  # float64
    category: np.ndarray  # int32 label, NO_CATEGORY when absent

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def until(self, as_of_ms: int) -> EventBatch:
        """The same entities with only their events at or before `as_of_ms`."""
        keep = self.ts <= as_of_ms
        kept_before = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
        return EventBatch(
            self.entity_ids,
            kept_before[self.offsets],
            self.ts[keep],
            self.seq[keep],
            self.value[keep],
            self.category[keep],
        )

    @classmethod
    def from_records(cls, entity_ids: list[str], records: Sequence[bytes]) -> EventBatch:
        """Build from one packed `EVENT_DTYPE` buffer per entity, each in (ts, seq) order."""
        size = EVENT_DTYPE.itemsize
        lengths = np.fromiter((len(r) // size for r in records), dtype=np.int64, count=len(records))
        offsets = np.zeros(len(records) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.frombuffer(b"".join(records), dtype=EVENT_DTYPE)
        return cls(
            entity_ids=list(entity_ids),
            offsets=offsets,
            ts=np.ascontiguousarray(flat["ts"]),
            seq=np.ascontiguousarray(flat["seq"]),
            value=np.ascontiguousarray(flat["value"]),
            category=np.ascontiguousarray(flat["category"]),
        )

    @classmethod
    def from_columns(
        cls,
        entity_ids: Sequence[str],
        ts: Sequence[int] | np.ndarray,
        value: Sequence[float] | np.ndarray,
        category: Sequence[int] | np.ndarray | None = None,
        entity_of_event: Sequence[int] | np.ndarray | None = None,
    ) -> EventBatch:
        """Build from unsorted columns; `entity_of_event[k]` indexes `entity_ids`.

        The order of the input is the insertion order (sequence), so equal timestamps keep it.
        """
        ts_arr = np.asarray(ts, dtype=np.int64)
        n = ts_arr.size
        owner = (
            np.zeros(n, dtype=np.int64)
            if entity_of_event is None
            else np.asarray(entity_of_event, dtype=np.int64)
        )
        cats = (
            np.full(n, NO_CATEGORY, dtype=np.int32)
            if category is None
            else np.asarray(category, dtype=np.int32)
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
            value=np.asarray(value, dtype=np.float64)[order],
            category=cats[order],
        )
