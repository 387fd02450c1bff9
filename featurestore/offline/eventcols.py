"""The one place that knows the columns of an `EventBatch` (besides the store and the engine).

An export of events and its reader see a batch as `ts`, `seq` and its field columns, whatever
they are (today `value` float64 and `category` int32 labels), so a change of the event shape
touches these functions only.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa

from featurestore.store.batch import EventBatch

ENTITY_COLUMN = "entity_id"
ORDER_COLUMNS = ("ts", "seq")  # every entity's events are sorted by these
_NOT_PER_EVENT = ("entity_ids", "offsets")


def event_columns() -> list[str]:
    """The per-event columns of a batch, in declaration order: ts, seq, then every field."""
    return [f.name for f in dataclasses.fields(EventBatch) if f.name not in _NOT_PER_EVENT]


def batch_table(batch: EventBatch) -> pa.Table:
    """The events of `batch` as one table: entity_id, then `event_columns()`."""
    owner = np.repeat(np.asarray(batch.entity_ids, dtype=object), batch.lengths)
    arrays = {ENTITY_COLUMN: pa.array(owner, type=pa.string())}
    for name in event_columns():
        arrays[name] = pa.array(getattr(batch, name))
    return pa.table(arrays)


def batch_from_arrays(
    entity_ids: list[str], offsets: np.ndarray, columns: dict[str, np.ndarray]
) -> EventBatch:
    """A batch from CSR offsets and one array per `event_columns()` name."""
    return EventBatch(entity_ids=list(entity_ids), offsets=offsets, **columns)


def empty_columns() -> dict[str, np.ndarray]:
    """Zero events, each column of its own dtype (those of a store batch)."""
    empty = EventBatch.from_records([], [])
    return {name: getattr(empty, name) for name in event_columns()}
