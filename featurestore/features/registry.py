"""The feature registry: every feature of every version, in registry order, as data.

A feature is a name, a kind (numeric, categorical, identifier), a type (int or float), a one-line
description and ONE vectorised formula over a `FeatureContext`. Adding a feature touches this
table only. Formulas return float64 arrays with NaN for null.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from featurestore.features.context import FeatureContext
from featurestore.wire.messages import Definitions, FeatureDefinition

NUMERIC = "numeric"
CATEGORICAL = "categorical"
IDENTIFIER = "identifier"
MONITORED_KINDS = (NUMERIC, CATEGORICAL)
INT = "int"
FLOAT = "float"
ROBUST_Z_SCALE = 1.4826

Formula = Callable[[FeatureContext], np.ndarray]


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    type: str
    description: str
    formula: Formula

    def describe(self) -> FeatureDefinition:
        return FeatureDefinition(self.name, self.kind, self.type, self.description)


def _null_unless(condition: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(condition, values, np.nan)


def _ratio_to_mean(c: FeatureContext, stats) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return _null_unless(~stats.mean_is_zero, c.x_last / stats.mean)


def _z_score(c: FeatureContext, stats) -> np.ndarray:
    usable = ~np.isnan(stats.std) & (stats.std != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _null_unless(usable, stats.distance_from_mean(c.x_last) / stats.std)


def _robust_z_score(c: FeatureContext) -> np.ndarray:
    stats = c.month.stats
    usable = (c.month.lengths > 0) & (stats.mad != 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _null_unless(usable, (c.x_last - stats.median) / (ROBUST_Z_SCALE * stats.mad))


def _percentile_rank(c: FeatureContext, window) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return window.stats.count_at_most(c.x_last) / window.stats.n


def _volatility(c: FeatureContext) -> np.ndarray:
    stats = c.month.stats
    usable = (c.month.lengths >= 2) & ~stats.mean_is_zero
    with np.errstate(invalid="ignore", divide="ignore"):
        return _null_unless(usable, stats.std / np.abs(stats.mean))


def _statistics(window: Callable[[FeatureContext], object], scope: str) -> list[Feature]:
    """The value statistics, over all events (v1) or the 30-day window (v2)."""

    def s(c: FeatureContext):
        return window(c).stats

    return [
        Feature(
            "value_mean", NUMERIC, FLOAT, f"Mean of the event values {scope}", lambda c: s(c).mean
        ),
        Feature(
            "value_std",
            NUMERIC,
            FLOAT,
            f"Sample standard deviation (ddof=1) {scope}",
            lambda c: s(c).std,
        ),
        Feature("value_min", NUMERIC, FLOAT, f"Smallest event value {scope}", lambda c: s(c).min),
        Feature("value_max", NUMERIC, FLOAT, f"Largest event value {scope}", lambda c: s(c).max),
        Feature(
            "value_median", NUMERIC, FLOAT, f"Median event value {scope}", lambda c: s(c).median
        ),
        Feature(
            "value_q25", NUMERIC, FLOAT, f"25th percentile (linear) {scope}", lambda c: s(c).q25
        ),
        Feature(
            "value_q75", NUMERIC, FLOAT, f"75th percentile (linear) {scope}", lambda c: s(c).q75
        ),
        Feature(
            "value_iqr",
            NUMERIC,
            FLOAT,
            f"value_q75 - value_q25 {scope}",
            lambda c: s(c).q75 - s(c).q25,
        ),
    ]


_TIME_FEATURES = [
    Feature(
        "day_of_week",
        NUMERIC,
        INT,
        "UTC weekday of the last event, Monday=0 ... Sunday=6",
        lambda c: c.day_of_week,
    ),
    Feature(
        "hour_of_day", NUMERIC, INT, "UTC hour of the last event, 0-23", lambda c: c.hour_of_day
    ),
    Feature(
        "is_weekend",
        NUMERIC,
        INT,
        "1 if the last event fell on Saturday or Sunday (UTC)",
        lambda c: (c.day_of_week >= 5).astype(np.float64),
    ),
    Feature(
        "is_business_hours",
        NUMERIC,
        INT,
        "1 if the last event was Mon-Fri 09:00-17:00 UTC",
        lambda c: ((c.day_of_week < 5) & (c.hour_of_day >= 9) & (c.hour_of_day < 17)).astype(
            np.float64
        ),
    ),
    Feature(
        "trend_7d",
        NUMERIC,
        FLOAT,
        "Least-squares slope of value per day over the last 7 days",
        lambda c: c.week.trend,
    ),
    Feature(
        "trend_30d",
        NUMERIC,
        FLOAT,
        "Least-squares slope of value per day over the last 30 days",
        lambda c: c.month.trend,
    ),
    Feature(
        "momentum", NUMERIC, FLOAT, "trend_7d - trend_30d", lambda c: c.week.trend - c.month.trend
    ),
    Feature(
        "volatility", NUMERIC, FLOAT, "std / |mean| of the values of the last 30 days", _volatility
    ),
    Feature(
        "category_encoded",
        CATEGORICAL,
        INT,
        "Global label of the last event's category",
        lambda c: _null_unless(c.has_category, c.c_last.astype(np.float64)),
    ),
    Feature(
        "frequency",
        NUMERIC,
        FLOAT,
        "Share of events with the last event's category",
        lambda c: c.category_frequency(),
    ),
    Feature(
        "recency_days",
        NUMERIC,
        FLOAT,
        "Days from the last event to T",
        lambda c: (c.as_of_ms - c.t_last) / 86_400_000,
    ),
]

_HASH_FEATURES = [
    Feature(
        "entity_hash",
        IDENTIFIER,
        INT,
        "BLAKE2b-64 of the entity id, mod 2^20",
        lambda c: c.entity_hash,
    ),
    Feature(
        "interaction_hash",
        IDENTIFIER,
        INT,
        "BLAKE2b-64 of 'entity_id|category' of the last event, mod 2^20",
        lambda c: c.interaction_hash,
    ),
]


def _v1() -> list[Feature]:
    scope = "of all events"
    return [
        *_statistics(lambda c: c.all, scope),
        *_TIME_FEATURES,
        Feature(
            "ratio_to_mean",
            NUMERIC,
            FLOAT,
            "Last value / value_mean",
            lambda c: _ratio_to_mean(c, c.all.stats),
        ),
        Feature(
            "z_score",
            NUMERIC,
            FLOAT,
            "(last value - value_mean) / value_std",
            lambda c: _z_score(c, c.all.stats),
        ),
        Feature(
            "percentile_rank",
            NUMERIC,
            FLOAT,
            "Share of values <= the last value",
            lambda c: _percentile_rank(c, c.all),
        ),
        *_HASH_FEATURES,
    ]


def _v2() -> list[Feature]:
    scope = "of the last 30 days"
    return [
        *_statistics(lambda c: c.month, scope),
        *_TIME_FEATURES,
        Feature(
            "ratio_to_mean",
            NUMERIC,
            FLOAT,
            "Last value / value_mean (last 30 days)",
            lambda c: _ratio_to_mean(c, c.month.stats),
        ),
        Feature(
            "z_score",
            NUMERIC,
            FLOAT,
            "Robust z: (last value - median) / (1.4826 MAD), last 30 days",
            _robust_z_score,
        ),
        Feature(
            "percentile_rank",
            NUMERIC,
            FLOAT,
            "Share of the last 30 days' values <= the last value",
            lambda c: _percentile_rank(c, c.month),
        ),
        *_HASH_FEATURES,
    ]


@dataclass(frozen=True)
class FeatureSet:
    """One version's features, with the lookups the serving paths need precomputed."""

    version: str
    features: tuple[Feature, ...]

    @property
    def names(self) -> list[str]:
        return list(self._positions)

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {f.name: i for i, f in enumerate(self.features)}

    def index_of(self, names: list[str]) -> np.ndarray:
        return np.array([self._positions[n] for n in names], dtype=np.int64)

    @property
    def int_mask(self) -> np.ndarray:
        return np.array([f.type == INT for f in self.features])

    def unknown(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self._positions]


REGISTRY: dict[str, FeatureSet] = {
    "v1": FeatureSet("v1", tuple(_v1())),
    "v2": FeatureSet("v2", tuple(_v2())),
}


def feature_set(version: str) -> FeatureSet:
    """The features of `version`; KeyError for an unknown one."""
    return REGISTRY[version]


def definitions(versions: tuple[str, ...]) -> Definitions:
    """The answer of GET /features/definitions."""
    return Definitions(
        list(versions), {v: [f.describe() for f in REGISTRY[v].features] for v in versions}
    )
