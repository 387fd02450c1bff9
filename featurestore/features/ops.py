"""The feature ops: every op of the definitions file, defined once — what it accepts (the
loader checks a file against this table) and how it computes (the plan calls `compute`).

Each `compute(c, d)` takes the call's `FeatureContext` and the feature's `Definition` and
returns one float64 per query, NaN for null. Semantics, nulls and degenerate cases:
DEFINITIONS.md; the shared statistics they read: `segments.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from featurestore.definitions.model import (
    CATEGORICAL,
    FLOAT,
    IDENTIFIER,
    INT,
    NUMERIC,
    Definition,
)
from featurestore.features.context import FeatureContext, FieldValues, Selection
from featurestore.features.segments import SegmentStats, segment_sum
from featurestore.store.batch import NO_LABEL

AGGREGATION = "aggregation"
ATTRIBUTE = "attribute"
HASH = "hash"

# What an op's `field` may be.
NO_FIELD = "none"
ANY_FIELD_OPTIONAL = "optional"  # count: without a field, or any field
NUMERIC_FIELD = "numeric"
CATEGORICAL_FIELD = "categorical"
ANY_FIELD = "any"
CATEGORICAL_FIELD_OPTIONAL = "categorical_optional"  # hash

DEFAULT_HASH_BUCKETS = 2**20
MAX_HASH_BUCKETS = 2**53
DEFAULT_BUSINESS_HOURS = (9, 17)

Compute = Callable[[FeatureContext, Definition], np.ndarray]


@dataclass(frozen=True)
class Op:
    name: str
    family: str  # AGGREGATION (window, where), ATTRIBUTE (of the last event) or HASH
    field: str  # what `field` may be (the constants above)
    compute: Compute
    summary: str  # for generated descriptions: "{field}", "{window}" are filled in
    kind: str = NUMERIC
    type: str = FLOAT
    required: tuple[str, ...] = ()  # parameter keys the op needs
    optional: tuple[str, ...] = ()  # parameter keys it may take
    categorical_kind: str | None = None  # (kind, type) over a categorical field, if different
    categorical_type: str | None = None

    def kind_type(self, field_kind: str | None) -> tuple[str, str]:
        if field_kind == CATEGORICAL and self.categorical_kind is not None:
            return self.categorical_kind, self.categorical_type or self.type
        return self.kind, self.type


# -- helpers -----------------------------------------------------------------------------
def _values(c: FeatureContext, d: Definition) -> FieldValues:
    return c.values(d.window_ms, d.where, d.field, d.skip_missing)


def _stats(c: FeatureContext, d: Definition) -> SegmentStats:
    return _values(c, d).stats


def _null_unless(condition: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(condition, values, np.nan)


# -- aggregations -------------------------------------------------------------------------
def _count(c: FeatureContext, d: Definition) -> np.ndarray:
    if d.field is None:
        return c.selection(d.window_ms, d.where).n
    return _values(c, d).lengths.astype(np.float64)


def _sum(c: FeatureContext, d: Definition) -> np.ndarray:
    return _stats(c, d).exact_sum


def _iqr(c: FeatureContext, d: Definition) -> np.ndarray:
    stats = _stats(c, d)
    return stats.quantile(0.75) - stats.quantile(0.25)


def _frequency(c: FeatureContext, d: Definition) -> np.ndarray:
    selection = c.selection(d.window_ms, d.where)
    last = c.last_label(d.field)
    labels = c.batch.labels[d.field][selection.index]
    count = _segment_count(labels == np.repeat(last, selection.lengths), selection)
    having = _segment_count(labels != NO_LABEL, selection)  # X, the events with the field
    with np.errstate(invalid="ignore", divide="ignore"):
        share = count / selection.n
    return np.where((last != NO_LABEL) & (having > 0), share, np.nan)


def _segment_count(mask: np.ndarray, selection: Selection) -> np.ndarray:
    return segment_sum(mask.astype(np.float64), selection.starts, selection.lengths)


def _percentile_rank(c: FeatureContext, d: Definition) -> np.ndarray:
    stats = _stats(c, d)
    last = c.last_value(d.field)
    return _null_unless(~np.isnan(last), stats.count_at_most(last) / stats.n)


def _zscore(c: FeatureContext, d: Definition) -> np.ndarray:
    stats = _stats(c, d)
    usable = ~np.isnan(stats.std) & (stats.std != 0)
    return _null_unless(usable, stats.distance_from_mean(c.last_value(d.field)) / stats.std)


def _decayed(c: FeatureContext, d: Definition, mean: bool) -> np.ndarray:
    v = _values(c, d)
    n = v.lengths
    if v.ts.size == 0:
        return np.full(n.size, np.nan if mean else 0.0)
    if mean:
        # Weights relative to each segment's newest event: the factor 2^-((T - t_newest)/h)
        # cancels in the ratio, so an old history does not underflow to 0/0.
        newest = v.ts[np.clip(v.starts + n - 1, 0, v.ts.size - 1)]
        ages = np.repeat(newest, n) - v.ts
    else:
        ages = np.repeat(c.as_of_ms, n) - v.ts
    weights = np.exp2(-ages / float(d.param("half_life_ms")))
    total = segment_sum(v.x * weights, v.starts, n)
    if not mean:
        return total
    mean_value = np.where(v.stats.constant, v.stats.min, total / segment_sum(weights, v.starts, n))
    return _null_unless(n > 0, mean_value)


def _first(c: FeatureContext, d: Definition) -> np.ndarray:
    return _values(c, d).first().astype(np.float64)


def _last(c: FeatureContext, d: Definition) -> np.ndarray:
    return _values(c, d).last().astype(np.float64)


# -- attributes of the last event ----------------------------------------------------------
def _last_value(c: FeatureContext, d: Definition) -> np.ndarray:
    return c.last_value(d.field)


def _last_label(c: FeatureContext, d: Definition) -> np.ndarray:
    labels = c.last_label(d.field)
    return _null_unless(labels != NO_LABEL, labels.astype(np.float64))


def _is_business_hours(c: FeatureContext, d: Definition) -> np.ndarray:
    start, end = d.param("hours", DEFAULT_BUSINESS_HOURS)
    hour = c.hour_of_day
    return ((c.day_of_week < 5) & (hour >= start) & (hour < end)).astype(np.float64)


def _time_since_last(c: FeatureContext, d: Definition) -> np.ndarray:
    return (c.as_of_ms - c.t_last) / d.param("unit_ms")


def _time_since_first(c: FeatureContext, d: Definition) -> np.ndarray:
    return (c.as_of_ms - c.t_first) / d.param("unit_ms")


# -- hashes ---------------------------------------------------------------------------------
def _hash(c: FeatureContext, d: Definition) -> np.ndarray:
    buckets = np.uint64(d.param("buckets", DEFAULT_HASH_BUCKETS))
    if d.field is None:
        return (c.entity_digests % buckets).astype(np.float64)
    hashed = (c.pair_digests(d.field) % buckets).astype(np.float64)
    return _null_unless(c.last_label(d.field) != NO_LABEL, hashed)


def _agg(name: str, compute: Compute, summary: str, field: str = NUMERIC_FIELD, **kw) -> Op:
    return Op(name, AGGREGATION, field, compute, summary, **kw)


def _attr(name: str, compute: Compute, summary: str, field: str = NO_FIELD, **kw) -> Op:
    return Op(name, ATTRIBUTE, field, compute, summary, **kw)


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        _agg(
            "count",
            _count,
            "number of events{with_field}",
            ANY_FIELD_OPTIONAL,
            type=INT,
        ),
        _agg("sum", _sum, "sum of {field}"),
        _agg("mean", lambda c, d: _stats(c, d).mean, "mean of {field}"),
        _agg("std", lambda c, d: _stats(c, d).std, "sample standard deviation of {field}"),
        _agg("var", lambda c, d: _stats(c, d).var, "sample variance of {field}"),
        _agg("min", lambda c, d: _stats(c, d).min, "smallest {field}"),
        _agg("max", lambda c, d: _stats(c, d).max, "largest {field}"),
        _agg("median", lambda c, d: _stats(c, d).median, "median {field}"),
        _agg(
            "quantile",
            lambda c, d: _stats(c, d).quantile(d.param("q")),
            "{q} quantile of {field}",
            required=("q",),
        ),
        _agg("iqr", _iqr, "interquartile range of {field}"),
        _agg("mad", lambda c, d: _stats(c, d).mad, "median absolute deviation of {field}"),
        _agg("slope", lambda c, d: _values(c, d).slope, "slope of {field} per day"),
        _agg(
            "first",
            _first,
            "first {field}",
            ANY_FIELD,
            categorical_kind=CATEGORICAL,
            categorical_type=INT,
        ),
        _agg(
            "last",
            _last,
            "last {field}",
            ANY_FIELD,
            categorical_kind=CATEGORICAL,
            categorical_type=INT,
        ),
        _agg(
            "distinct_count",
            lambda c, d: _stats(c, d).distinct,
            "number of distinct {field}",
            ANY_FIELD,
            type=INT,
        ),
        _agg(
            "frequency",
            _frequency,
            "share of events with the last event's {field}",
            CATEGORICAL_FIELD,
        ),
        _agg("percentile_rank", _percentile_rank, "share of {field} <= the last event's"),
        _agg("zscore", _zscore, "z-score of the last event's {field}"),
        _agg(
            "decayed_sum",
            lambda c, d: _decayed(c, d, mean=False),
            "sum of {field} decayed with half-life {half_life}",
            required=("half_life",),
        ),
        _agg(
            "decayed_mean",
            lambda c, d: _decayed(c, d, mean=True),
            "mean of {field} decayed with half-life {half_life}",
            required=("half_life",),
        ),
        _attr("last_value", _last_value, "the last event's {field}", NUMERIC_FIELD),
        _attr(
            "last_label",
            _last_label,
            "label of the last event's {field}",
            CATEGORICAL_FIELD,
            kind=CATEGORICAL,
            type=INT,
        ),
        _attr(
            "day_of_week",
            lambda c, d: c.day_of_week,
            "UTC weekday of the last event, Monday=0",
            type=INT,
        ),
        _attr("hour_of_day", lambda c, d: c.hour_of_day, "UTC hour of the last event", type=INT),
        _attr(
            "is_weekend",
            lambda c, d: (c.day_of_week >= 5).astype(np.float64),
            "1 if the last event fell on a weekend (UTC)",
            type=INT,
        ),
        _attr(
            "is_business_hours",
            _is_business_hours,
            "1 if the last event was in business hours (UTC)",
            type=INT,
            optional=("hours",),
        ),
        _attr(
            "time_since_last",
            _time_since_last,
            "time from the last event to T, in {unit}",
            optional=("unit",),
        ),
        _attr(
            "time_since_first",
            _time_since_first,
            "time from the first event to T, in {unit}",
            optional=("unit",),
        ),
        Op(
            "hash",
            HASH,
            CATEGORICAL_FIELD_OPTIONAL,
            _hash,
            "BLAKE2b-64 of the entity id{with_field}, mod {buckets}",
            kind=IDENTIFIER,
            type=INT,
            optional=("buckets",),
        ),
    )
}

EXPRESSION = "expr"
