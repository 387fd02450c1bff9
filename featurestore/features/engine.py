"""The one feature computation: (events, queries of (entity, T), feature set) -> a float64 matrix.

Single entities, online batches, historical rows and cluster tasks all call `compute`; there
is no other implementation, so every path gives bit-identical numbers for the same (entity, T).
A feature set comes from a definitions file (`featurestore/definitions/`); its plan is
compiled once (`plan.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from featurestore.definitions.model import FeatureSet
from featurestore.features.context import FeatureContext, SearchIndex

QUERIES_PER_PASS = 16_384
SORT_QUERIES_ABOVE = 512
DEFAULT_CATEGORICAL = "category"  # the field a plain list of label names belongs to

LabelNames = Mapping[str, list[str]] | list[str]


@dataclass(frozen=True)
class FeatureMatrix:
    """Row i holds the served feature vector of query i (NaN = null); `found[i]` is False when
    the entity had no event at or before its T (then the row is all NaN)."""

    version: str
    values: np.ndarray  # float64 (m, served features)
    found: np.ndarray  # bool (m,)


def compute(
    batch,
    entity_index: np.ndarray,
    as_of_ms: np.ndarray | int,
    version: FeatureSet | str,
    label_names: LabelNames,
) -> FeatureMatrix:
    """Features of entity `batch.entity_ids[entity_index[i]]` as of `as_of_ms[i]`, for each i.

    `as_of_ms` may be one int (online: one T per request) or one per query (historical).
    `version` is a feature set of loaded definitions (a name: of the shipped file);
    `label_names` the label names of each categorical field (a list: of `category`)."""
    feature_set = version if isinstance(version, FeatureSet) else _shipped(version)
    labels = {DEFAULT_CATEGORICAL: label_names} if isinstance(label_names, list) else label_names
    entity_index = np.asarray(entity_index, dtype=np.int64)
    as_of = np.broadcast_to(np.asarray(as_of_ms, dtype=np.int64), entity_index.shape)
    if entity_index.size <= SORT_QUERIES_ABOVE:
        values, found = _compute_in_passes(batch, entity_index, as_of, feature_set, labels)
        return FeatureMatrix(feature_set.version, values, found)
    # Queries in (entity, T) order: searches and gathers walk memory forwards. Each query's
    # result depends on nothing else, so the order changes no bit of it.
    order = np.lexsort((as_of, entity_index))
    ordered, ordered_found = _compute_in_passes(
        batch, entity_index[order], as_of[order], feature_set, labels
    )
    values = np.empty_like(ordered)
    values[order] = ordered
    found = np.empty_like(ordered_found)
    found[order] = ordered_found
    return FeatureMatrix(feature_set.version, values, found)


def _shipped(version: str) -> FeatureSet:
    from featurestore.definitions import shipped_definitions

    return shipped_definitions().versions[version]


def _compute_in_passes(
    batch,
    entity_index: np.ndarray,
    as_of: np.ndarray,
    feature_set: FeatureSet,
    labels: Mapping[str, list[str]],
) -> tuple[np.ndarray, np.ndarray]:
    """Large calls run in passes whose working arrays stay small enough to be reused from
    the heap (fresh multi-MB arrays cost page faults every time)."""
    plan = feature_set.plan
    values = np.empty((entity_index.size, plan.served.size), dtype=np.float64)
    found = np.zeros(entity_index.size, dtype=bool)
    search = SearchIndex(batch)
    for start in range(0, entity_index.size, QUERIES_PER_PASS):
        rows = slice(start, start + QUERIES_PER_PASS)
        context = FeatureContext(
            batch, entity_index[rows], as_of[rows], labels, search=search, windows=plan.windows
        )
        block = (
            values[rows]
            if plan.all_served
            else np.empty((context.found.size, len(plan.names)), dtype=np.float64)
        )
        earlier: dict[str, np.ndarray] = {}
        with np.errstate(all="ignore"):  # overflow and 0/0 become inf/NaN, turned into null
            for column, (name, step) in enumerate(zip(plan.names, plan.steps, strict=True)):
                result = step(context, earlier)
                earlier[name] = result
                block[:, column] = result
        if not plan.all_served:
            block = block[:, plan.served]
        block[~context.found] = np.nan
        block[np.isinf(block)] = np.nan  # beyond float64 (inputs near 1.8e308): null
        values[rows] = block
        found[rows] = context.found
    return values, found
