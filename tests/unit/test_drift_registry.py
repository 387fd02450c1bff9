"""The drift statistics registry (STYLE: Evidently) and the monitor it drives (SPEC §7).

Each statistic is looked up by name and kind, carries its default threshold, computes its
reference once per baseline and, applied through the registry, gives bit for bit what its pure
function gives. The monitor takes, per (version, feature), the statistic of the feature's kind
and that statistic's threshold: DRIFT_STATISTIC_THRESHOLDS by name, else DRIFT_THRESHOLD for
PSI, else the statistic's default.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest

from drift import statistics
from drift.monitor import (
    DRIFT_THRESHOLD_STATISTICS,
    REPORTED_STATISTICS,
    DriftMonitor,
    statistic_thresholds,
)
from drift.statistics import (
    DRIFT_STATISTICS,
    STATISTICS,
    Result,
    Statistic,
    UnknownStatistic,
    categorical_reference,
    drift_statistic,
    ks_statistic,
    numeric_reference,
    psi_categorical,
    psi_numeric,
    register,
    statistic,
)
from featurestore.config import VARIABLES, ConfigError, Settings
from featurestore.features.registry import CATEGORICAL, IDENTIFIER, NUMERIC, REGISTRY

NAN = math.nan
WIDTH = len(REGISTRY["v1"].names)
NUMERIC_COLUMN = REGISTRY["v1"].names.index("value_mean")
CATEGORY_COLUMN = REGISTRY["v1"].names.index("category_encoded")
KINDS = {f.name: f.kind for f in REGISTRY["v1"].features}


def make_settings(**env: str) -> Settings:
    values = {
        "DATA_DIR": "/tmp/drift-unit-unused",
        "DRIFT_BASELINE_SIZE": "20",
        "DRIFT_WINDOW_SIZE": "10",
        "DRIFT_MIN_CURRENT": "5",
    }
    values.update(env)
    return Settings.from_env(values)


def rows(numeric: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Vectors of v1, all null except value_mean and category_encoded."""
    matrix = np.full((len(numeric), WIDTH), NAN)
    matrix[:, NUMERIC_COLUMN] = numeric
    matrix[:, CATEGORY_COLUMN] = category
    return matrix


def detail(report: dict, feature: str, version: str = "v1") -> dict:
    (found,) = [
        d for d in report["drift_details"] if d["feature"] == feature and d["version"] == version
    ]
    return found


BASELINE = np.arange(20.0)
BASELINE_LABELS = BASELINE % 3
CURRENT = np.array([0.0, 1, 2, 3, 4, 5, 6, 7, 30, 31])
CURRENT_LABELS = np.array([0.0, 0, 0, 0, 0, 0, 1, 2, 2, 4])


def scored_monitor(**env: str) -> DriftMonitor:
    """A monitor whose value_mean and category_encoded pairs of v1 are scored on BASELINE and
    CURRENT (and their labels)."""
    monitor = DriftMonitor(make_settings(**env))
    monitor.absorb("v1", rows(BASELINE, BASELINE_LABELS))
    monitor.absorb("v1", rows(CURRENT, CURRENT_LABELS))
    return monitor


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """Undo what a test registers or re-assigns in the registry."""
    saved, choices = dict(STATISTICS), dict(DRIFT_STATISTICS)
    yield
    STATISTICS.clear()
    STATISTICS.update(saved)
    DRIFT_STATISTICS.clear()
    DRIFT_STATISTICS.update(choices)


# ------------------------------------------------------------------------------ registry
def test_statistics_are_looked_up_by_name() -> None:
    assert set(STATISTICS) == {"psi_numeric", "psi_categorical", "ks"}
    for name, registered in STATISTICS.items():
        assert statistic(name) is registered
        assert registered.name == name
    with pytest.raises(UnknownStatistic, match=r"^no drift statistic 'chi2': expected one of ks, "):
        statistic("chi2")


def test_statistics_are_looked_up_by_kind() -> None:
    assert statistic("psi_numeric", NUMERIC).kinds == frozenset({NUMERIC})
    assert statistic("ks", NUMERIC).kinds == frozenset({NUMERIC})
    assert statistic("psi_categorical", CATEGORICAL).kinds == frozenset({CATEGORICAL})
    with pytest.raises(UnknownStatistic, match=r"'ks' does not apply to categorical .*psi_cat"):
        statistic("ks", CATEGORICAL)
    with pytest.raises(UnknownStatistic, match=r"'psi_categorical' does not apply to numeric"):
        statistic("psi_categorical", NUMERIC)


def test_the_statistic_that_decides_each_kind_is_psi() -> None:
    assert drift_statistic(NUMERIC) is STATISTICS["psi_numeric"]
    assert drift_statistic(CATEGORICAL) is STATISTICS["psi_categorical"]
    with pytest.raises(UnknownStatistic, match=r"^identifier features are not monitored"):
        drift_statistic(IDENTIFIER)


def test_default_thresholds() -> None:
    defaults = {name: s.default_threshold for name, s in STATISTICS.items()}
    assert defaults == {"psi_numeric": 0.15, "psi_categorical": 0.15, "ks": 0.1}
    # an unset DRIFT_THRESHOLD gives PSI its own default
    for name in DRIFT_THRESHOLD_STATISTICS:
        assert VARIABLES["DRIFT_THRESHOLD"].default == STATISTICS[name].default_threshold


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match=r"'ks' is registered twice"):
        register(Statistic("ks", frozenset({NUMERIC}), 0.2, np.sort, ks_statistic))
    assert STATISTICS["ks"].default_threshold == 0.1


@pytest.mark.parametrize("seed", range(6))
def test_a_statistic_applied_through_the_registry_equals_its_pure_function(seed: int) -> None:
    rng = np.random.default_rng(seed)
    baseline = rng.normal(10, 2, 200)
    current = rng.normal(10 + seed / 4, 2, 120)
    labels = rng.integers(0, 14, 200).astype(np.float64)
    window = rng.integers(0, 16, 120).astype(np.float64)
    expected = {
        "psi_numeric": psi_numeric(numeric_reference(baseline), current),
        "ks": ks_statistic(np.sort(baseline), current),
        "psi_categorical": psi_categorical(categorical_reference(labels), window),
    }
    for name, score in expected.items():
        registered = STATISTICS[name]
        sample, recent = (labels, window) if name == "psi_categorical" else (baseline, current)
        result = registered.apply(registered.reference(sample), recent, 0.15)
        assert result == Result(name, score, 0.15, score > 0.15)  # bit for bit
        assert registered.score(registered.reference(sample), recent) == score


def test_is_drifting_is_a_score_strictly_above_the_threshold() -> None:
    psi = STATISTICS["psi_numeric"]
    reference = psi.reference(BASELINE)
    score = psi.score(reference, CURRENT)
    assert psi.apply(reference, CURRENT, score).is_drifting is False
    assert psi.apply(reference, CURRENT, float(np.nextafter(score, 0))).is_drifting is True


# ---------------------------------------------------------------------------- thresholds
def test_thresholds_default_to_drift_threshold_for_psi_and_the_registry_otherwise() -> None:
    assert statistic_thresholds(make_settings()) == {
        "psi_numeric": 0.15,
        "psi_categorical": 0.15,
        "ks": 0.1,
    }
    # DRIFT_THRESHOLD is PSI's (SPEC §7): it does not move the other statistics' thresholds
    assert statistic_thresholds(make_settings(DRIFT_THRESHOLD="0.3")) == {
        "psi_numeric": 0.3,
        "psi_categorical": 0.3,
        "ks": 0.1,
    }


def test_thresholds_by_statistic_name_win() -> None:
    settings = make_settings(
        DRIFT_THRESHOLD="0.3", DRIFT_STATISTIC_THRESHOLDS="psi_categorical=0.25,ks=0.05"
    )
    assert statistic_thresholds(settings) == {
        "psi_numeric": 0.3,
        "psi_categorical": 0.25,
        "ks": 0.05,
    }


def test_an_unknown_statistic_name_stops_the_monitor_with_a_config_error() -> None:
    settings = make_settings(DRIFT_STATISTIC_THRESHOLDS="ks=0.1,psi=0.2")
    with pytest.raises(ConfigError) as caught:
        DriftMonitor(settings)
    assert str(caught.value) == (
        "DRIFT_STATISTIC_THRESHOLDS: no drift statistic 'psi': expected one of ks, "
        "psi_categorical, psi_numeric"
    )


# ------------------------------------------------------------------------------- monitor
def test_every_pair_is_scored_by_the_statistic_of_its_kind() -> None:
    report = DriftMonitor(make_settings()).report()
    for entry in report["drift_details"]:
        kind = KINDS[entry["feature"]]
        assert entry["statistic"] == DRIFT_STATISTICS[kind]
        assert entry["threshold"] == 0.15
    assert report["drift_threshold"] == 0.15


def test_the_report_holds_what_the_registry_gives_for_each_pair() -> None:
    # Given value_mean and category_encoded scored on known samples
    details = scored_monitor().report()
    numeric, category = detail(details, "value_mean"), detail(details, "category_encoded")
    # Then drift_score, ks_statistic and is_drifting are the registered statistics' results
    psi = STATISTICS["psi_numeric"].apply(numeric_reference(BASELINE), CURRENT, 0.15)
    assert (numeric["drift_score"], numeric["is_drifting"]) == (psi.score, psi.is_drifting)
    assert numeric["ks_statistic"] == ks_statistic(np.sort(BASELINE), CURRENT)
    labels = STATISTICS["psi_categorical"].apply(
        categorical_reference(BASELINE_LABELS), CURRENT_LABELS, 0.15
    )
    assert (category["drift_score"], category["is_drifting"]) == (labels.score, True)
    assert category["ks_statistic"] is None  # ks does not apply to categorical features
    assert set(REPORTED_STATISTICS) == {"ks_statistic"}


def test_a_threshold_by_name_decides_only_the_pairs_of_that_statistic() -> None:
    score = detail(scored_monitor().report(), "category_encoded")["drift_score"]
    below = float(np.nextafter(score, 0))
    for threshold, drifting in ((score, False), (below, True)):
        # When only psi_categorical's threshold is set
        report = scored_monitor(
            DRIFT_STATISTIC_THRESHOLDS=f"psi_categorical={threshold!r}"
        ).report()
        category, numeric = detail(report, "category_encoded"), detail(report, "value_mean")
        # Then categorical pairs compare with it, numeric ones still with DRIFT_THRESHOLD
        assert (category["threshold"], category["is_drifting"]) == (threshold, drifting)
        assert (numeric["threshold"], numeric["is_drifting"]) == (0.15, True)
        assert category["drift_score"] == score
        assert report["drift_threshold"] == 0.15
        assert report["drifting_features"] == 1 + drifting


def test_a_baseline_reference_is_computed_once_for_the_statistics_that_share_it() -> None:
    monitor = scored_monitor()
    pairs = {pair.feature: pair for pair in monitor.pairs["v1"]}
    numeric, category = pairs["value_mean"], pairs["category_encoded"]
    # psi_numeric and ks both score against the numeric reference: one computed object
    assert list(numeric.references) == [numeric_reference]
    assert numeric.references[numeric_reference].sorted_values.tolist() == BASELINE.tolist()
    assert list(category.references) == [categorical_reference]
    assert pairs["value_std"].references == {}  # its baseline is not complete
    monitor.reset(["v1"])
    assert numeric.references == {}


@pytest.mark.usefixtures("restore_registry")
def test_the_monitor_follows_the_registry_statistic_and_its_own_threshold() -> None:
    # Given numeric features decided by a statistic registered here (the KS statistic), with
    # its own default threshold, and DRIFT_THRESHOLD left at the PSI default
    register(
        Statistic("ks_decides", frozenset({NUMERIC}), 0.5, numeric_reference, statistics.ks_numeric)
    )
    DRIFT_STATISTICS[NUMERIC] = "ks_decides"
    # When a window with KS 0.4 (above DRIFT_THRESHOLD, below 0.5) is scored
    report = scored_monitor().report()
    numeric = detail(report, "value_mean")
    # Then that statistic scores, against its own threshold, not DRIFT_THRESHOLD
    ks = ks_statistic(np.sort(BASELINE), CURRENT)
    assert ks == pytest.approx(0.4)
    assert numeric["statistic"] == "ks_decides"
    assert (numeric["drift_score"], numeric["threshold"], numeric["is_drifting"]) == (
        ks,
        0.5,
        False,
    )
    assert numeric["ks_statistic"] == ks
    assert detail(report, "category_encoded")["statistic"] == "psi_categorical"
    # And an operator's threshold by name moves it
    report = scored_monitor(DRIFT_STATISTIC_THRESHOLDS="ks_decides=0.39").report()
    assert detail(report, "value_mean")["is_drifting"] is True
