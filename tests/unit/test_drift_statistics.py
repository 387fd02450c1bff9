"""Drift statistics and the drift monitor in-process (SPEC §7).

PSI and KS are checked against an independent computation written out here (Python loops over
the samples, `math.log`, `scipy.stats.ks_2samp`), on fixed samples with values exactly on the
bin edges, constant baselines and categorical ties. The monitor is fed float64 matrices the way
the drift process absorbs what workers publish; its report is compared with the baseline and
window that SPEC §7 defines, computed here from the stream. Baselines go through
`drift.baselines.save/load` in a temporary DATA_DIR.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from datetime import datetime

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp

from drift import baselines
from drift.monitor import DriftMonitor
from drift.statistics import (
    categorical_reference,
    ks_statistic,
    moments,
    numeric_bins,
    numeric_reference,
    psi,
    psi_categorical,
    psi_numeric,
)
from featurestore.config import Settings
from featurestore.features.registry import REGISTRY

NAN = math.nan
FLOOR = 1e-4
DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
MONITORED = [
    "value_mean",
    "value_std",
    "value_min",
    "value_max",
    "value_median",
    "value_q25",
    "value_q75",
    "value_iqr",
    "day_of_week",
    "hour_of_day",
    "is_weekend",
    "is_business_hours",
    "trend_7d",
    "trend_30d",
    "momentum",
    "volatility",
    "category_encoded",
    "frequency",
    "recency_days",
    "ratio_to_mean",
    "z_score",
    "percentile_rank",
]
WIDTH = len(REGISTRY["v1"].names)
NUMERIC_COLUMN = REGISTRY["v1"].names.index("value_mean")
CATEGORY_COLUMN = REGISTRY["v1"].names.index("category_encoded")
# Two one-bin samples in different bins: both shares floored once.
DISJOINT_PSI = 2 * (1 - FLOOR) * math.log(1 / FLOOR)
# A baseline with 10 % per bin against a current sample all above the last edge.
ABOVE_ALL_PSI = 9 * (FLOOR - 0.1) * math.log(FLOOR / 0.1) + (1 - 0.1) * math.log(1 / 0.1)


# ----------------------------------------------------------------- independent reference
def reference_numeric_shares(baseline: np.ndarray, sample: np.ndarray) -> list[float]:
    """Share of `sample` in each of the 10 bins: v is in bin i = number of edges < v."""
    edges = np.quantile(np.asarray(baseline, dtype=np.float64), DECILES).tolist()
    counts = [0] * 10
    for value in np.asarray(sample, dtype=np.float64).tolist():
        counts[sum(1 for edge in edges if edge < value)] += 1
    return [count / len(sample) for count in counts]


def reference_categorical_shares(baseline: np.ndarray, sample: np.ndarray) -> list[float]:
    """One bin per baseline top-9 category (ties: smaller label first), one for the others."""
    frequency = Counter(np.asarray(baseline).tolist())
    top = sorted(frequency, key=lambda label: (-frequency[label], label))[:9]
    values = np.asarray(sample).tolist()
    shares = [values.count(label) / len(values) for label in top]
    shares.append(sum(1 for value in values if value not in top) / len(values))
    return shares


def reference_psi(baseline_shares: list[float], current_shares: list[float]) -> float:
    """sum (c - b) ln(c / b) with both shares floored at 1e-4, not renormalised."""
    total = 0.0
    for baseline_share, current_share in zip(baseline_shares, current_shares, strict=True):
        b, c = max(baseline_share, FLOOR), max(current_share, FLOOR)
        total += (c - b) * math.log(c / b)
    return total


def reference_numeric_psi(baseline: np.ndarray, current: np.ndarray) -> float:
    return reference_psi(
        reference_numeric_shares(baseline, baseline), reference_numeric_shares(baseline, current)
    )


def reference_categorical_psi(baseline: np.ndarray, current: np.ndarray) -> float:
    return reference_psi(
        reference_categorical_shares(baseline, baseline),
        reference_categorical_shares(baseline, current),
    )


def reference_ks(baseline: np.ndarray, current: np.ndarray) -> float:
    # the statistic does not depend on the p-value method; asymp avoids exact enumeration
    with np.errstate(all="ignore"):  # the p-value of tiny samples divides by zero
        return float(ks_2samp(baseline, current, method="asymp").statistic)


def split_stream(stream: list[float], baseline_size: int, window_size: int) -> dict:
    """SPEC §7 on one feature's stream of observations (NaN = null): the baseline (first
    `baseline_size` non-null), the window (last `window_size` non-null after the baseline
    completed), and the nulls received while each filled."""
    present = [i for i, v in enumerate(stream) if not math.isnan(v)]
    if len(present) < baseline_size:
        return {
            "baseline": [stream[i] for i in present],
            "baseline_nulls": len(stream) - len(present),
            "window": [],
            "window_nulls": 0,
        }
    last_baseline = present[baseline_size - 1]
    after = present[baseline_size:]
    kept = after[-window_size:] if after else []
    # the window's vectors start right after the non-null observation before its first one
    start = last_baseline if len(after) <= window_size else after[-window_size - 1]
    return {
        "baseline": [stream[i] for i in present[:baseline_size]],
        "baseline_nulls": sum(1 for v in stream[: last_baseline + 1] if math.isnan(v)),
        "window": [stream[i] for i in kept],
        "window_nulls": sum(1 for v in stream[start + 1 :] if math.isnan(v)),
    }


# ------------------------------------------------------------------------------ helpers
def make_settings(data_dir=None, **env: str) -> Settings:
    values = {
        "DATA_DIR": str(data_dir or "/tmp/drift-unit-unused"),
        "DRIFT_BASELINE_SIZE": "20",
        "DRIFT_WINDOW_SIZE": "10",
        "DRIFT_MIN_CURRENT": "5",
        "DRIFT_THRESHOLD": "0.15",
    }
    values.update(env)
    return Settings.from_env(values)


def rows(numeric=None, category=None, count: int | None = None) -> np.ndarray:
    """Vectors (rows) of one version, all null except value_mean / category_encoded."""
    size = count if count is not None else len(numeric if numeric is not None else category)
    matrix = np.full((size, WIDTH), np.nan)
    if numeric is not None:
        matrix[:, NUMERIC_COLUMN] = numeric
    if category is not None:
        matrix[:, CATEGORY_COLUMN] = category
    return matrix


def detail(report: dict, feature: str, version: str = "v1") -> dict:
    (found,) = [
        d for d in report["drift_details"] if d["feature"] == feature and d["version"] == version
    ]
    return found


def summary(values: list[float], nulls: int) -> dict:
    """Expected `baseline`/`current` section, by numpy and plain arithmetic."""
    array = np.asarray(values, dtype=np.float64)
    seen = len(values) + nulls
    return {
        "mean": pytest.approx(float(np.mean(array)), rel=1e-12) if len(values) else None,
        "stdDev": pytest.approx(float(np.std(array, ddof=1)), rel=1e-12)
        if len(values) >= 2
        else None,
        "count": len(values),
        "null_fraction": nulls / seen if seen else None,
    }


# ------------------------------------------------------------------------- numeric bins
def test_a_value_exactly_on_an_edge_falls_in_the_lower_bin():
    # Given edges 1..9, When values sit exactly on them, just above them and outside them
    edges = np.arange(1.0, 10.0)
    values = np.array([0.5, 1.0, 1.0000001, 2.0, 5.0, 5.5, 9.0, 9.0000001, 100.0])
    # Then bin i = number of edges strictly below v
    assert numeric_bins(values, edges).tolist() == [2, 2, 0, 0, 1, 1, 0, 0, 1, 2]


def test_numeric_reference_uses_numpy_linear_deciles_of_the_baseline():
    baseline = np.arange(1.0, 101.0)
    reference = numeric_reference(baseline)
    assert reference.edges.tolist() == pytest.approx(
        [10.9, 20.8, 30.7, 40.6, 50.5, 60.4, 70.3, 80.2, 90.1], rel=1e-15
    )
    assert reference.proportions.tolist() == [0.1] * 10
    assert reference.sorted_values.tolist() == baseline.tolist()


def test_psi_of_a_sample_on_the_edges_written_out_by_hand():
    # Given a baseline with 10 % in each bin (edges 10.9 ... 90.1)
    baseline = np.arange(1.0, 101.0)
    # When half of the current values sit exactly on the first edge and half above the last
    current = np.array([10.9] * 50 + [100.0] * 50)
    # Then bins 0 and 9 hold 50 % each, the 8 others are floored at 1e-4
    expected = 2 * (0.5 - 0.1) * math.log(0.5 / 0.1) + 8 * (FLOOR - 0.1) * math.log(FLOOR / 0.1)
    assert psi_numeric(numeric_reference(baseline), current) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(6.8082, abs=1e-4)


def test_psi_when_baseline_ties_sit_on_the_edges():
    # Given a baseline of 50 ones and 50 twos: edges 1,1,1,1,1.5,2,2,2,2
    baseline = np.array([1.0] * 50 + [2.0] * 50)
    reference = numeric_reference(baseline)
    assert reference.edges.tolist() == [1.0, 1.0, 1.0, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0]
    # 1 is above no edge (bin 0); 2 is above the four ones and 1.5 (bin 5)
    assert reference.proportions.tolist() == [0.5, 0, 0, 0, 0, 0.5, 0, 0, 0, 0]
    # When the current values are 1.5 (bin 4: above the four ones only), 2 and 3 (bin 9)
    current = np.array([1.5] * 20 + [2.0] * 30 + [3.0] * 50)
    expected = (
        (FLOOR - 0.5) * math.log(FLOOR / 0.5)
        + (0.2 - FLOOR) * math.log(0.2 / FLOOR)
        + (0.3 - 0.5) * math.log(0.3 / 0.5)
        + (0.5 - FLOOR) * math.log(0.5 / FLOOR)
    )
    assert psi_numeric(reference, current) == pytest.approx(expected, rel=1e-12)
    assert psi_numeric(reference, current) == pytest.approx(
        reference_numeric_psi(baseline, current), rel=1e-12
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_psi_and_ks_equal_the_reference_on_fixed_samples(seed: int):
    rng = np.random.default_rng(seed)
    # continuous, and rounded to integers so that many values sit exactly on the edges
    for baseline, current in [
        (rng.normal(0, 1, 1000), rng.normal(0.3, 1.2, 700)),
        (np.round(rng.normal(5, 2, 1000)), np.round(rng.normal(5.5, 2, 500))),
        (rng.exponential(1.0, 333), rng.exponential(1.0, 1000)),
    ]:
        reference = numeric_reference(baseline)
        assert psi_numeric(reference, current) == pytest.approx(
            reference_numeric_psi(baseline, current), rel=1e-12, abs=1e-15
        )
        assert ks_statistic(reference.sorted_values, current) == pytest.approx(
            reference_ks(baseline, current), abs=1e-12
        )


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    st.lists(st.integers(-4, 4), min_size=1, max_size=60),
    st.lists(st.integers(-5, 5), min_size=1, max_size=60),
)
# the 70 % quantile is -1 (numpy: -1.0000000000000036); q = 0.7000000000000001 moves it above
@example([-2, 3, 3, -3, -3, -3, -3], [-1])
def test_psi_and_ks_equal_the_reference_on_tied_integer_samples(baseline, current):
    baseline = np.asarray(baseline, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    reference = numeric_reference(baseline)
    assert psi_numeric(reference, current) == pytest.approx(
        reference_numeric_psi(baseline, current), rel=1e-12, abs=1e-15
    )
    assert ks_statistic(reference.sorted_values, current) == pytest.approx(
        reference_ks(baseline, current), abs=1e-12
    )


def test_constant_baseline():
    baseline = np.full(200, 5.0)
    reference = numeric_reference(baseline)
    assert reference.edges.tolist() == [5.0] * 9
    assert reference.proportions.tolist() == [1.0] + [0.0] * 9
    # the same constant: nothing moved
    assert psi_numeric(reference, np.full(50, 5.0)) == 0.0
    assert ks_statistic(reference.sorted_values, np.full(50, 5.0)) == 0.0
    # above the constant: every current value is above all 9 edges (bin 9)
    assert psi_numeric(reference, np.full(50, 6.0)) == pytest.approx(DISJOINT_PSI, rel=1e-12)
    # below it: bin 0 like the baseline, so PSI sees nothing, only KS does (bins are
    # right-closed: v in bin i = number of edges < v)
    assert psi_numeric(reference, np.full(50, 4.0)) == 0.0
    assert ks_statistic(reference.sorted_values, np.full(50, 4.0)) == 1.0
    # half above
    current = np.array([5.0] * 25 + [7.0] * 25)
    expected = (0.5 - 1.0) * math.log(0.5) + (0.5 - FLOOR) * math.log(0.5 / FLOOR)
    assert psi_numeric(reference, current) == pytest.approx(expected, rel=1e-12)
    assert ks_statistic(reference.sorted_values, current) == reference_ks(baseline, current)


# ----------------------------------------------------------------------------- categorical
def test_categorical_top_nine_with_ties_smaller_label_first():
    # Given 11 labels whose counts tie across the cut after the 9th
    counts = {20: 6, 11: 5, 4: 5, 9: 3, 2: 3, 30: 3, 1: 2, 5: 2, 17: 2, 8: 2, 3: 2}
    baseline = np.array([float(k) for k, n in counts.items() for _ in range(n)])
    np.random.default_rng(0).shuffle(baseline)
    reference = categorical_reference(baseline)
    # Then most frequent first, ties by smaller label; 8 and 17 fall in "others"
    assert reference.labels.tolist() == [20, 4, 11, 2, 9, 30, 1, 3, 5]
    total = sum(counts.values())
    assert reference.proportions.tolist() == pytest.approx(
        [6 / total, 5 / total, 5 / total, 3 / total, 3 / total, 3 / total]
        + [2 / total] * 3
        + [4 / total],
        rel=1e-15,
    )
    for current in (
        np.array([8.0, 17.0, 8.0, 99.0]),  # all "others"
        np.array([20.0] * 10 + [3.0] * 5 + [8.0] * 5),
        baseline[:7],
    ):
        assert psi_categorical(reference, current) == pytest.approx(
            reference_categorical_psi(baseline, current), rel=1e-12, abs=1e-15
        )


def test_categorical_psi_written_out_by_hand():
    baseline = np.array([0.0] * 50 + [1.0] * 50)
    current = np.array([0.0] * 80 + [1.0] * 20)
    # two bins move, "others" is empty on both sides (floored, equal: adds 0)
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi_categorical(categorical_reference(baseline), current) == pytest.approx(
        expected, rel=1e-12
    )
    assert expected == pytest.approx(0.3 * math.log(4), rel=1e-12)
    # a category unseen in the baseline goes to "others"
    unseen = np.array([7.0] * 100)
    assert psi_categorical(categorical_reference(baseline), unseen) == pytest.approx(
        2 * (FLOOR - 0.5) * math.log(FLOOR / 0.5) + (1 - FLOOR) * math.log(1 / FLOOR), rel=1e-12
    )


@hypothesis_settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 14), min_size=1, max_size=80),
    st.lists(st.integers(0, 16), min_size=1, max_size=80),
)
def test_categorical_psi_equals_the_reference(baseline, current):
    baseline = np.asarray(baseline, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    assert psi_categorical(categorical_reference(baseline), current) == pytest.approx(
        reference_categorical_psi(baseline, current), rel=1e-12, abs=1e-15
    )


def test_psi_floors_shares_and_does_not_renormalise():
    assert psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(DISJOINT_PSI, rel=1e-15)
    assert psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.0])) == 0.0
    # renormalising the floored shares (each side sums to 1 + 1e-4) would give less
    renormalised = DISJOINT_PSI / (1 + FLOOR)
    assert psi(np.array([1.0, 0.0]), np.array([0.0, 1.0])) != pytest.approx(renormalised, rel=1e-9)


def test_moments_use_ddof_1_and_count_nulls():
    values = np.array([1.0, 2.0, 4.0])
    assert moments(values, 1) == {
        "mean": pytest.approx(7 / 3, rel=1e-15),
        "stdDev": pytest.approx(
            math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2), rel=1e-12
        ),
        "count": 3,
        "null_fraction": 0.25,
    }
    assert moments(np.array([3.0]), 0) == {
        "mean": 3.0,
        "stdDev": None,
        "count": 1,
        "null_fraction": 0.0,
    }
    assert moments(np.empty(0), 4) == {
        "mean": None,
        "stdDev": None,
        "count": 0,
        "null_fraction": 1.0,
    }
    assert moments(np.empty(0), 0)["null_fraction"] is None


# ------------------------------------------------------------------------------ monitor
def test_every_numeric_and_categorical_feature_of_every_version_is_monitored():
    report = DriftMonitor(make_settings()).report()
    assert report["features_monitored"] == 44
    for version in ("v1", "v2"):
        names = [d["feature"] for d in report["drift_details"] if d["version"] == version]
        assert names == MONITORED  # identifiers (entity_hash, interaction_hash) are not
    single = DriftMonitor(make_settings(ENABLE_VERSIONING="false", FEATURE_VERSION="v2")).report()
    assert single["features_monitored"] == 22
    assert {d["version"] for d in single["drift_details"]} == {"v2"}


def test_an_empty_monitor_reports_insufficient_data():
    report = DriftMonitor(make_settings()).report()
    assert set(report) == {
        "monitoring_since",
        "total_tracked",
        "drift_threshold",
        "features_monitored",
        "drifting_features",
        "dropped",
        "status",
        "drift_details",
    }
    assert datetime.fromisoformat(report["monitoring_since"]).tzinfo is not None
    assert report["total_tracked"] == 0
    assert report["drift_threshold"] == 0.15
    assert report["drifting_features"] == 0
    assert report["dropped"] == 0
    assert report["status"] == "insufficient_data"
    first = detail(report, "value_mean")
    assert first == {
        "feature": "value_mean",
        "version": "v1",
        "drift_score": None,
        "ks_statistic": None,
        "is_drifting": False,
        "statistic": "psi_numeric",
        "threshold": 0.15,
        "baseline": {"mean": None, "stdDev": None, "count": 0, "null_fraction": None},
        "current": {"mean": None, "stdDev": None, "count": 0, "null_fraction": None},
    }


def test_baseline_is_the_first_non_null_observations_and_the_window_the_last():
    # Given baseline 20, window 10, nulls interleaved, chunks that straddle the boundary
    monitor = DriftMonitor(make_settings(DRIFT_MIN_CURRENT="1"))
    stream = [NAN, 1, 2, NAN, NAN, 3, *range(4, 20), NAN, 20, 21, NAN, 22, *range(23, 40), NAN]
    stream = [float(v) for v in [*stream, NAN]]
    for start, stop in [(0, 6), (6, 25), (25, 26), (26, len(stream))]:
        monitor.absorb("v1", rows(stream[start:stop], stream[start:stop]))
    expected = split_stream(stream, 20, 10)
    assert expected["baseline"] == [float(v) for v in range(1, 21)]
    assert expected["baseline_nulls"] == 4
    assert expected["window"] == [float(v) for v in range(30, 40)]
    assert expected["window_nulls"] == 2
    report = monitor.report()
    for feature in ("value_mean", "category_encoded"):
        found = detail(report, feature)
        assert found["baseline"] == summary(expected["baseline"], 4)
        assert found["current"] == summary(expected["window"], 2)
    assert report["total_tracked"] == len(stream)  # vectors, null or not


def test_nulls_after_the_last_value_belong_to_what_is_filling():
    monitor = DriftMonitor(make_settings(DRIFT_BASELINE_SIZE="10", DRIFT_MIN_CURRENT="1"))
    # a baseline that has seen only nulls: 3 of 3 vectors were null
    monitor.absorb("v1", rows([NAN, NAN, NAN]))
    assert detail(monitor.report(), "value_mean")["baseline"]["null_fraction"] == 1.0
    # it completes in a chunk that ends with a null: that null arrived after, in the window
    monitor.absorb("v1", rows([float(v) for v in range(10)] + [NAN]))
    found = detail(monitor.report(), "value_mean")
    assert found["baseline"]["null_fraction"] == 3 / 13
    assert found["current"] == {"mean": None, "stdDev": None, "count": 0, "null_fraction": 1.0}
    monitor.absorb("v1", rows([5.0]))
    assert detail(monitor.report(), "value_mean")["current"]["null_fraction"] == 0.5
    # a feature that turns null shows it in the window at once
    monitor.absorb("v1", rows([NAN, NAN]))
    assert detail(monitor.report(), "value_mean")["current"]["null_fraction"] == 3 / 4


@hypothesis_settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(st.just(NAN), st.integers(0, 12).map(float)),
        min_size=0,
        max_size=90,
    ),
    st.lists(st.integers(0, 90), max_size=8),
)
def test_baseline_window_and_nulls_follow_the_stream(stream, cuts):
    """Any stream, cut in any chunks: the report is the baseline and window of SPEC §7."""
    monitor = DriftMonitor(
        make_settings(DRIFT_BASELINE_SIZE="10", DRIFT_WINDOW_SIZE="12", DRIFT_MIN_CURRENT="1")
    )
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    for start, stop in itertools.pairwise(bounds):
        monitor.absorb("v1", rows(stream[start:stop], stream[start:stop]))
    expected = split_stream(stream, 10, 12)
    report = monitor.report()
    assert report["total_tracked"] == len(stream)
    numeric = detail(report, "value_mean")
    category = detail(report, "category_encoded")
    for found in (numeric, category):
        assert found["baseline"] == summary(expected["baseline"], expected["baseline_nulls"])
        if len(expected["baseline"]) == 10:
            assert found["current"] == summary(expected["window"], expected["window_nulls"])
        else:  # nothing reaches the window before the baseline is complete
            assert found["current"]["count"] == 0
    if len(expected["baseline"]) == 10 and expected["window"]:
        baseline = np.array(expected["baseline"])
        window = np.array(expected["window"])
        assert numeric["drift_score"] == pytest.approx(
            reference_numeric_psi(baseline, window), rel=1e-12, abs=1e-15
        )
        assert numeric["ks_statistic"] == pytest.approx(reference_ks(baseline, window), abs=1e-12)
        assert category["drift_score"] == pytest.approx(
            reference_categorical_psi(baseline, window), rel=1e-12, abs=1e-15
        )
        assert category["ks_statistic"] is None
        assert report["status"] in ("ok", "drift_detected")
    else:
        assert numeric["drift_score"] is None
        assert category["drift_score"] is None
        assert report["status"] == "insufficient_data"


def test_a_pair_is_scored_once_the_window_holds_min_current():
    monitor = DriftMonitor(make_settings())  # baseline 20, window 10, min current 5
    baseline = np.arange(20.0)
    monitor.absorb("v1", rows(baseline))
    monitor.absorb("v1", rows([100.0, 101.0, 102.0, 103.0]))
    report = monitor.report()
    found = detail(report, "value_mean")
    assert (found["drift_score"], found["ks_statistic"], found["is_drifting"]) == (
        None,
        None,
        False,
    )
    assert found["current"]["count"] == 4
    assert report["status"] == "insufficient_data"
    assert report["drifting_features"] == 0
    monitor.absorb("v1", rows([104.0]))
    report = monitor.report()
    found = detail(report, "value_mean")
    current = np.array([100.0, 101.0, 102.0, 103.0, 104.0])
    assert found["drift_score"] == pytest.approx(ABOVE_ALL_PSI, rel=1e-12)
    assert found["drift_score"] == pytest.approx(
        reference_numeric_psi(baseline, current), rel=1e-12
    )
    assert found["ks_statistic"] == 1.0
    assert found["is_drifting"] is True
    assert report["status"] == "drift_detected"
    assert report["drifting_features"] == 1
    # the other pairs got only nulls: unscored, not drifting
    assert detail(report, "value_std")["drift_score"] is None
    assert detail(report, "value_mean", "v2")["drift_score"] is None


def test_status_ok_when_scored_pairs_do_not_drift():
    monitor = DriftMonitor(make_settings())
    baseline = np.arange(20.0)
    monitor.absorb("v1", rows(baseline, baseline % 3))
    current = np.array([0.5, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 14.5, 16.5, 18.5])
    monitor.absorb("v1", rows(current, np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0.0])))
    report = monitor.report()
    assert detail(report, "value_mean")["drift_score"] == pytest.approx(
        reference_numeric_psi(baseline, current), rel=1e-12
    )
    assert detail(report, "value_mean")["drift_score"] < 0.15
    assert detail(report, "category_encoded")["drift_score"] < 0.15
    assert report["status"] == "ok"
    assert report["drifting_features"] == 0


def test_is_drifting_means_a_score_strictly_above_the_threshold():
    baseline = np.arange(20.0)
    current = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 30, 31])

    def score_with(threshold: float) -> dict:
        monitor = DriftMonitor(make_settings(DRIFT_THRESHOLD=repr(threshold)))
        monitor.absorb("v1", rows(baseline))
        monitor.absorb("v1", rows(current))
        return detail(monitor.report(), "value_mean")

    score = score_with(0.15)["drift_score"]
    assert score == pytest.approx(reference_numeric_psi(baseline, current), rel=1e-12)
    assert score_with(score)["is_drifting"] is False
    assert score_with(float(np.nextafter(score, 0)))["is_drifting"] is True


def test_total_tracked_counts_every_vector_per_version():
    monitor = DriftMonitor(make_settings())
    monitor.absorb("v1", rows(count=7))  # all null
    monitor.absorb("v2", rows(np.arange(3.0)))
    monitor.absorb("v9", rows(np.arange(5.0)))  # no such version: ignored
    monitor.absorb("v1", rows(count=0))
    report = monitor.report()
    assert report["total_tracked"] == 10
    assert detail(report, "value_mean")["baseline"]["null_fraction"] == 1.0
    assert detail(report, "value_mean", "v2")["baseline"]["count"] == 3


def test_dropped_counts_the_gaps_in_each_worker_sequence():
    monitor = DriftMonitor(make_settings())
    for worker, seq in [("0", 1), ("0", 2), ("1", 1), ("0", 5), ("1", 2), ("1", 4), ("0", 6)]:
        monitor.count_sequence(worker, seq)
    assert monitor.report()["dropped"] == 3
    monitor.count_sequence("0", 1)  # a restarted worker starts again at 1: nothing missed
    monitor.count_sequence("0", 2)
    assert monitor.report()["dropped"] == 3


def test_reset_starts_a_new_baseline_from_the_next_observations():
    monitor = DriftMonitor(make_settings())
    monitor.absorb("v1", rows(np.arange(25.0)))
    since = monitor.report()["monitoring_since"]
    monitor.reset(["v1"])
    report = monitor.report()
    assert report["total_tracked"] == 0
    assert detail(report, "value_mean")["baseline"]["count"] == 0
    assert detail(report, "value_mean")["current"]["count"] == 0
    assert report["monitoring_since"] >= since
    fresh = np.arange(100.0, 125.0)
    monitor.absorb("v1", rows(fresh))
    found = detail(monitor.report(), "value_mean")
    assert found["baseline"] == summary(fresh[:20].tolist(), 0)
    assert found["current"] == summary(fresh[20:].tolist(), 0)


def test_an_explicit_baseline_replaces_the_collected_one():
    monitor = DriftMonitor(make_settings())
    monitor.absorb("v1", rows(np.arange(25.0)))
    names = monitor.set_baseline(
        "v1",
        {
            "value_mean": np.array([1.0, NAN, 2.0, 3.0]),
            "value_std": np.array([NAN, 4.0, NAN]),  # one value: not enough, left as it was
            "no_such_feature": np.array([1.0, 2.0]),
        },
    )
    assert names == ["value_mean"]
    report = monitor.report()
    found = detail(report, "value_mean")
    assert found["baseline"] == summary([1.0, 2.0, 3.0], 1)
    assert found["current"]["count"] == 0  # the window starts again
    assert report["total_tracked"] == 0
    monitor.absorb("v1", rows([1.0, 2.0, 3.0, 1.0, 2.0]))
    found = detail(monitor.report(), "value_mean")
    assert found["drift_score"] == pytest.approx(
        reference_numeric_psi(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 1.0, 2.0])),
        rel=1e-12,
        abs=1e-15,
    )


def test_alerts_when_a_feature_starts_and_stops_drifting():
    monitor = DriftMonitor(make_settings())
    assert monitor.alerts(monitor.report()) == []
    monitor.absorb("v1", rows(np.arange(20.0)))
    monitor.absorb("v1", rows(np.arange(100.0, 105.0)))
    (started,) = monitor.alerts(monitor.report())
    assert started["feature"] == "value_mean"
    assert started["version"] == "v1"
    assert started["is_drifting"] is True
    assert started["drift_score"] == pytest.approx(ABOVE_ALL_PSI, rel=1e-12)
    assert datetime.fromisoformat(started["at"]).tzinfo is not None
    assert monitor.alerts(monitor.report()) == []  # still drifting: no new alert
    monitor.absorb("v1", rows(np.arange(0.5, 20.0, 2.0)))  # back to 10 % in every bin
    (stopped,) = monitor.alerts(monitor.report())
    assert (stopped["feature"], stopped["is_drifting"]) == ("value_mean", False)


# -------------------------------------------------------------------------- persistence
def test_complete_baselines_survive_a_save_and_load(tmp_path):
    settings = make_settings(tmp_path)
    first = DriftMonitor(settings)
    rng = np.random.default_rng(7)
    # exactly 20 non-null values each: complete baselines, empty windows
    numeric = rng.normal(10, 2, 22)
    category = rng.integers(0, 12, 22).astype(np.float64)
    numeric[[3, 11]] = category[[3, 11]] = NAN
    first.absorb("v1", rows(numeric, category))
    first.absorb("v2", rows(np.arange(5.0)))  # partial: not persisted
    assert baselines.save(first, str(tmp_path)) == 2
    path = tmp_path / "drift" / "baselines.npz"
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["baselines.npz"]

    second = DriftMonitor(settings)
    assert baselines.load(second, str(tmp_path)) == 2
    before, after = first.report(), second.report()
    assert after["monitoring_since"] == before["monitoring_since"]
    for feature in ("value_mean", "category_encoded"):
        assert detail(after, feature)["baseline"] == detail(before, feature)["baseline"]
        assert detail(after, feature)["baseline"]["count"] == 20
        assert detail(after, feature)["baseline"]["null_fraction"] == 2 / 22
        assert detail(after, feature)["current"]["count"] == 0
    assert detail(after, "value_mean", "v2")["baseline"]["count"] == 0
    # the same window scores the same against the original and the restored baseline
    window = rows(rng.normal(11, 2, 8), rng.integers(0, 14, 8).astype(np.float64))
    first.absorb("v1", window)
    second.absorb("v1", window)
    for feature in ("value_mean", "category_encoded"):
        original, restored = detail(first.report(), feature), detail(second.report(), feature)
        assert restored["drift_score"] == original["drift_score"]
        assert restored["ks_statistic"] == original["ks_statistic"]
        assert restored["drift_score"] is not None


def test_load_without_a_file_and_after_a_reset(tmp_path):
    settings = make_settings(tmp_path)
    assert baselines.load(DriftMonitor(settings), str(tmp_path)) == 0
    monitor = DriftMonitor(settings)
    monitor.absorb("v1", rows(np.arange(20.0)))
    assert baselines.save(monitor, str(tmp_path)) == 1
    monitor.reset(["v1"])
    assert baselines.save(monitor, str(tmp_path)) == 0
    restored = DriftMonitor(settings)
    assert baselines.load(restored, str(tmp_path)) == 0
    assert detail(restored.report(), "value_mean")["baseline"]["count"] == 0
