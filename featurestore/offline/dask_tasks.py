"""The tasks of `generate` on Dask (the driver: `dask_generate.py`) and what they carry.

Each is a plain function of picklable values, run by any worker: `split_piece` (rows of a
piece, cut by bucket), `compute_bucket` (one `feature_frame` call over a bucket's rows and
the events of its entities), `write_piece` (a piece's rows back in input order, written as a
part of the output or returned). Event sources are specs a task opens itself: the store of
the settings (`StoreEvents`), or an export (`ExportEvents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurestore.config import Settings
from featurestore.definitions.model import FeatureSet
from featurestore.offline.buckets import bucket_of
from featurestore.offline.compute import (
    VERSION_METADATA_KEY,
    EventSource,
    chunk_keys,
    feature_frame,
    output_frame,
)
from featurestore.offline.export import ExportedEvents
from featurestore.offline.files import ROW_REQUIRED, FileError, identifier_values
from featurestore.offline.outputs import part_writer
from featurestore.offline.rowsource import RowPiece, piece_chunks

STORE_ROLE = "dask-task"  # a task's connection on a PostgreSQL server: featurestore-dask-task


# ------------------------------------------------------------------------- event sources
@dataclass(frozen=True)
class StoreEvents:
    """Events read from the store by each task (workers must reach it: SQLite on this host,
    or the PostgreSQL server of STORE_URL), opened by the one store-opening function."""

    settings: Settings

    def open(self) -> EventSource:
        """The store the settings name (whichever backend: `store/factory.py`)."""
        from featurestore.store.factory import open_event_store

        return open_event_store(self.settings, role=STORE_ROLE)


@dataclass(frozen=True)
class ExportEvents:
    """Events read from an export (`featurestore export events`), a path the workers see."""

    directory: str

    def open(self) -> ExportedEvents:
        return ExportedEvents(self.directory)


EventsSpec = StoreEvents | ExportEvents


@dataclass(frozen=True)
class Job:
    features: FeatureSet
    names: list[str]
    buckets: int
    chunk_rows: int
    events: EventsSpec


@dataclass(frozen=True)
class SplitInfo:
    rows: int
    counts: np.ndarray  # rows per bucket
    error: str | None = None


@dataclass(frozen=True)
class KeyRows:
    """Rows of one bucket from one piece: input position, entity id (as codes into its
    distinct ids: a Python string is pickled once, not once a row), as-of time."""

    position: np.ndarray
    codes: np.ndarray
    uniques: np.ndarray
    as_of: np.ndarray

    @classmethod
    def of(cls, position: np.ndarray, entity_ids: np.ndarray, as_of: np.ndarray) -> KeyRows:
        codes, uniques = pd.factorize(entity_ids)
        return cls(position, codes.astype(np.int32), np.asarray(uniques, dtype=object), as_of)

    @property
    def entity_ids(self) -> np.ndarray:
        return self.uniques[self.codes]


@dataclass(frozen=True)
class RowResults:
    """Results of one bucket's rows of one piece."""

    position: np.ndarray
    features: pd.DataFrame
    found: np.ndarray


# ------------------------------------------------------------------------------- tasks
def split_piece(piece: RowPiece, job: Job) -> tuple:
    """(SplitInfo, then a KeyRows or None for each bucket). A bad row is an answer, not an
    exception (retrying would not help): the client reports the first in input order."""
    ids, as_of = [], []
    try:
        for offset, chunk in piece_chunks(piece, ROW_REQUIRED, job.chunk_rows):
            entity_ids, times = chunk_keys(Path(piece.path), chunk, offset)
            ids.append(entity_ids)
            as_of.append(times)
    except FileError as exc:
        return (SplitInfo(0, np.zeros(job.buckets, np.int64), str(exc)), *[None] * job.buckets)
    entity_ids = np.concatenate(ids)
    times = np.concatenate(as_of)
    position = piece.first + np.arange(entity_ids.size, dtype=np.int64)
    bucket = bucket_of(entity_ids, job.buckets)
    order = np.argsort(bucket, kind="stable")
    counts = np.bincount(bucket, minlength=job.buckets).astype(np.int64)
    bounds = np.concatenate(([0], np.cumsum(counts)))
    parts = []
    for b in range(job.buckets):
        rows = order[bounds[b] : bounds[b + 1]]
        parts.append(
            KeyRows.of(position[rows], entity_ids[rows], times[rows]) if rows.size else None
        )
    return (SplitInfo(int(entity_ids.size), counts), *parts)


def compute_bucket(job: Job, pieces: list[int], parts: list[KeyRows]) -> dict[int, RowResults]:
    """The features of one bucket's rows (from `pieces`, in that order), cut back by piece."""
    entity_ids = np.concatenate([p.entity_ids for p in parts])
    as_of = np.concatenate([p.as_of for p in parts])
    source = job.events.open()
    try:
        features, found = feature_frame(source, entity_ids, as_of, job.features, job.names)
    finally:
        source.close()
    out, start = {}, 0
    for ordinal, part in zip(pieces, parts, strict=True):
        stop = start + part.position.size
        out[ordinal] = RowResults(part.position, features.iloc[start:stop], found[start:stop])
        start = stop
    return out


def write_piece(
    piece: RowPiece, job: Job, directory: str | None, results: list[RowResults]
) -> tuple[int, int, list[pd.DataFrame] | None]:
    """The piece's output rows in input order: written as a part of the dataset being made in
    `directory`, or returned (for the client to write one file). (rows, found, frames)."""
    position = np.concatenate([r.position for r in results])
    order = np.argsort(position, kind="stable")
    expected = piece.first + np.arange(piece.rows, dtype=np.int64)
    if not np.array_equal(position[order], expected):
        raise RuntimeError(f"piece {piece.ordinal}: rows lost or doubled between tasks")
    features = pd.concat([r.features for r in results], ignore_index=True).iloc[order]
    found = np.concatenate([r.found for r in results])[order]
    frames, start = [], 0
    for _, chunk in piece_chunks(piece, ROW_REQUIRED, job.chunk_rows):
        entity_ids = identifier_values(chunk, "entity_id")  # checked by split_piece
        stop = start + len(chunk)
        frames.append(output_frame(chunk, entity_ids, features.iloc[start:stop], found[start:stop]))
        start = stop
    if directory is None:
        return piece.rows, int(found.sum()), frames
    writer = part_writer(
        Path(directory), piece.ordinal, {VERSION_METADATA_KEY: job.features.version}
    )
    with writer:
        for frame in frames:
            writer.write(frame)
    return piece.rows, int(found.sum()), None
