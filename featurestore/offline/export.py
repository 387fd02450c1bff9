"""An offline copy of the store's events: a Parquet dataset partitioned by entity bucket.

    DIR/_export.json                     format, bucket count, fields, labels of each
                                         categorical field, counts
    DIR/bucket=00007/part-0.parquet      the events of bucket 7: entity_id, ts, seq, fields...

Each entity's events are contiguous in its bucket's file and sorted by (ts, seq), as the store
returns them. `write_export` streams the store bucket by bucket (memory: one read batch) into a
temporary directory renamed into place when complete; `ExportedEvents` reads it back as an
event source (`read`, `label_names`, `layout`), loading only the partitions the asked ids
hash to.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.offline.buckets import bucket_of, check_bucket_count, export_bucket_count
from featurestore.offline.eventcols import (
    ENTITY_COLUMN,
    batch_of,
    batch_table,
    empty_columns,
    fields_layout,
    gather_batch,
    layout_fields,
    table_columns,
)
from featurestore.offline.files import FileError
from featurestore.offline.outputs import check_replaceable, replace_dir, temporary_sibling
from featurestore.store.base import EventStore
from featurestore.store.batch import EventBatch

EXPORT_FORMAT = 2  # 2: fields of the definitions, labels per categorical field
META_FILE = "_export.json"
EXPORT_READ_ENTITIES = 5_000  # entities per store read (one row group of a partition)


@dataclass(frozen=True)
class ExportSummary:
    entities: int
    events: int
    buckets: int
    seconds: float


def partition_dir(root: Path, bucket: int) -> Path:
    return root / f"bucket={bucket:05d}"


def partition_file(root: Path, bucket: int) -> Path:
    return partition_dir(root, bucket) / "part-0.parquet"


# ----------------------------------------------------------------------------- writing
def write_export(
    store: EventStore,
    output: str | Path,
    *,
    buckets: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write every event of `store` to `output` (replacing an earlier export there)."""
    started = time.perf_counter()
    target = Path(output)
    check_replaceable(target, META_FILE, "an export of events")
    ids = np.asarray(store.entity_ids(), dtype=object)
    n_buckets = check_bucket_count(buckets or export_bucket_count(store.counts()["events"]))
    labels = store.label_names()
    owner = bucket_of(ids, n_buckets) if ids.size else np.zeros(0, dtype=np.int64)
    temporary = temporary_sibling(target)
    temporary.mkdir(parents=True)
    try:
        events_per_bucket = [
            _write_bucket(store, temporary, bucket, ids[owner == bucket], progress)
            for bucket in range(n_buckets)
        ]
        meta = {
            "format": EXPORT_FORMAT,
            "buckets": n_buckets,
            "fields": layout_fields(store.layout),
            "labels": labels,
            "entities": int(ids.size),
            "events": int(sum(events_per_bucket)),
            "events_per_bucket": events_per_bucket,
        }
        (temporary / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        replace_dir(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return ExportSummary(int(ids.size), meta["events"], n_buckets, time.perf_counter() - started)


def _write_bucket(
    store: EventStore,
    root: Path,
    bucket: int,
    ids: np.ndarray,
    progress: Callable[[int], None] | None,
) -> int:
    if ids.size == 0:
        return 0
    path = partition_file(root, bucket)
    path.parent.mkdir()
    written = 0
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, ids.size, EXPORT_READ_ENTITIES):
            batch = store.read(list(ids[start : start + EXPORT_READ_ENTITIES]))
            table = batch_table(batch, store.layout)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            written += table.num_rows
            if progress is not None:
                progress(table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    return written


# ----------------------------------------------------------------------------- reading
class ExportedEvents:
    """An export as a read-only event source: `read(entity_ids)`, `label_names()` and the
    `layout` of its fields (as a store has them)."""

    def __init__(self, directory: str | Path) -> None:
        self.root = Path(directory)
        self.meta = read_meta(self.root)
        self.buckets = int(self.meta["buckets"])
        self.layout = fields_layout(self.meta["fields"])
        self._tables: dict[int, pa.Table] = {}

    def label_names(self) -> dict[str, list[str]]:
        return {field: list(names) for field, names in self.meta["labels"].items()}

    def counts(self) -> dict[str, int]:
        return {"entities": self.meta["entities"], "events": self.meta["events"]}

    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch:
        """Every event of each asked entity (duplicates allowed), or those with ts <= T."""
        wanted = pd.Index(list(dict.fromkeys(entity_ids)), dtype=object)
        parts = []
        for bucket in np.unique(bucket_of(wanted.to_numpy(), self.buckets)).tolist():
            table = self._partition(int(bucket))
            if table is None:
                continue
            keep = pc.is_in(table[ENTITY_COLUMN], value_set=pa.array(wanted, type=pa.string()))
            parts.append(table.filter(keep))
        batch = self._batch(wanted, parts)
        if len(wanted) != len(entity_ids):
            batch = _expand(batch, wanted, entity_ids)
        return batch if as_of_ms is None else batch.until(as_of_ms)

    def _partition(self, bucket: int) -> pa.Table | None:
        """The bucket's events (None when it has none)."""
        if int(self.meta["events_per_bucket"][bucket]) == 0:
            return None
        if bucket not in self._tables:
            self._tables[bucket] = self._load(bucket)
        return self._tables[bucket]

    def _load(self, bucket: int) -> pa.Table:
        expected = int(self.meta["events_per_bucket"][bucket])
        columns = table_columns(self.layout)
        path = partition_file(self.root, bucket)
        try:
            table = pq.read_table(path, columns=columns)
        except (OSError, pa.ArrowException) as exc:
            raise FileError(f"{path}: cannot read this partition of the export ({exc})") from None
        if table.num_rows != expected:
            raise FileError(f"{path}: {table.num_rows} events where the export recorded {expected}")
        return table

    def _batch(self, wanted: pd.Index, parts: list[pa.Table]) -> EventBatch:
        names = table_columns(self.layout)[1:]
        if not parts:
            offsets = np.zeros(len(wanted) + 1, np.int64)
            return batch_of(list(wanted), offsets, empty_columns(self.layout), self.layout)
        table = pa.concat_tables(parts)
        owner = wanted.get_indexer(table[ENTITY_COLUMN].to_numpy(zero_copy_only=False))
        order = np.argsort(owner, kind="stable")  # keeps each entity's (ts, seq) order
        offsets = np.zeros(len(wanted) + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=len(wanted)), out=offsets[1:])
        columns = {n: np.ascontiguousarray(table[n].to_numpy()[order]) for n in names}
        return batch_of(list(wanted), offsets, columns, self.layout)

    def close(self) -> None:
        self._tables.clear()


def _expand(batch: EventBatch, wanted: pd.Index, entity_ids: Sequence[str]) -> EventBatch:
    """`batch` (one block per distinct id) with one block per asked id, duplicates included."""
    which = wanted.get_indexer(list(entity_ids))
    starts, lengths = batch.offsets[which], batch.lengths[which]
    offsets = np.zeros(len(which) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    index = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return gather_batch(batch, index, list(entity_ids), offsets)


def read_meta(root: Path) -> dict:
    """The export's description, checked: FileError names the directory and the problem."""
    path = root / META_FILE
    if not root.is_dir():
        raise FileError(f"{root}: no such export directory (make one with `featurestore export`)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FileError(f"{root}: not an export of events ({META_FILE}: {exc})") from None
    if meta.get("format") != EXPORT_FORMAT:
        raise FileError(
            f"{root}: export format {meta.get('format')!r}; this version reads {EXPORT_FORMAT} "
            "(export the events again)"
        )
    return meta
