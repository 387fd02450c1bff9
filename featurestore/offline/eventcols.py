"""The one place that knows the columns of an `EventBatch` (besides the store and the engine).

An export of events and its reader see a batch as `ts`, `seq` and one column per event field,
whatever the definitions declare (float64 numeric fields, NaN = missing; int32 labels of
categorical fields, NO_LABEL = missing), so a change of the event shape touches these
functions only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from featurestore.definitions.model import CATEGORICAL, NUMERIC
from featurestore.store.batch import LABEL_DTYPE, NUMERIC_DTYPE, EventBatch
from featurestore.store.layout import RecordLayout, StoredField

ENTITY_COLUMN = "entity_id"
ORDER_COLUMNS = ("ts", "seq")  # every entity's events are sorted by these


def layout_fields(layout: RecordLayout) -> list[dict[str, object]]:
    """A store's fields as JSON (name, kind, required), in the store's order."""
    return [{"name": f.name, "kind": f.kind, "required": f.required} for f in layout.fields]


def fields_layout(fields: list[dict[str, object]]) -> RecordLayout:
    """The inverse of `layout_fields`."""
    return RecordLayout(
        tuple(StoredField(str(f["name"]), str(f["kind"]), bool(f["required"])) for f in fields)
    )


def table_columns(layout: RecordLayout) -> list[str]:
    """The columns of an exported table: entity_id, ts, seq, then each field."""
    return [ENTITY_COLUMN, *ORDER_COLUMNS, *(f.name for f in layout.fields)]


def batch_table(batch: EventBatch, layout: RecordLayout) -> pa.Table:
    """The events of `batch` as one table of `table_columns(layout)`."""
    owner = np.repeat(np.asarray(batch.entity_ids, dtype=object), batch.lengths)
    arrays = {ENTITY_COLUMN: pa.array(owner, type=pa.string())}
    arrays.update({name: pa.array(getattr(batch, name)) for name in ORDER_COLUMNS})
    for f in layout.fields:
        column = batch.numeric[f.name] if f.kind == NUMERIC else batch.labels[f.name]
        arrays[f.name] = pa.array(column)
    return pa.table(arrays)


def batch_of(
    entity_ids: list[str],
    offsets: np.ndarray,
    columns: dict[str, np.ndarray],
    layout: RecordLayout,
) -> EventBatch:
    """A batch from CSR offsets and one array per `table_columns` name but the entity id."""
    numeric = {f.name: columns[f.name] for f in layout.fields if f.kind == NUMERIC}
    labels = {f.name: columns[f.name] for f in layout.fields if f.kind == CATEGORICAL}
    return EventBatch(list(entity_ids), offsets, columns["ts"], columns["seq"], numeric, labels)


def empty_columns(layout: RecordLayout) -> dict[str, np.ndarray]:
    """Zero events, each column of its own dtype."""
    columns = {name: np.zeros(0, dtype=np.int64) for name in ORDER_COLUMNS}
    for f in layout.fields:
        columns[f.name] = np.zeros(0, dtype=NUMERIC_DTYPE if f.kind == NUMERIC else LABEL_DTYPE)
    return columns


def gather_batch(
    batch: EventBatch, index: np.ndarray, entity_ids: list[str], offsets: np.ndarray
) -> EventBatch:
    """The events at `index` of `batch`, as the blocks of `entity_ids` given by `offsets`."""
    return EventBatch(
        entity_ids,
        offsets,
        batch.ts[index],
        batch.seq[index],
        {name: column[index] for name, column in batch.numeric.items()},
        {name: column[index] for name, column in batch.labels.items()},
    )
