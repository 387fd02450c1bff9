"""Drift monitoring end to end (SPEC §7): events in, online computations published by the real
workers, absorbed by the real drift process, reported over the broker and over PUB.

One stack for the module (broker, 2 workers, drift) on an empty store, with a small baseline
and window so that a test fills them in a second: DRIFT_BASELINE_SIZE = DRIFT_WINDOW_SIZE = 500,
DRIFT_MIN_CURRENT = 250. Every test starts with a `reset` and fills the baseline and the window
itself, so tests do not depend on each other or on their order (xdist may split the module).

Populations are drawn here with a fixed seed (value ~ N(100, 10), categories a/b/c, 5 events per
entity within the last 6 days, so that every monitored feature is non-null) and each phase uses
new entity ids, so every vector is a cache miss and is published once. The batch replies give
the exact vectors the workers published; the report is compared with PSI and KS computed here
from them (numpy quantiles, Python bin counting, scipy's ks_2samp): baseline and window are
sets aligned on batch boundaries, so the order vectors arrive in does not matter.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zmq
from integration_support import running_stack
from scipy.stats import ks_2samp

from featurestore.cli import main as featurestore_cli
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import CATEGORICAL, REGISTRY
from featurestore.ops.launcher import Stack, wait_for
from featurestore.timestamps import now_ms
from featurestore.wire.client import Client

BASELINE_SIZE = 500
WINDOW_SIZE = 500
MIN_CURRENT = 250
THRESHOLD = 0.15
STACK_ENV = {
    "DRIFT_BASELINE_SIZE": str(BASELINE_SIZE),
    "DRIFT_WINDOW_SIZE": str(WINDOW_SIZE),
    "DRIFT_MIN_CURRENT": str(MIN_CURRENT),
    "DRIFT_CHECK_INTERVAL_MS": "200",
}
DEADLINE_S = 20.0
DAY_MS = 86_400_000
EVENTS_PER_REQUEST = 10_000
FLOOR = 1e-4
DECILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
VERSIONS = ["v1", "v2"]
MONITORED = [f.name for f in REGISTRY["v1"].features if f.kind != "identifier"]
ANCHOR_MS = now_ms() - 60_000  # every event is at most 6 days before this
REPORT_KEYS = {
    "monitoring_since",
    "total_tracked",
    "drift_threshold",
    "features_monitored",
    "drifting_features",
    "dropped",
    "status",
    "drift_details",
}


# ----------------------------------------------------------------- independent reference
def reference_psi(baseline: np.ndarray, current: np.ndarray, categorical: bool) -> float:
    """PSI as SPEC §7 words it, written out: bins, shares, floor, sum."""
    if categorical:
        frequency = Counter(baseline.tolist())
        top = sorted(frequency, key=lambda label: (-frequency[label], label))[:9]

        def shares(sample: np.ndarray) -> list[float]:
            values = sample.tolist()
            inside = [values.count(label) / len(values) for label in top]
            return [*inside, sum(1 for v in values if v not in top) / len(values)]
    else:
        edges = np.quantile(baseline, DECILES).tolist()

        def shares(sample: np.ndarray) -> list[float]:
            counts = [0] * 10
            for value in sample.tolist():
                counts[sum(1 for edge in edges if edge < value)] += 1
            return [count / sample.size for count in counts]

    total = 0.0
    for baseline_share, current_share in zip(shares(baseline), shares(current), strict=True):
        b, c = max(baseline_share, FLOOR), max(current_share, FLOOR)
        total += (c - b) * math.log(c / b)
    return total


def reference_ks(baseline: np.ndarray, current: np.ndarray) -> float:
    return float(ks_2samp(baseline, current, method="asymp").statistic)


def reference_summary(values: np.ndarray, nulls: int = 0) -> dict:
    present = values[~np.isnan(values)]
    seen = present.size + nulls
    return {
        "mean": pytest.approx(float(np.mean(present)), rel=1e-9) if present.size else None,
        "stdDev": pytest.approx(float(np.std(present, ddof=1)), rel=1e-9)
        if present.size >= 2
        else None,
        "count": int(present.size),
        "null_fraction": nulls / seen if seen else None,
    }


# ------------------------------------------------------------------------------ data
@dataclass(frozen=True)
class Population:
    mean: float = 100.0
    sd: float = 10.0
    mix: tuple[tuple[str, float], ...] = (("a", 1 / 3), ("b", 1 / 3), ("c", 1 / 3))
    events: int = 5
    categorised: bool = True


SAME = Population()
_phase = itertools.count()


def new_ids(count: int) -> list[str]:
    prefix = f"d{next(_phase):04d}"
    return [f"{prefix}-{i:04d}" for i in range(count)]


def events_for(ids: list[str], population: Population, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    shape = (len(ids), population.events)
    offsets = rng.integers(60_000, 6 * DAY_MS, size=shape)
    values = np.round(rng.normal(population.mean, population.sd, size=shape), 6)
    labels = [label for label, _ in population.mix]
    shares = [share for _, share in population.mix]
    categories = rng.choice(labels, size=shape, p=shares)
    events = []
    for i, entity_id in enumerate(ids):
        for j in range(population.events):
            event = {
                "entity_id": entity_id,
                "timestamp": int(ANCHOR_MS - offsets[i, j]),
                "value": float(values[i, j]),
            }
            if population.categorised:
                event["category"] = str(categories[i, j])
            events.append(event)
    return events


def ingest_population(fs: Client, count: int, population: Population, seed: int) -> list[str]:
    ids = new_ids(count)
    events = events_for(ids, population, seed)
    for start in range(0, len(events), EVENTS_PER_REQUEST):
        fs.ingest(events[start : start + EVENTS_PER_REQUEST])
    return ids


def observe(
    fs: Client, count: int, population: Population, seed: int, version: str = "v1"
) -> tuple[list[str], np.ndarray]:
    """New entities, computed online once: (ids, the vectors the workers published)."""
    ids = ingest_population(fs, count, population, seed)
    batch = fs.batch(ids, version=version, arrays=True)
    assert batch.found.all()
    assert not batch.cached.any()  # misses: computed, so published
    assert batch.names == REGISTRY[version].names
    return ids, batch.values


# --------------------------------------------------------------------------- reports
def wait_report(fs: Client, total_tracked: int, timeout_s: float = DEADLINE_S) -> dict:
    """The report once `total_tracked` vectors are counted, and not one more."""

    def counted() -> dict | None:
        report = fs.drift_report()
        return report if report["total_tracked"] >= total_tracked else None

    report = wait_for(counted, timeout_s, f"total_tracked to reach {total_tracked}")
    assert report["total_tracked"] == total_tracked
    return report


def reset(fs: Client) -> dict:
    reply = fs.drift_baseline(action="reset")
    assert reply["action"] == "reset"
    assert reply["versions"] == VERSIONS
    report = fs.drift_report()
    assert report["total_tracked"] == 0
    assert report["status"] == "insufficient_data"
    return report


def details(report: dict, version: str = "v1") -> dict[str, dict]:
    return {d["feature"]: d for d in report["drift_details"] if d["version"] == version}


def drifting(report: dict, version: str = "v1") -> set[str]:
    return {name for name, d in details(report, version).items() if d["is_drifting"]}


def assert_scored_against(report: dict, baseline: np.ndarray, window: np.ndarray) -> None:
    """Every v1 pair: score, KS, moments and verdict equal the reference on these vectors."""
    features = REGISTRY["v1"].features
    found = details(report)
    assert list(found) == MONITORED
    for column, feature in enumerate(features):
        if feature.name not in found:
            continue
        entry = found[feature.name]
        b, c = baseline[:, column], window[:, column]
        assert not np.isnan(b).any() and not np.isnan(c).any()
        categorical = feature.kind == CATEGORICAL
        assert entry["drift_score"] == pytest.approx(
            reference_psi(b, c, categorical), rel=1e-9, abs=1e-12
        ), feature.name
        if categorical:
            assert entry["ks_statistic"] is None
        else:
            assert entry["ks_statistic"] == pytest.approx(reference_ks(b, c), abs=1e-12)
        assert entry["is_drifting"] is (entry["drift_score"] > THRESHOLD)
        assert entry["statistic"] == ("psi_categorical" if categorical else "psi_numeric")
        assert entry["threshold"] == THRESHOLD
        assert entry["baseline"] == reference_summary(b), feature.name
        assert entry["current"] == reference_summary(c), feature.name
    assert report["drifting_features"] == len(drifting(report)) + len(drifting(report, "v2"))
    assert report["status"] == ("drift_detected" if report["drifting_features"] else "ok")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def drift_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("drift-store")
    with running_stack(data_dir, workers=2, drift=True, env=STACK_ENV) as stack:
        yield stack


@pytest.fixture
def fs(drift_stack: Stack) -> Iterator[Client]:
    client = drift_stack.client()
    try:
        yield client
    finally:
        client.close()


# ------------------------------------------------------------------------------ tests
def test_baseline_fills_then_the_window_is_scored_from_min_current(fs: Client):
    # Given a fresh baseline
    report = reset(fs)
    assert set(report) == REPORT_KEYS
    assert report["features_monitored"] == 44  # 22 per version, identifiers not monitored
    assert [d["feature"] for d in report["drift_details"]] == MONITORED * 2
    assert report["drift_threshold"] == THRESHOLD
    assert all(d["drift_score"] is None for d in report["drift_details"])

    # When the first 500 vectors arrive: the baseline is complete, nothing scored yet
    _, baseline = observe(fs, BASELINE_SIZE, SAME, seed=1)
    report = wait_report(fs, 500)
    assert report["status"] == "insufficient_data"
    assert report["dropped"] == 0
    for column, name in enumerate(REGISTRY["v1"].names):
        if name in MONITORED:
            entry = details(report)[name]
            assert entry["baseline"] == reference_summary(baseline[:, column]), name
            assert entry["current"] == reference_summary(baseline[:0, column])
            assert (entry["drift_score"], entry["is_drifting"]) == (None, False)
    assert all(d["baseline"]["count"] == 0 for d in details(report, "v2").values())

    # When the window holds MIN_CURRENT - 1: still unscored
    _, first = observe(fs, MIN_CURRENT - 1, SAME, seed=2)
    report = wait_report(fs, 749)
    assert report["status"] == "insufficient_data"
    assert {d["current"]["count"] for d in details(report).values()} == {249}
    assert all(d["drift_score"] is None for d in report["drift_details"])

    # Then one more vector makes every v1 pair scored
    _, one = observe(fs, 1, SAME, seed=3)
    report = wait_report(fs, 750)
    assert_scored_against(report, baseline, np.vstack([first, one]))

    # And a full window of the same distribution does not drift
    _, rest = observe(fs, WINDOW_SIZE - MIN_CURRENT, SAME, seed=4)
    report = wait_report(fs, 1000)
    assert_scored_against(report, baseline, np.vstack([first, one, rest]))
    assert report["status"] == "ok"
    assert report["drifting_features"] == 0
    assert report["dropped"] == 0
    # every event is within 7 days: trend_7d == trend_30d, so momentum is a constant 0
    constant = details(report)["momentum"]
    assert constant["baseline"] == {"mean": 0.0, "stdDev": 0.0, "count": 500, "null_fraction": 0.0}
    assert (constant["drift_score"], constant["ks_statistic"]) == (0.0, 0.0)


VALUE_STATISTICS = {"value_mean", "value_median", "value_min", "value_max", "value_q25"}
CALENDAR = {"day_of_week", "hour_of_day", "is_weekend", "is_business_hours", "recency_days"}
SHIFTS = {
    # x 2 the level: every level statistic moves, and the ratios to it shrink
    "shifted mean": (
        Population(mean=200.0),
        VALUE_STATISTICS | {"value_q75", "ratio_to_mean", "volatility"},
        CALENDAR
        | {"value_std", "value_iqr", "z_score", "percentile_rank", "trend_7d", "trend_30d"}
        | {"momentum", "category_encoded", "frequency"},
    ),
    # x 3 the spread: dispersion moves; scale-free features do not
    "changed spread": (
        Population(sd=30.0),
        {"value_std", "value_iqr", "value_min", "value_max", "trend_7d", "trend_30d"},
        CALENDAR | {"z_score", "percentile_rank", "category_encoded", "frequency"},
    ),
    # a/b/c in thirds -> mostly a new category d (in the "others" bin) and c
    "changed category mix": (
        Population(mix=(("a", 0.1), ("b", 0.1), ("c", 0.2), ("d", 0.6))),
        {"category_encoded"},
        CALENDAR | VALUE_STATISTICS | {"value_std", "value_iqr", "z_score", "ratio_to_mean"},
    ),
}


@pytest.mark.parametrize("shift", list(SHIFTS))
def test_drift_is_detected_on_the_features_that_moved(fs: Client, shift: str):
    population, moved, unmoved = SHIFTS[shift]
    reset(fs)
    _, baseline = observe(fs, BASELINE_SIZE, SAME, seed=10)
    _, window = observe(fs, WINDOW_SIZE, population, seed=11)
    report = wait_report(fs, BASELINE_SIZE + WINDOW_SIZE)
    assert_scored_against(report, baseline, window)
    assert report["status"] == "drift_detected"
    assert moved <= drifting(report), moved - drifting(report)
    assert not (unmoved & drifting(report)), unmoved & drifting(report)
    assert report["dropped"] == 0


def test_as_of_historical_and_cache_hits_do_not_move_the_window(fs: Client):
    # Given a scored window
    reset(fs)
    _, baseline = observe(fs, BASELINE_SIZE, SAME, seed=20)
    window_ids, window = observe(fs, 300, SAME, seed=21)
    before = wait_report(fs, 800)
    assert_scored_against(before, baseline, window)

    # When entities are computed as of a past time, historically, and served from the cache
    ids = ingest_population(fs, 40, Population(mean=500.0), seed=22)
    assert fs.batch(ids, as_of=ANCHOR_MS, arrays=True).found.all()
    assert fs.get(ids[0], as_of=ANCHOR_MS)["cached"] is False
    rows = [{"entity_id": e, "timestamp": ANCHOR_MS - k * DAY_MS} for e in ids for k in (0, 1)]
    assert fs.historical(rows, arrays=True).found.all()
    assert fs.batch(window_ids, arrays=True).cached.all()
    assert fs.get(window_ids[0])["cached"] is True
    # and then one online computation in v2 (a miss), which must be the only vector counted
    assert fs.get(ids[1], version="v2")["cached"] is False

    # Then only that one arrives: the v1 baseline and window are exactly as before
    after = wait_report(fs, 801)
    assert details(after) == details(before)
    assert details(after, "v2")["value_mean"]["baseline"]["count"] == 1
    assert after["dropped"] == 0


def test_null_fractions_count_the_vectors_received_while_filling(fs: Client):
    reset(fs)
    no_category = Population(categorised=False)  # category_encoded and frequency are null
    names = REGISTRY["v1"].names
    mean = names.index("value_mean")
    category = names.index("category_encoded")
    # Given 30 vectors without a category, then 470 with
    _, nulls = observe(fs, 30, no_category, seed=30)
    _, full = observe(fs, 470, SAME, seed=31)
    assert np.isnan(nulls[:, category]).all() and not np.isnan(full[:, category]).any()
    found = details(wait_report(fs, 500))
    # Then value_mean's baseline is complete, category_encoded's has 470 of 500 and 30 nulls
    assert found["value_mean"]["baseline"] == reference_summary(np.vstack([nulls, full])[:, mean])
    for name in ("category_encoded", "frequency"):
        assert found[name]["baseline"] == reference_summary(full[:, names.index(name)], 30)
        assert found[name]["drift_score"] is None
    assert found["category_encoded"]["baseline"]["null_fraction"] == 30 / 500

    # When 30 more arrive: category_encoded completes, value_mean's window starts
    _, more = observe(fs, 30, SAME, seed=32)
    found = details(wait_report(fs, 530))
    assert found["category_encoded"]["baseline"] == reference_summary(
        np.vstack([full, more])[:, category], 30
    )
    assert found["category_encoded"]["baseline"]["null_fraction"] == 30 / 530
    assert found["category_encoded"]["current"]["count"] == 0
    assert found["value_mean"]["current"] == reference_summary(more[:, mean])

    # And 20 null categories after it completed count in its window
    _, late = observe(fs, 20, no_category, seed=33)
    found = details(wait_report(fs, 550))
    assert found["category_encoded"]["current"] == {
        "mean": None,
        "stdDev": None,
        "count": 0,
        "null_fraction": 1.0,
    }
    assert found["value_mean"]["current"] == reference_summary(np.vstack([more, late])[:, mean])


def test_baseline_from_entity_ids_as_of_the_request_time(fs: Client):
    reset(fs)
    ids = ingest_population(fs, 60, SAME, seed=40)
    reply = fs.drift_baseline(action="entity_ids", entity_ids=ids, version="v1")
    assert reply["versions"] == ["v1"]
    assert reply["entities"] == 60
    assert reply["features"] == {"v1": MONITORED}
    # the vectors as of the request's T are what an as_of query at T returns
    expected = fs.batch(ids, as_of=reply["timestamp"], arrays=True).values
    report = fs.drift_report()
    assert report["total_tracked"] == 0
    for column, name in enumerate(REGISTRY["v1"].names):
        if name in MONITORED:
            assert details(report)[name]["baseline"] == reference_summary(expected[:, column])
    assert all(d["baseline"]["count"] == 0 for d in details(report, "v2").values())
    # a window is scored against exactly that baseline
    _, window = observe(fs, MIN_CURRENT, Population(mean=200.0), seed=41)
    report = wait_report(fs, MIN_CURRENT)
    assert_scored_against(report, expected, window)
    assert "value_mean" in drifting(report)


def test_baseline_from_generated_files(fs: Client, drift_stack: Stack):
    reset(fs)
    data_dir = Path(drift_stack.settings.data_dir)
    ids = ingest_population(fs, 60, SAME, seed=50)
    rows = data_dir / "baseline_rows.csv"
    pd.DataFrame({"entity_id": ids, "timestamp": ANCHOR_MS}).to_csv(rows, index=False)
    parquet = data_dir / "baseline_v2.parquet"
    generate = ["generate", str(rows), "--data-dir", str(data_dir), "--output"]
    assert featurestore_cli([*generate, str(parquet), "--version", "v2"]) == 0

    # A Parquet file records its version (v2), a path relative to DATA_DIR
    reply = fs.drift_baseline(action="file", path=parquet.name)
    assert (reply["versions"], reply["rows"], reply["features"]) == (["v2"], 60, {"v2": MONITORED})
    frame = pd.read_parquet(parquet)
    report = fs.drift_report()
    for name in MONITORED:
        column = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
        assert details(report, "v2")[name]["baseline"] == reference_summary(column), name
    assert all(d["baseline"]["count"] == 0 for d in details(report).values())

    # A CSV records none: the version comes with the request; an absolute path inside DATA_DIR
    csv = data_dir / "baseline_v1.csv"
    assert featurestore_cli([*generate, str(csv), "--version", "v1"]) == 0
    reply = fs.drift_baseline(action="file", path=str(csv), version="v1")
    assert (reply["versions"], reply["rows"]) == (["v1"], 60)
    expected = fs.batch(ids, as_of=ANCHOR_MS, arrays=True).values
    report = fs.drift_report()
    for column, name in enumerate(REGISTRY["v1"].names):
        if name in MONITORED:
            assert details(report)[name]["baseline"] == reference_summary(expected[:, column])
    assert details(report, "v2")["value_mean"]["baseline"]["count"] == 60  # left as it was


@pytest.fixture(scope="module")
def request_files(drift_stack: Stack) -> dict:
    """Files under DATA_DIR that baseline requests must refuse, and one known entity."""
    data_dir = Path(drift_stack.settings.data_dir)
    (data_dir / "vectors.csv").write_text("entity_id,timestamp,value_mean\nx,1,2.0\n")
    (data_dir / "corrupt.parquet").write_bytes(b"not a parquet file")
    (data_dir / "notes.txt").write_text("hello\n")
    (data_dir / "a-directory.parquet").mkdir()
    (data_dir / "escape.parquet").symlink_to("/etc/passwd")
    with drift_stack.client() as fs:
        (known,) = ingest_population(fs, 1, SAME, seed=60)
    return {"known": known}


BAD_REQUESTS = {
    "unknown action": (
        {"action": "refresh"},
        Code.INVALID_REQUEST,
        "'action' must be one of reset, entity_ids, file",
    ),
    "no action": ({}, Code.INVALID_REQUEST, "'action' must be one of reset, entity_ids, file"),
    "unknown field": (
        {"action": "reset", "entities": []},
        Code.INVALID_REQUEST,
        "unknown field(s): entities; allowed: action, version, entity_ids, path",
    ),
    "unknown version": ({"action": "reset", "version": "v3"}, Code.UNKNOWN_VERSION, "'v3'"),
    "unknown entities": (
        {"action": "entity_ids", "entity_ids": ["{known}", "ghost-1", "ghost-2"]},
        Code.INVALID_REQUEST,
        "2 entity id(s) have no events at or before ",
    ),
    "no entity ids": (
        {"action": "entity_ids", "entity_ids": []},
        Code.INVALID_REQUEST,
        "'entity_ids' must be a non-empty list for action entity_ids",
    ),
    "entity ids not strings": (
        {"action": "entity_ids", "entity_ids": [1, 2]},
        Code.INVALID_REQUEST,
        "'entity_ids[0]' must be a string",
    ),
    "no path": ({"action": "file"}, Code.INVALID_REQUEST, "'path' is required for action file"),
    "missing file": (
        {"action": "file", "path": "missing.parquet"},
        Code.INVALID_REQUEST,
        "no such file under DATA_DIR: missing.parquet",
    ),
    "a directory": (
        {"action": "file", "path": "a-directory.parquet"},
        Code.INVALID_REQUEST,
        "no such file under DATA_DIR: a-directory.parquet",
    ),
    "parent directory": (
        {"action": "file", "path": "../x.parquet"},
        Code.INVALID_REQUEST,
        "'path' must be inside DATA_DIR",
    ),
    "absolute outside": (
        {"action": "file", "path": "/etc/passwd"},
        Code.INVALID_REQUEST,
        "'path' must be inside DATA_DIR",
    ),
    "symlink outside": (
        {"action": "file", "path": "escape.parquet"},
        Code.INVALID_REQUEST,
        "'path' must be inside DATA_DIR",
    ),
    "NUL in path": (
        {"action": "file", "path": "a\x00b.parquet"},
        Code.INVALID_REQUEST,
        "'path' is not a usable file name: embedded null byte",
    ),
    "name too long": (
        {"action": "file", "path": "x" * 5000 + ".parquet"},
        Code.INVALID_REQUEST,
        "'path' is not a usable file name: File name too long",
    ),
    "CSV without version": (
        {"action": "file", "path": "vectors.csv"},
        Code.INVALID_REQUEST,
        "the file records no version (CSV/JSON Lines): give 'version'",
    ),
    "file of unknown version": (
        {"action": "file", "path": "vectors.csv", "version": "v7"},
        Code.UNKNOWN_VERSION,
        "'v7'",
    ),
    "corrupt Parquet": (
        {"action": "file", "path": "corrupt.parquet"},
        Code.INVALID_REQUEST,
        "corrupt.parquet: not a readable Parquet file",
    ),
    "unknown file type": (
        {"action": "file", "path": "notes.txt"},
        Code.INVALID_REQUEST,
        "unknown file type '.txt'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_baseline_requests_are_clear_400s(fs: Client, request_files: dict, case: str):
    body, code, message = BAD_REQUESTS[case]
    if case == "unknown entities":
        body = {**body, "entity_ids": [e.format(**request_files) for e in body["entity_ids"]]}
    before = fs.drift_report()
    with pytest.raises(ServiceError) as caught:
        fs.drift_baseline(**body)
    error = caught.value
    assert (error.code, error.http_status) == (code, 400)
    assert message in error.message
    if case == "unknown action":
        assert error.extra["valid"] == ["reset", "entity_ids", "file"]
    if case == "unknown entities":
        assert error.extra["unknown"] == ["ghost-1", "ghost-2"]
    if code is Code.UNKNOWN_VERSION:
        assert error.extra["valid"] == VERSIONS
    assert details(fs.drift_report()) == details(before)  # nothing changed


# --------------------------------------------------------------------------- restart
def answered_report(stack: Stack) -> dict | None:
    """The report, once the (new) drift process answers; None while it does not."""
    if (stack.health() or {}).get("drift") != "ok":
        return None
    try:
        with stack.client(timeout_ms=2000, retry_ms=500) as fs:
            return fs.drift_report()
    except ServiceError:
        return None


def refill_window(fs: Client, baseline_total: int, seed: int) -> tuple[dict, np.ndarray]:
    """Fill the window with 10 batches of 50 that all arrive, after a drift restart.

    Workers reconnect their PUB to the new drift process on their own; until one has, what it
    publishes is dropped. A batch not counted in time is such a loss, and the run starts over.
    """
    parts: list[np.ndarray] = []
    tracked = baseline_total
    deadline = time.monotonic() + DEADLINE_S
    for attempt in itertools.count(seed):
        if len(parts) == WINDOW_SIZE // 50:
            break
        assert time.monotonic() < deadline, "the workers did not reach the new drift process"
        _, values = observe(fs, 50, SAME, seed=attempt)
        try:
            report = wait_report(fs, tracked + 50, timeout_s=2.0)
            parts.append(values)
        except TimeoutError:
            report = fs.drift_report()
            parts.clear()
        tracked = report["total_tracked"]
    return report, np.vstack(parts)


def test_a_restarted_drift_process_keeps_the_complete_baseline(fs: Client, drift_stack: Stack):
    # Given a complete v1 baseline and a partial v2 one
    reset(fs)
    _, baseline = observe(fs, BASELINE_SIZE, SAME, seed=70)
    observe(fs, 10, SAME, seed=71, version="v2")
    before = wait_report(fs, 510)
    assert details(before, "v2")["value_mean"]["baseline"]["count"] == 10

    # When the drift process is killed and restarted
    restarts = drift_stack.restart_count("drift")
    old_pid = drift_stack.kill("drift")
    wait_for(
        lambda: (
            drift_stack.restart_count("drift") > restarts and drift_stack.pid("drift") != old_pid
        ),
        DEADLINE_S,
        "a new drift process",
    )
    after = wait_for(lambda: answered_report(drift_stack), DEADLINE_S, "the new drift to answer")

    # Then the complete baseline is back exactly, the partial one is not
    assert after["monitoring_since"] == before["monitoring_since"]
    for name, entry in details(after).items():
        assert entry["baseline"] == details(before)[name]["baseline"], name
        assert entry["baseline"]["count"] == BASELINE_SIZE
        assert entry["current"]["count"] == 0
    assert all(d["baseline"]["count"] == 0 for d in details(after, "v2").values())

    # And a new window is scored against those very baseline vectors
    report, window = refill_window(fs, after["total_tracked"], seed=72)
    assert_scored_against(report, baseline, window)
    assert report["status"] == "ok"


# ------------------------------------------------------------------------- subscriber
@contextlib.contextmanager
def subscriber(endpoint: str) -> Iterator[zmq.Socket]:
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SUBSCRIBE, b"report")
    socket.setsockopt(zmq.SUBSCRIBE, b"alert")
    socket.connect(endpoint)
    try:
        yield socket
    finally:
        socket.close(linger=0)
        context.term()


def receive_until(
    socket: zmq.Socket, match: Callable[[bytes, dict], bool], what: str
) -> tuple[bytes, dict]:
    """The first (topic, JSON body) that matches, within the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while (left_s := deadline - time.monotonic()) > 0:
        if socket.poll(int(left_s * 1000) + 1, zmq.POLLIN):  # deadline-poll
            topic, body = socket.recv_multipart()
            message = json.loads(body)
            if match(topic, message):
                return topic, message
    raise AssertionError(f"no {what} within {DEADLINE_S} s")


def test_a_subscriber_receives_reports_and_alerts(fs: Client, drift_stack: Stack):
    with subscriber(drift_stack.settings.drift_pub_endpoint) as socket:
        # Given a subscriber that receives the periodic report
        _, first = receive_until(socket, lambda topic, _: topic == b"report", "first report")
        assert set(first) == REPORT_KEYS
        reset(fs)
        receive_until(
            socket,
            lambda topic, m: topic == b"report" and m["total_tracked"] == 0,
            "a report after the reset",
        )

        # When value_mean starts drifting
        observe(fs, BASELINE_SIZE, SAME, seed=80)
        observe(fs, WINDOW_SIZE, Population(mean=200.0), seed=81)
        current = wait_report(fs, BASELINE_SIZE + WINDOW_SIZE)
        score = details(current)["value_mean"]["drift_score"]

        # Then the published report says so, and an alert names it
        _, published = receive_until(
            socket,
            lambda topic, m: topic == b"report" and m["total_tracked"] == 1000,
            "a report of the 1000 vectors",
        )
        assert published["status"] == "drift_detected"
        assert details(published) == details(current)
        assert published["drifting_features"] == current["drifting_features"]
        _, alert = receive_until(
            socket,
            lambda topic, m: (
                topic == b"alert" and m["feature"] == "value_mean" and m["is_drifting"]
            ),
            "an alert that value_mean started drifting",
        )
        assert set(alert) == {"feature", "version", "is_drifting", "drift_score", "at"}
        assert (alert["version"], alert["is_drifting"]) == ("v1", True)
        assert alert["drift_score"] == score > THRESHOLD

        # And another one when it stops (a reset: nothing is scored any more)
        reset(fs)
        _, stopped = receive_until(
            socket,
            lambda topic, m: (
                topic == b"alert" and m["feature"] == "value_mean" and not m["is_drifting"]
            ),
            "the alert that value_mean stopped drifting",
        )
        assert (stopped["version"], stopped["is_drifting"], stopped["drift_score"]) == (
            "v1",
            False,
            None,
        )
