"""The one feature computation: (events, queries of (entity, T), version) -> a float64 matrix.

Single entities, online batches and historical rows all call `compute`; there is no other
implementation, so every path gives bit-identical numbers for the same (entity, T).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featurestore.features.context import FeatureContext
from featurestore.features.registry import feature_set
from featurestore.store.batch import EventBatch


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
    features = feature_set(version).features
    entity_index = np.asarray(entity_index, dtype=np.int64)
    as_of = np.broadcast_to(np.asarray(as_of_ms, dtype=np.int64), entity_index.shape)
    context = FeatureContext(batch, entity_index, as_of, category_names)
    values = np.empty((entity_index.size, len(features)), dtype=np.float64)
    if entity_index.size:
        with np.errstate(all="ignore"):  # overflow and 0/0 become inf/NaN, turned into null
            for column, feature in enumerate(features):
                values[:, column] = feature.formula(context)
        values[~context.found] = np.nan
        values[np.isinf(values)] = np.nan  # beyond float64 (inputs near 1.8e308): null
    return FeatureMatrix(version=version, values=values, found=context.found)
