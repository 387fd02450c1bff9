"""Offline retrieval: point-in-time correct feature rows for training data.

`feature_frame` turns (entity_id, timestamp) rows into one feature vector per row, each as of
its own timestamp, with the same engine as online serving. `generate_file` streams rows of any
size (a file, or a Parquet dataset) through it chunk by chunk, keeping the input order;
`chunk_keys` and `output_frame` are the two halves of a chunk that the Dask engine
(`featurestore/offline/dask_generate.py`) runs in different tasks, so both engines validate
and write rows with the same code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from featurestore.definitions.model import FeatureSet
from featurestore.features.engine import compute
from featurestore.features.registry import feature_set
from featurestore.offline.files import (
    ROW_REQUIRED,
    FileError,
    check_identifiers,
    check_timestamps,
    normalise_row_timestamps,
    read_chunks,
)
from featurestore.offline.outputs import open_output
from featurestore.offline.rowsource import row_files
from featurestore.store.batch import EventBatch

STATUS_OK = "ok"
STATUS_NOT_FOUND = "not_found"
GENERATE_CHUNK_ROWS = 100_000
VERSION_METADATA_KEY = "featurestore.version"  # Parquet schema metadata of generated files


class EventSource(Protocol):
    """What feature rows need of events: the store, or an export of it."""

    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch: ...

    def label_names(self) -> dict[str, list[str]]: ...


@dataclass(frozen=True)
class GenerateSummary:
    rows: int
    found: int
    seconds: float


def resolve_features(version: FeatureSet | str) -> FeatureSet:
    """A loaded version as it is; a name: that version of the shipped file."""
    return version if isinstance(version, FeatureSet) else feature_set(version)


def select_features(version: FeatureSet | str, names: list[str] | None) -> list[str]:
    """The requested feature names (all when None/empty), checked against the version (a
    loaded one, or a name of the shipped file)."""
    known = resolve_features(version)
    if not names:
        return known.names
    unknown = known.unknown(names)
    if unknown:
        raise KeyError(", ".join(unknown))
    return list(names)


def feature_frame(
    store: EventSource,
    entity_ids: np.ndarray,
    as_of_ms: np.ndarray,
    version: FeatureSet | str,
    names: list[str],
) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature columns (in `names` order; int features as nullable Int64) and the found mask."""
    features = resolve_features(version)
    codes, uniques = pd.factorize(entity_ids)
    batch = store.read(list(uniques))
    matrix = compute(batch, codes, as_of_ms, features, store.label_names())
    columns = features.index_of(names)
    int_mask = features.int_mask
    data = {}
    for name, column in zip(names, columns, strict=True):
        values = matrix.values[:, column]
        if int_mask[column]:
            missing = np.isnan(values)
            data[name] = pd.arrays.IntegerArray(
                np.where(missing, 0, values).astype(np.int64), missing
            )
        else:
            data[name] = values
    return pd.DataFrame(data), matrix.found


def chunk_keys(path: Path, chunk: pd.DataFrame, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """The entity ids (object array) and as-of times (int64 ms) of a chunk of rows, checked;
    FileError names the file, the row (`offset` rows precede the chunk) and the column."""
    entity_ids = check_identifiers(path, chunk, "entity_id", offset, required=True)
    return entity_ids, check_timestamps(path, chunk, offset)


def output_frame(
    chunk: pd.DataFrame, entity_ids: np.ndarray, features: pd.DataFrame, found: np.ndarray
) -> pd.DataFrame:
    """The output rows of a chunk: entity_id, timestamp (as in the input), features, status."""
    out = pd.DataFrame(
        {"entity_id": entity_ids, "timestamp": normalise_row_timestamps(chunk["timestamp"])}
    )
    out = pd.concat([out.reset_index(drop=True), features.reset_index(drop=True)], axis=1)
    out["status"] = np.where(found, STATUS_OK, STATUS_NOT_FOUND)
    return out


def generate_file(
    store: EventSource,
    rows_path: str | Path,
    output_path: str | Path,
    *,
    version: FeatureSet | str,
    names: list[str],
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = GENERATE_CHUNK_ROWS,
) -> GenerateSummary:
    """Write one feature vector per input row, in input order, to `output_path` (a file, or a
    Parquet dataset directory with one part per input file)."""
    started = time.perf_counter()
    features = resolve_features(version)
    files = row_files(rows_path)
    rows = found = 0
    output = open_output(output_path, {VERSION_METADATA_KEY: features.version})
    try:
        for index, source in enumerate(files):
            output.start_part(index)
            offset = 0
            for chunk in read_chunks(source, ROW_REQUIRED, chunk_rows=chunk_rows):
                entity_ids, as_of = chunk_keys(source, chunk, offset)
                columns, hit = feature_frame(store, entity_ids, as_of, features, names)
                output.write(output_frame(chunk, entity_ids, columns, hit))
                offset += len(chunk)
                found += int(hit.sum())
                if progress is not None:
                    progress(len(chunk))
            rows += offset
        if rows == 0:
            raise FileError(f"{rows_path}: no rows")
        summary = {"version": features.version, "rows": rows, "found": found}
        output.commit({**summary, "parts": len(files)})
    except BaseException:
        output.abort()
        raise
    return GenerateSummary(rows, found, time.perf_counter() - started)
