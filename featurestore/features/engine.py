"""The one feature computation: (events, queries of (entity, T), version) -> a float64 matrix.

Single entities, online batches and historical rows all call `compute`; there is no other
implementation, so every path gives bit-identical numbers for the same (entity, T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.features.context import FeatureContext, SearchIndex
from featurestore.features.registry import feature_set
from featurestore.store.batch import EventBatch

QUERIES_PER_PASS = 16_384
SORT_QUERIES_ABOVE = 512


@dataclass(frozen=True)
class FeatureMatrix:
    """Row i holds the full feature vector of query i (NaN = null); `found[i]` is False when
    the entity had no event at or before its T (then the row is all NaN)."""

    version: str
    values: np.ndarray  # float64 (m, n_features)
    found: np.ndarray  # bool (m,)


def compute(
    batch: EventBatch,
    entity_index: np.ndarray,
    as_of_ms: np.ndarray | int,
    version: str,
    category_names: list[str],
) -> FeatureMatrix:
    """Features of entity `batch.entity_ids[entity_index[i]]` as of `as_of_ms[i]`, for each i.

    `as_of_ms` may be one int (online: one T per request) or one per query (historical).
    """
    entity_index = np.asarray(entity_index, dtype=np.int64)
    as_of = np.broadcast_to(np.asarray(as_of_ms, dtype=np.int64), entity_index.shape)
    if entity_index.size <= SORT_QUERIES_ABOVE:
        values, found = _compute_in_passes(batch, entity_index, as_of, version, category_names)
        return FeatureMatrix(version=version, values=values, found=found)
    # Queries in (entity, T) order: searches and gathers walk memory forwards. Each query's
    # result depends on nothing else, so the order changes no bit of it.
    order = np.lexsort((as_of, entity_index))
    ordered, ordered_found = _compute_in_passes(
        batch, entity_index[order], as_of[order], version, category_names
    )
    values = np.empty_like(ordered)
    values[order] = ordered
    found = np.empty_like(ordered_found)
    found[order] = ordered_found
    return FeatureMatrix(version=version, values=values, found=found)


def _compute_in_passes(
    batch: EventBatch,
    entity_index: np.ndarray,
    as_of: np.ndarray,
    version: str,
    category_names: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Large calls run in passes whose working arrays stay small enough to be reused from
    the heap (fresh multi-MB arrays cost page faults every time)."""
    features = feature_set(version).features
    values = np.empty((entity_index.size, len(features)), dtype=np.float64)
    found = np.zeros(entity_index.size, dtype=bool)
    search = SearchIndex(batch)
    for start in range(0, entity_index.size, QUERIES_PER_PASS):
        rows = slice(start, start + QUERIES_PER_PASS)
        context = FeatureContext(batch, entity_index[rows], as_of[rows], category_names, search)
        block = values[rows]
        with np.errstate(all="ignore"):  # overflow and 0/0 become inf/NaN, turned into null
            for column, feature in enumerate(features):
                block[:, column] = feature.formula(context)
        block[~context.found] = np.nan
        block[np.isinf(block)] = np.nan  # beyond float64 (inputs near 1.8e308): null
        found[rows] = context.found
    return values, found
