"""Drift statistics as pure functions of (baseline, current), as SPEC §7 defines them.

Each statistic is registered by name; the monitor only schedules, keeps samples and publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PSI_FLOOR = 1e-4
# exactly the floats 0.1 ... 0.9 (np.linspace gives 0.30000000000000004 and 0.7000000000000001)
NUMERIC_QUANTILES = np.arange(1, 10) / 10
TOP_CATEGORIES = 9


@dataclass(frozen=True)
class NumericReference:
    """What a numeric baseline needs for scoring, computed once when it completes."""

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


@dataclass(frozen=True)
class Statistic:
    name: str
    default_threshold: float
    compute: Callable


STATISTICS = {
    "psi_numeric": Statistic("psi_numeric", 0.15, psi_numeric),
    "psi_categorical": Statistic("psi_categorical", 0.15, psi_categorical),
    "ks": Statistic("ks", 0.1, ks_statistic),
}
