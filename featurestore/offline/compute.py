"""Offline retrieval: point-in-time correct feature rows for training data.

`feature_frame` turns (entity_id, timestamp) rows into one feature vector per row, each as of
its own timestamp, with the same engine as online serving. `generate_file` streams a file of
any size through it chunk by chunk, keeping the input order.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurestore.definitions.model import FeatureSet
from featurestore.features.engine import compute
from featurestore.features.registry import feature_set
from featurestore.offline.files import (
    ROW_REQUIRED,
    FrameWriter,
    check_identifiers,
    check_timestamps,
    normalise_row_timestamps,
    read_chunks,
)
from featurestore.store.base import EventStore

STATUS_OK = "ok"
STATUS_NOT_FOUND = "not_found"
GENERATE_CHUNK_ROWS = 100_000
VERSION_METADATA_KEY = "featurestore.version"  # Parquet schema metadata of generated files


@dataclass(frozen=True)
class GenerateSummary:
    rows: int
    found: int
    seconds: float


def _features(version: FeatureSet | str) -> FeatureSet:
    return version if isinstance(version, FeatureSet) else feature_set(version)


def select_features(version: FeatureSet | str, names: list[str] | None) -> list[str]:
    """The requested feature names (all when None/empty), checked against the version (a
    loaded one, or a name of the shipped file)."""
    known = _features(version)
    if not names:
        return known.names
    unknown = known.unknown(names)
    if unknown:
        raise KeyError(", ".join(unknown))
    return list(names)


def feature_frame(
    store: EventStore,
    entity_ids: np.ndarray,
    as_of_ms: np.ndarray,
    version: FeatureSet | str,
    names: list[str],
) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature columns (in `names` order; int features as nullable Int64) and the found mask."""
    features = _features(version)
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


def generate_file(
    store: EventStore,
    rows_path: str | Path,
    output_path: str | Path,
    *,
    version: FeatureSet | str,
    names: list[str],
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = GENERATE_CHUNK_ROWS,
) -> GenerateSummary:
    """Write one feature vector per input row, in input order, to `output_path`."""
    started = time.perf_counter()
    source = Path(rows_path)
    rows = found = 0
    features = _features(version)
    with FrameWriter(output_path, metadata={VERSION_METADATA_KEY: features.version}) as writer:
        for chunk in read_chunks(source, ROW_REQUIRED, chunk_rows=chunk_rows):
            entity_ids = check_identifiers(source, chunk, "entity_id", rows, required=True)
            as_of = check_timestamps(source, chunk, rows)
            columns, hit = feature_frame(store, entity_ids, as_of, features, names)
            out = pd.DataFrame(
                {"entity_id": entity_ids, "timestamp": normalise_row_timestamps(chunk["timestamp"])}
            )
            out = pd.concat([out.reset_index(drop=True), columns], axis=1)
            out["status"] = np.where(hit, STATUS_OK, STATUS_NOT_FOUND)
            writer.write(out)
            rows += len(chunk)
            found += int(hit.sum())
            if progress is not None:
                progress(len(chunk))
        if rows == 0:
            raise ValueError(f"{source}: no rows")
    return GenerateSummary(rows, found, time.perf_counter() - started)
