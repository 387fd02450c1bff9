"""Drift statistics as pure functions of (baseline, current), as SPEC §7 defines them.

Each statistic is registered by name (`STATISTICS`) with the feature kinds it applies to, its
default threshold, what it needs from a baseline (a reference computed once when the baseline
completes) and how it scores a window; `Statistic.apply(reference, window, threshold)` gives a
`Result`. `DRIFT_STATISTICS` names the statistic that decides whether a feature of each kind
drifts. The monitor only asks the registry, keeps samples, schedules and publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from featurestore.features.registry import CATEGORICAL, NUMERIC

PSI_FLOOR = 1e-4
# exactly the floats 0.1 ... 0.9 (np.linspace gives 0.30000000000000004 and 0.7000000000000001)
NUMERIC_QUANTILES = np.arange(1, 10) / 10
TOP_CATEGORIES = 9


@dataclass(frozen=True)
class NumericReference:
    """What the numeric statistics need from a baseline, computed once when it completes: the
    bins for PSI, the sorted sample for KS."""

    edges: np.ndarray  # the 10 %...90 % quantiles (numpy linear)
    proportions: np.ndarray  # baseline share of each of the 10 bins
    sorted_values: np.ndarray  # for the KS statistic


@dataclass(frozen=True)
class CategoricalReference:
    labels: np.ndarray  # the baseline's (up to) 9 most frequent labels; the 10th bin = others
    proportions: np.ndarray


def numeric_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin: value v falls in bin i = number of edges < v (right-closed bins)."""
    index = np.searchsorted(edges, values, side="left")
    return np.bincount(index, minlength=edges.size + 1)


def numeric_reference(baseline: np.ndarray) -> NumericReference:
    edges = np.quantile(baseline, NUMERIC_QUANTILES)
    return NumericReference(edges, numeric_bins(baseline, edges) / baseline.size, np.sort(baseline))


def categorical_bins(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    counts = np.array(
        [np.count_nonzero(values == label) for label in labels.tolist()], dtype=np.int64
    )
    return np.append(counts, values.size - counts.sum())


def categorical_reference(baseline: np.ndarray) -> CategoricalReference:
    labels, counts = np.unique(baseline, return_counts=True)  # labels ascending
    order = np.lexsort((labels, -counts))  # most frequent first; ties: smaller label first
    top = labels[order[:TOP_CATEGORIES]]
    return CategoricalReference(top, categorical_bins(baseline, top) / baseline.size)


def psi(baseline_share: np.ndarray, current_share: np.ndarray) -> float:
    """Population stability index: sum (c - b) ln(c / b), shares floored at 1e-4, not
    renormalised."""
    b = np.maximum(baseline_share, PSI_FLOOR)
    c = np.maximum(current_share, PSI_FLOOR)
    return float(np.sum((c - b) * np.log(c / b)))


def psi_numeric(reference: NumericReference, current: np.ndarray) -> float:
    return psi(reference.proportions, numeric_bins(current, reference.edges) / current.size)


def psi_categorical(reference: CategoricalReference, current: np.ndarray) -> float:
    return psi(reference.proportions, categorical_bins(current, reference.labels) / current.size)


def ks_statistic(sorted_baseline: np.ndarray, current: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two ECDFs."""
    ordered = np.sort(current)
    points = np.concatenate((sorted_baseline, ordered))
    cdf_b = np.searchsorted(sorted_baseline, points, side="right") / sorted_baseline.size
    cdf_c = np.searchsorted(ordered, points, side="right") / ordered.size
    return float(np.max(np.abs(cdf_b - cdf_c)))


def moments(values: np.ndarray, nulls: int) -> dict:
    """mean, stdDev (ddof=1), count and null fraction of an observation sample."""
    count = int(values.size)
    seen = count + nulls
    return {
        "mean": float(values.mean()) if count else None,
        "stdDev": float(values.std(ddof=1)) if count >= 2 else None,
        "count": count,
        "null_fraction": nulls / seen if seen else None,
    }


def ks_numeric(reference: NumericReference, current: np.ndarray) -> float:
    return ks_statistic(reference.sorted_values, current)


# ------------------------------------------------------------------------------ registry
R = TypeVar("R")


@dataclass(frozen=True)
class Result:
    """One statistic applied to one window: its score, and whether it exceeds the threshold."""

    statistic: str
    score: float
    threshold: float
    is_drifting: bool


@dataclass(frozen=True)
class Statistic(Generic[R]):
    """A drift statistic: the kinds of feature it applies to, its default threshold, what it
    needs from a baseline (`reference`, computed once per baseline; statistics that name the
    same function share what it computed) and how it scores a window against that."""

    name: str
    kinds: frozenset[str]
    default_threshold: float
    reference: Callable[[np.ndarray], R]
    score: Callable[[R, np.ndarray], float]

    def applies_to(self, kind: str) -> bool:
        return kind in self.kinds

    def apply(self, reference: R, current: np.ndarray, threshold: float) -> Result:
        """Score `current` against the baseline's reference: drifting = score > threshold."""
        score = self.score(reference, current)
        return Result(self.name, score, threshold, score > threshold)


class UnknownStatistic(LookupError):
    """No statistic of that name, or none that applies to that kind of feature."""


STATISTICS: dict[str, Statistic[Any]] = {}


def register(statistic: Statistic[Any]) -> Statistic[Any]:
    if statistic.name in STATISTICS:
        raise ValueError(f"drift statistic {statistic.name!r} is registered twice")
    STATISTICS[statistic.name] = statistic
    return statistic


register(Statistic("psi_numeric", frozenset({NUMERIC}), 0.15, numeric_reference, psi_numeric))
register(
    Statistic(
        "psi_categorical", frozenset({CATEGORICAL}), 0.15, categorical_reference, psi_categorical
    )
)
register(Statistic("ks", frozenset({NUMERIC}), 0.1, numeric_reference, ks_numeric))

# SPEC §7: a numeric feature drifts on PSI over 10 quantile bins, a categorical one on PSI over
# its baseline's top-9 categories and one bin for the others.
DRIFT_STATISTICS = {NUMERIC: "psi_numeric", CATEGORICAL: "psi_categorical"}


def statistic(name: str, kind: str | None = None) -> Statistic[Any]:
    """The statistic registered as `name`; with `kind`, it must apply to that kind."""
    found = STATISTICS.get(name)
    if found is None:
        raise UnknownStatistic(
            f"no drift statistic {name!r}: expected one of {', '.join(sorted(STATISTICS))}"
        )
    if kind is not None and not found.applies_to(kind):
        usable = sorted(s.name for s in STATISTICS.values() if s.applies_to(kind))
        raise UnknownStatistic(
            f"drift statistic {name!r} does not apply to {kind} features: "
            f"expected one of {', '.join(usable)}"
        )
    return found


def drift_statistic(kind: str) -> Statistic[Any]:
    """The statistic that decides whether a feature of `kind` drifts (its `drift_score`)."""
    name = DRIFT_STATISTICS.get(kind)
    if name is None:
        raise UnknownStatistic(f"{kind} features are not monitored for drift")
    return statistic(name, kind)
