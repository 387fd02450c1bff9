"""The feature engine (SPEC §4) against an independent reference, for v1 and v2.

- property tests: random histories, every feature, both versions (`reference_features.py`);
- fixed edge cases, one test each;
- bit-identity of single / batch / historical computation;
- point-in-time correctness (events after T never matter).
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_features import (
    FEATURE_NAMES,
    INT_FEATURES,
    MONTH_MS,
    MS_PER_DAY,
    V2_WINDOWED,
    WEEK_MS,
    Event,
    id_hash,
    reference_features,
)

from featurestore.features.engine import compute
from featurestore.features.registry import INT, feature_set
from featurestore.store.batch import EVENT_DTYPE, NO_CATEGORY, EventBatch

VERSIONS = ("v1", "v2")
HOUR = 3_600_000
CATEGORY_NAMES = ["web", "store", "app", "ünï|cøde"]
# 2024-01-01 00:00:00 UTC, a Monday.
BASE_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
T0 = BASE_MS + 10 * MS_PER_DAY + 12 * HOUR  # Thursday 2024-01-11 12:00 UTC

PROPERTY = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- building inputs and running the engine ---------------------------------------------------


def make_events(rows: list[tuple[int, float, int | None]]) -> list[Event]:
    """Events from (ts, value, category) rows given in insertion order."""
    return [Event(ts, seq, float(v), c) for seq, (ts, v, c) in enumerate(rows)]


def make_batch(entities: dict[str, list[Event]]) -> EventBatch:
    """An EventBatch of several entities; each entity's events are fed in `seq` order, so the
    insertion order that `from_columns` assigns preserves every entity's own sequence."""
    ids = list(entities)
    flat = [(e.seq, i, e) for i, eid in enumerate(ids) for e in entities[eid]]
    flat.sort(key=lambda row: (row[0], row[1]))
    return EventBatch.from_columns(
        ids,
        ts=[e.ts_ms for _, _, e in flat],
        value=[e.value for _, _, e in flat],
        category=[NO_CATEGORY if e.category is None else e.category for _, _, e in flat],
        entity_of_event=[i for _, i, _ in flat],
    )


def engine_row(entity_id: str, events: list[Event], as_of_ms: int, version: str) -> np.ndarray:
    batch = make_batch({entity_id: events})
    result = compute(batch, np.array([0]), as_of_ms, version, CATEGORY_NAMES)
    assert result.values.shape == (1, len(FEATURE_NAMES))
    assert result.values.dtype == np.float64
    return result.values[0]


# --- comparison ------------------------------------------------------------------------------


def mismatches(row: np.ndarray, expected: dict | None) -> list[str]:
    """Every feature on which the engine row differs from the reference (empty = agree)."""
    if expected is None:
        return [] if np.isnan(row).all() else ["not found, but the row is not all null"]
    problems = []
    for name, got in zip(FEATURE_NAMES, row.tolist(), strict=True):
        want = expected[name]
        if want is None or math.isnan(got):
            if not (want is None and math.isnan(got)):
                problems.append(f"{name}: engine {got!r}, reference {want!r}")
        elif name in INT_FEATURES:
            if not (got == int(got) and int(got) == want):
                problems.append(f"{name}: engine {got!r}, reference {want!r} (int, exact)")
        elif not math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{name}: engine {got!r}, reference {want!r}")
    return problems


def check(entity_id: str, events: list[Event], as_of_ms: int, version: str) -> dict | None:
    """Assert that engine and reference agree; return the reference vector."""
    expected = reference_features(entity_id, events, as_of_ms, version, CATEGORY_NAMES)
    row = engine_row(entity_id, events, as_of_ms, version)
    problems = mismatches(row, expected)
    assert not problems, f"{version} as of {as_of_ms}, events {events}:\n" + "\n".join(problems)
    return expected


def check_both(entity_id: str, events: list[Event], as_of_ms: int) -> dict:
    return {v: check(entity_id, events, as_of_ms, v) for v in VERSIONS}


def test_comparison_helper_detects_differences():
    events = make_events([(T0 - HOUR, 1.0, 0), (T0, 3.0, 1)])
    expected = reference_features("e", events, T0, "v1", CATEGORY_NAMES)
    row = engine_row("e", events, T0, "v1")
    assert mismatches(row, expected) == []
    i = FEATURE_NAMES.index
    nudged = row.copy()
    nudged[i("value_mean")] *= 1 + 1e-8
    assert mismatches(nudged, expected)
    nulled = row.copy()
    nulled[i("value_std")] = np.nan
    assert mismatches(nulled, expected)
    off_by_one = row.copy()
    off_by_one[i("entity_hash")] += 1  # integers must be exact, no tolerance
    assert mismatches(off_by_one, expected)
    assert mismatches(row, None)


# --- the registry matches the spec table ------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_registry_order_and_types_match_spec(version):
    fs = feature_set(version)
    assert fs.names == FEATURE_NAMES
    assert len(fs.names) == 24
    assert {f.name for f in fs.features if f.type == INT} == INT_FEATURES


# --- random histories ------------------------------------------------------------------------

# Offsets from T: few distinct days and hours, so equal timestamps, the window edges
# (T - 7 d, T - 30 d), T itself and events after T all occur often.
DAY_OFFSETS = [0, 1, 2, 3, 6, 7, 8, 29, 30, 31, 45]
OFFSETS = st.builds(
    lambda d, h, j: -d * MS_PER_DAY + h * HOUR + j,
    st.sampled_from(DAY_OFFSETS),
    st.sampled_from([-5, -1, 0, 0, 1, 3]),
    st.sampled_from([0, 0, 0, 1, -1]),
)
VALUES = st.one_of(
    st.integers(-5, 5).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False),
    st.sampled_from([0.1, 0.2, -0.3, 0.5, 1e6, -1e6, 123456.789]),
)
CATEGORIES = st.one_of(st.none(), st.integers(0, len(CATEGORY_NAMES) - 1))
AS_OF = st.builds(
    lambda d, h, m: BASE_MS + d * MS_PER_DAY + h * HOUR + m,
    st.integers(30, 44),
    st.integers(0, 23),
    st.sampled_from([0, 0, 1, 59_999]),
)
ENTITY_IDS = st.sampled_from(["user-1", "e", "ß-éntité", "a|b", "x" * 256])


@st.composite
def histories(draw, max_events: int = 60):
    """(as_of, events): events in insertion order, timestamps around T."""
    as_of = draw(AS_OF)
    pool = draw(st.lists(VALUES, min_size=1, max_size=4))
    value = st.one_of(st.sampled_from(pool), VALUES)
    rows = draw(
        st.lists(st.tuples(OFFSETS, value, CATEGORIES), max_size=max_events),
    )
    return as_of, make_events([(as_of + off, v, c) for off, v, c in rows])


@PROPERTY
@given(entity_id=ENTITY_IDS, history=histories())
def test_random_histories_match_reference(entity_id, history):
    as_of, events = history
    check_both(entity_id, events, as_of)


@st.composite
def near_constant_histories(draw):
    """Values a few ulps or a tiny amount apart around a common base: ill-conditioned
    statistics (std << |mean|), where a rounded mean must not leak into std or z_score."""
    as_of = draw(AS_OF)
    base = draw(
        st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(
            lambda b: b == 0 or abs(b) > 1e-290
        )
    )
    ulp = math.ulp(base) if base else 0.0  # no subnormal values
    deltas = st.one_of(
        st.just(0.0),
        st.integers(-3, 3).map(lambda k: k * ulp),
        st.floats(-1e-3, 1e-3, allow_subnormal=False),
        st.sampled_from([0.1, 0.01, 1e-6]),
    )
    rows = draw(st.lists(st.tuples(OFFSETS, deltas, CATEGORIES), min_size=1, max_size=60))
    return as_of, make_events([(as_of + off, base + d, c) for off, d, c in rows])


@PROPERTY
@given(history=near_constant_histories())
def test_near_constant_histories_match_reference(history):
    as_of, events = history
    check_both("e", events, as_of)


@PROPERTY
@given(history=histories(max_events=12), shift=st.sampled_from([-7, -30, 1, 0]))
def test_random_histories_at_window_edges_match_reference(history, shift):
    """T moved so that some event sits exactly on T, T - 7 d or T - 30 d (or 1 ms after)."""
    _, events = history
    if not events:
        return
    pivot = events[len(events) // 2].ts_ms
    as_of = pivot - shift * MS_PER_DAY if shift != 1 else pivot - 1
    check_both("edge", events, as_of)


# --- fixed edge cases ------------------------------------------------------------------------


def features(rows, as_of=T0, entity_id="e"):
    """Engine and reference agree for both versions; the (reference) vectors by version."""
    return check_both(entity_id, make_events(rows), as_of)


def assert_null(vector: dict, names) -> None:
    assert [n for n in names if vector[n] is not None] == []


def assert_not_null(vector: dict, names) -> None:
    assert [n for n in names if vector[n] is None] == []


def test_no_events_is_not_found():
    for version in VERSIONS:
        result = compute(make_batch({"e": []}), np.array([0]), T0, version, CATEGORY_NAMES)
        assert not result.found[0]
        assert np.isnan(result.values).all()
        assert reference_features("e", [], T0, version, CATEGORY_NAMES) is None


def test_only_events_after_t_is_not_found():
    rows = [(T0 + 1, 5.0, 0), (T0 + MS_PER_DAY, 7.0, None)]
    for version in VERSIONS:
        result = compute(
            make_batch({"e": make_events(rows)}), np.array([0]), T0, version, CATEGORY_NAMES
        )
        assert not result.found[0]
        assert np.isnan(result.values).all()
    assert features(rows) == {"v1": None, "v2": None}


def test_empty_batch_and_empty_query():
    batch = make_batch({})
    result = compute(batch, np.array([], dtype=np.int64), T0, "v1", CATEGORY_NAMES)
    assert result.values.shape == (0, 24)
    batch = make_batch({"a": [], "b": []})
    result = compute(batch, np.array([1, 0]), np.array([T0, T0 + 5]), "v2", CATEGORY_NAMES)
    assert not result.found.any()
    assert np.isnan(result.values).all()


def test_single_event():
    got = features([(T0 - 2 * HOUR, 4.5, 1)])
    for version, v in got.items():
        assert v["value_mean"] == v["value_min"] == v["value_max"] == v["value_median"] == 4.5
        assert v["value_iqr"] == 0.0
        assert_null(v, ["value_std", "z_score", "trend_7d", "trend_30d", "momentum", "volatility"])
        assert v["ratio_to_mean"] == 1.0
        assert v["percentile_rank"] == 1.0
        assert v["frequency"] == 1.0
        assert v["category_encoded"] == 1
        assert v["recency_days"] == 2 / 24, version


def test_two_events():
    got = features([(T0 - 2 * MS_PER_DAY, 1.0, 0), (T0 - MS_PER_DAY, 3.0, 0)])
    for v in got.values():
        assert v["value_mean"] == 2.0
        assert v["value_std"] == pytest.approx(math.sqrt(2), rel=1e-12)
        assert v["trend_7d"] == v["trend_30d"] == 2.0
        assert v["momentum"] == 0.0
        assert v["value_q25"] == 1.5 and v["value_q75"] == 2.5 and v["value_median"] == 2.0
        assert v["percentile_rank"] == 1.0
        assert v["ratio_to_mean"] == 1.5
    assert got["v1"]["z_score"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)
    # robust z: median 2, MAD = median(|1 - 2|, |3 - 2|) = 1
    assert got["v2"]["z_score"] == pytest.approx(1 / 1.4826, rel=1e-12)


def test_equal_timestamps_insertion_order_decides_the_last_event():
    ts = T0 - 3 * HOUR
    got = features([(ts, 10.0, 0), (ts, 2.0, 2), (ts - HOUR, 6.0, 2)])
    for v in got.values():
        # the last event is the second row (same ts as the first, inserted later)
        assert v["category_encoded"] == 2
        assert v["ratio_to_mean"] == 2.0 / 6.0
        assert v["percentile_rank"] == 1 / 3
        assert v["frequency"] == 2 / 3
        assert v["interaction_hash"] == id_hash("e|app")
    reverse = features([(ts, 2.0, 2), (ts, 10.0, 0), (ts - HOUR, 6.0, 2)])
    for v in reverse.values():
        assert v["category_encoded"] == 0
        assert v["ratio_to_mean"] == 10.0 / 6.0
        assert v["percentile_rank"] == 1.0


def test_all_events_at_one_time_have_no_trend():
    got = features([(T0 - HOUR, float(x), None) for x in (1, 5, -2, 7)])
    for v in got.values():
        assert_null(v, ["trend_7d", "trend_30d", "momentum"])
        assert_not_null(v, ["value_std", "volatility", "z_score"])


def test_constant_values():
    rows = [(T0 - d * MS_PER_DAY, 7.25, 0) for d in (0, 1, 3, 10)]
    for v in features(rows).values():
        assert v["value_std"] == 0.0
        assert v["value_mean"] == 7.25
        assert v["value_iqr"] == 0.0
        assert v["volatility"] == 0.0
        assert v["trend_7d"] == 0.0 and v["trend_30d"] == 0.0
        assert v["z_score"] is None  # std = 0 (v1) and MAD = 0 (v2)
        assert v["ratio_to_mean"] == 1.0


def test_constant_point_one():
    """Three copies of 0.1: the exact mean is 0.1 (a naive sum / 3 is not), std exactly 0."""
    rows = [(T0 - d * HOUR, 0.1, None) for d in (1, 2, 3)]
    for v in features(rows).values():
        assert v["value_mean"] == 0.1
        assert v["value_std"] == 0.0
        assert v["volatility"] == 0.0
        assert v["ratio_to_mean"] == 1.0
        assert v["z_score"] is None


def test_point_one_point_two_minus_point_three():
    """0.1 + 0.2 - 0.3 is not 0 in binary: the mean is tiny but not zero, so nothing is null."""
    rows = [(T0 - 3 * HOUR, 0.1, 0), (T0 - 2 * HOUR, 0.2, 0), (T0 - HOUR, -0.3, 0)]
    for v in features(rows).values():
        assert 0 < v["value_mean"] < 1e-16
        assert_not_null(v, ["ratio_to_mean", "volatility", "z_score"])
        assert v["ratio_to_mean"] < -1e15


@pytest.mark.parametrize(
    "values",
    [[1e6, 1e-10, -1e6], [1e6, 0.1, -1e6, 3e-7], [-1e6, 0.5, 1e6 - 0.25, -0.25 + 1e-9]],
)
def test_heavy_cancellation_in_the_mean(values):
    """A float sum loses the small terms; the mean (and ratio_to_mean, volatility) must not."""
    rows = [(T0 - (10 - i) * HOUR, x, None) for i, x in enumerate(values)]
    for v in features(rows).values():
        assert v["value_mean"] != 0
        assert_not_null(v, ["ratio_to_mean", "volatility", "z_score"])


@pytest.mark.parametrize("values", [[-1.0, 1.0], [-2.0, 1.0, 1.0], [1e6, -0.5, -999999.5]])
def test_zero_mean(values):
    rows = [(T0 - (i + 1) * HOUR, x, None) for i, x in enumerate(values)]
    got = features(rows)
    for v in got.values():
        assert v["value_mean"] == 0.0
        assert_null(v, ["ratio_to_mean", "volatility"])
        assert_not_null(v, ["value_std"])
    assert got["v1"]["z_score"] is not None


def test_single_zero_value():
    got = features([(T0, 0.0, None)])
    for v in got.values():
        assert_null(v, ["ratio_to_mean", "volatility", "value_std", "z_score"])
    got = features([(T0, -0.0, None), (T0 - HOUR, 0.0, None)])
    for v in got.values():
        assert v["value_std"] == 0.0
        assert_null(v, ["ratio_to_mean", "volatility", "z_score"])


def test_negative_values():
    rows = [(T0 - 5 * HOUR, -5.0, 0), (T0 - 3 * HOUR, -3.0, 0), (T0 - HOUR, -10.0, 0)]
    for v in features(rows).values():
        assert v["value_min"] == -10.0 and v["value_max"] == -3.0
        assert v["value_median"] == -5.0
        assert v["value_q25"] == -7.5 and v["value_q75"] == -4.0
        assert v["volatility"] > 0  # std / |mean|
        assert v["ratio_to_mean"] == -10.0 / -6.0
        assert v["percentile_rank"] == 1 / 3


def test_last_event_without_category_is_not_filled():
    rows = [(T0 - 3 * HOUR, 1.0, 0), (T0 - 2 * HOUR, 2.0, 0), (T0 - HOUR, 3.0, None)]
    for v in features(rows).values():
        assert_null(v, ["category_encoded", "frequency", "interaction_hash"])
        assert v["entity_hash"] == id_hash("e")


def test_last_event_category_counts_over_all_events():
    rows = [
        (T0 - 40 * MS_PER_DAY, 1.0, 3),
        (T0 - 3 * HOUR, 2.0, None),
        (T0 - 2 * HOUR, 2.0, 1),
        (T0 - HOUR, 3.0, 3),
    ]
    for v in features(rows, entity_id="ß-éntité").values():
        assert v["category_encoded"] == 3
        assert v["frequency"] == 0.5  # both versions count all events <= T
        assert v["interaction_hash"] == id_hash("ß-éntité|ünï|cøde")


def test_all_events_older_than_30_days():
    rows = [
        (T0 - 45 * MS_PER_DAY, 2.0, 0),
        (T0 - 40 * MS_PER_DAY, 4.0, 1),
        (T0 - 31 * MS_PER_DAY, 9.0, 1),
    ]
    got = features(rows)
    windowed = sorted(V2_WINDOWED)
    window_only = ["trend_7d", "trend_30d", "momentum", "volatility"]
    assert_null(got["v2"], windowed + window_only)
    assert_not_null(got["v1"], [*windowed, "category_encoded", "frequency"])
    assert_null(got["v1"], window_only)
    for v in got.values():
        assert v["recency_days"] == 31.0
        assert v["frequency"] == 2 / 3


def test_events_after_t_are_ignored():
    before = [(T0 - 2 * HOUR, 1.0, 0), (T0 - HOUR, 2.0, 1)]
    after = [(T0 + 1, 1000.0, 2), (T0 + MS_PER_DAY, -5.0, None)]
    assert features(before + after) == features(before)
    assert features(after + before) == features(before)


def test_window_edges_left_open_right_closed():
    rows = [
        (T0 - MONTH_MS, 1000.0, 0),  # excluded from both windows
        (T0 - MONTH_MS + 1, 10.0, 0),  # in the 30-day window
        (T0 - WEEK_MS, 500.0, 0),  # excluded from the 7-day window
        (T0 - 3 * MS_PER_DAY, 1.0, 0),
        (T0, 2.0, 0),  # included
    ]
    got = features(rows)
    for v in got.values():
        assert v["trend_7d"] == pytest.approx(1 / 3, rel=1e-12)  # only the last two events
        assert v["recency_days"] == 0.0
    v2 = got["v2"]
    assert v2["value_max"] == 500.0 and v2["value_min"] == 1.0
    assert v2["value_mean"] == pytest.approx(513 / 4, rel=1e-15)
    assert got["v1"]["value_max"] == 1000.0


def test_event_exactly_at_t_is_included():
    rows = [(T0 - HOUR, 1.0, 0), (T0, 3.0, 2)]
    for v in features(rows).values():
        assert v["category_encoded"] == 2
        assert v["recency_days"] == 0.0
        assert v["value_max"] == 3.0
    for v in features(rows, as_of=T0 - 1).values():
        assert v["category_encoded"] == 0
        assert v["value_max"] == 1.0


@pytest.mark.parametrize("scale", [1e-200, 1e-300, 1e200])
def test_tiny_or_huge_unequal_values_have_a_finite_nonzero_std(scale):
    """std = 0 iff all values are equal: squares of 1e-200-sized deviations underflow (and of
    1e200-sized ones overflow) unless the engine scales them."""
    rows = [(T0 - 2 * HOUR, 1 * scale, None), (T0 - HOUR, 2 * scale, None)]
    got = features(rows)
    for v in got.values():
        assert v["value_std"] == pytest.approx(math.sqrt(0.5) * scale, rel=1e-12)
        assert v["volatility"] == pytest.approx(math.sqrt(2) / 3, rel=1e-12)
    assert got["v1"]["z_score"] == pytest.approx(math.sqrt(0.5), rel=1e-12)
    assert got["v2"]["z_score"] == pytest.approx(1 / 1.4826, rel=1e-12)


def test_values_one_ulp_apart():
    """The rounded mean is off by half the spread: std and z must still be right."""
    rows = [(T0 - 2 * HOUR, 1.0, None), (T0 - HOUR, math.nextafter(1.0, 2.0), None)]
    v1 = features(rows)["v1"]
    assert v1["value_std"] == pytest.approx(2.0**-52 / math.sqrt(2), rel=1e-12)
    assert v1["z_score"] == pytest.approx(1 / math.sqrt(2), rel=1e-12)


def test_large_values_with_small_spread():
    """Balances around a million with cent changes: z_score is not lost to the mean's rounding."""
    values = [1_000_000.0, 1_000_000.01, 999_999.99, 1_000_000.0, 1_000_000.02, 1_000_000.01]
    rows = [(T0 - (10 - i) * HOUR, x, 0) for i, x in enumerate(values)]
    features(rows)
    rows = [(T0 - 3 * HOUR, 32768.0, None), (T0 - 2 * HOUR, 32768.0, None)]
    features([*rows, (T0 - HOUR, 32768.00082370433, None)])


@pytest.mark.parametrize(
    ("values", "mad_is_zero"),
    [
        ([1.0, 2.0, 2.0], True),  # odd n, more than half equal the median
        ([1.0, 3.0, 3.0, 3.0, 9.0], True),
        ([1.0, 2.0, 3.0, 3.0, 5.0], False),  # odd n, fewer than half
        ([1.0, 2.0, 2.0, 3.0], False),  # even n, exactly half: MAD = 0.5
        ([2.0, 2.0, 5.0, 5.0], False),  # even n, half on each side, median between them
        ([1.0, 2.0, 2.0, 2.0], True),  # even n, more than half
        ([4.0, 4.0, 4.0, 1.0, 9.0, 4.0], True),
        ([0.1, 0.1, 0.7, 0.3], False),
    ],
)
def test_mad_edge_cases_for_robust_z(values, mad_is_zero):
    rows = [(T0 - (len(values) - i) * HOUR, x, None) for i, x in enumerate(values)]
    v2 = features(rows)["v2"]
    assert (v2["z_score"] is None) == mad_is_zero
    # the last value equal to the median gives z = 0 when the MAD is not zero
    if not mad_is_zero:
        assert v2["z_score"] != 0 or values[-1] == v2["value_median"]


def test_mad_half_equal_to_median_even_n_exact_value():
    rows = [(T0 - (4 - i) * HOUR, x, None) for i, x in enumerate([2.0, 1.0, 2.0, 3.0])]
    v2 = features(rows)["v2"]
    assert v2["z_score"] == pytest.approx(1.0 / (1.4826 * 0.5), rel=1e-12)


@pytest.mark.parametrize(
    ("when", "weekday", "hour", "weekend", "business"),
    [
        ("2024-01-01T09:00:00", 0, 9, 0, 1),  # Monday 09:00: business hours start
        ("2024-01-01T08:59:59.999", 0, 8, 0, 0),
        ("2024-01-05T16:59:59.999", 4, 16, 0, 1),  # Friday
        ("2024-01-05T17:00:00", 4, 17, 0, 0),
        ("2024-01-06T12:00:00", 5, 12, 1, 0),  # Saturday
        ("2024-01-07T23:59:59.999", 6, 23, 1, 0),  # Sunday
        ("1970-01-01T00:00:00", 3, 0, 0, 0),  # epoch: Thursday
    ],
)
def test_time_of_last_event(when, weekday, hour, weekend, business):
    ts = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000)
    for v in features([(ts, 1.0, None)], as_of=ts + 5 * MS_PER_DAY).values():
        assert (v["day_of_week"], v["hour_of_day"]) == (weekday, hour)
        assert (v["is_weekend"], v["is_business_hours"]) == (weekend, business)


def test_hashes_are_blake2b_little_endian_mod_2_pow_20():
    for entity_id in ["e", "user-1", "ß-éntité", "a|b", "x" * 256]:
        digest = __import__("hashlib").blake2b(entity_id.encode(), digest_size=8).digest()
        expected = int.from_bytes(digest, "little") % 2**20
        for v in features([(T0, 1.0, 3)], entity_id=entity_id).values():
            assert v["entity_hash"] == expected
            assert v["interaction_hash"] == id_hash(f"{entity_id}|ünï|cøde")


# --- bit-identity of single, batch and historical computation ---------------------------------


@st.composite
def populations(draw):
    """Several entities (some without events) and the query times to ask about."""
    n_entities = draw(st.integers(1, 6))
    as_of = draw(AS_OF)
    entities = {}
    for k in range(n_entities):
        rows = draw(
            st.lists(
                st.tuples(OFFSETS, VALUES, CATEGORIES), max_size=draw(st.sampled_from([0, 8, 40]))
            )
        )
        entities[f"ent-{k}"] = make_events([(as_of + off, v, c) for off, v, c in rows])
    extra_times = draw(st.lists(OFFSETS, min_size=1, max_size=3))
    times = [as_of] + [as_of + off for off in extra_times]
    seed = draw(st.integers(0, 2**32 - 1))
    return entities, times, seed


def _alone(entity_id: str, events: list[Event], as_of: int, version: str) -> np.ndarray:
    """Computed from a batch holding only this entity, built from packed records (the store's
    layout) rather than from columns."""
    sorted_batch = make_batch({entity_id: events})
    records = np.zeros(len(events), dtype=EVENT_DTYPE)
    records["ts"] = sorted_batch.ts
    records["seq"] = sorted_batch.seq
    records["value"] = sorted_batch.value
    records["category"] = sorted_batch.category
    batch = EventBatch.from_records([entity_id], [records.tobytes()])
    assert np.array_equal(batch.ts, sorted_batch.ts)
    return compute(batch, np.array([0]), as_of, version, CATEGORY_NAMES).values[0]


@settings(max_examples=120, deadline=None)
@given(population=populations())
def test_single_batch_and_historical_rows_are_bit_identical(population):
    entities, times, seed = population
    ids = list(entities)
    batch = make_batch(entities)
    queries = [(e, t) for e in range(len(ids)) for t in times]
    random.Random(seed).shuffle(queries)
    for version in VERSIONS:
        historical = compute(
            batch,
            np.array([e for e, _ in queries]),
            np.array([t for _, t in queries]),
            version,
            CATEGORY_NAMES,
        ).values
        by_query = {q: historical[i] for i, q in enumerate(queries)}
        for t in times:
            online = compute(batch, np.arange(len(ids))[::-1], t, version, CATEGORY_NAMES).values
            for e, eid in enumerate(ids):
                single = _alone(eid, entities[eid], t, version)
                batch_row = online[len(ids) - 1 - e]
                assert np.array_equal(single, batch_row, equal_nan=True), (version, eid, t)
                assert np.array_equal(single, by_query[(e, t)], equal_nan=True), (version, eid, t)
        # a repeated query gives the same row
        twice = compute(batch, np.array([0, 0]), times[0], version, CATEGORY_NAMES).values
        assert np.array_equal(twice[0], twice[1], equal_nan=True)


def test_rows_do_not_depend_on_neighbours_with_extreme_values():
    """An entity whose statistics need special handling (tiny or huge spread, heavy
    cancellation, constant values) leaves the other rows of its batch bit-identical."""
    rows = {
        "tiny": [(T0 - 2 * HOUR, 1e-200, 0), (T0 - HOUR, 2e-200, 0)],
        "huge": [(T0 - 2 * HOUR, 1e200, 1), (T0 - HOUR, -3e200, None)],
        "cancel": [(T0 - 3 * HOUR, 1e6, 0), (T0 - 2 * HOUR, 1e-10, 0), (T0 - HOUR, -1e6, 2)],
        "constant": [(T0 - 2 * HOUR, 0.1, 0), (T0 - HOUR, 0.1, 0)],
        "plain": [(T0 - (i + 1) * 5 * HOUR, float(i * i % 7), i % 3) for i in range(30)],
    }
    entities = {eid: make_events(r) for eid, r in rows.items()}
    batch = make_batch(entities)
    for version in VERSIONS:
        together = compute(batch, np.arange(len(rows)), T0, version, CATEGORY_NAMES).values
        for e, eid in enumerate(entities):
            single = _alone(eid, entities[eid], T0, version)
            assert np.array_equal(single, together[e], equal_nan=True), (version, eid)
            expected = reference_features(eid, entities[eid], T0, version, CATEGORY_NAMES)
            assert mismatches(single, expected) == [], (version, eid)


def test_bit_identity_when_timestamps_span_the_whole_range():
    """With 600 entities and timestamps from ~0 to ~2**53 the engine's combined search key
    would overflow int64, so it takes its other path: the rows must not change."""
    rng = np.random.default_rng(7)
    top = 2**53 - 1
    entities = {}
    for k in range(600):
        centre = int(rng.integers(MONTH_MS, top - MONTH_MS)) if k % 3 else (1 if k % 2 else top)
        offsets = rng.integers(-40 * MS_PER_DAY, 1, size=int(rng.integers(0, 6)))
        rows = [
            (min(max(centre + int(o), 0), top), float(rng.normal()), int(rng.integers(0, 4)))
            for o in offsets
        ]
        entities[f"ent-{k}"] = make_events(rows)
    batch = make_batch(entities)
    assert int(batch.ts.max()) - int(batch.ts.min()) > 2**52
    ids = list(entities)
    as_of = np.array([max([e.ts_ms for e in entities[i]], default=0) for i in ids])
    for version in VERSIONS:
        together = compute(batch, np.arange(len(ids)), as_of, version, CATEGORY_NAMES).values
        for e in range(0, len(ids), 7):
            single = _alone(ids[e], entities[ids[e]], int(as_of[e]), version)
            assert np.array_equal(single, together[e], equal_nan=True), ids[e]
            t_minus = int(as_of[e]) - WEEK_MS
            row = compute(batch, np.array([e]), t_minus, version, CATEGORY_NAMES).values[0]
            assert np.array_equal(
                _alone(ids[e], entities[ids[e]], t_minus, version), row, equal_nan=True
            )


def _random_population(rng: np.random.Generator, n_entities: int, max_events: int):
    entities = {}
    for k in range(n_entities):
        n = int(rng.integers(0, max_events + 1))
        ts = T0 - rng.integers(-2 * MS_PER_DAY, 60 * MS_PER_DAY, size=n) // HOUR * HOUR
        values = np.where(rng.random(n) < 0.3, 100.0, rng.normal(50, 1e3, size=n))
        cats = rng.integers(-1, len(CATEGORY_NAMES), size=n)
        rows = [
            (int(t), float(v), None if c < 0 else int(c))
            for t, v, c in zip(ts, values, cats, strict=True)
        ]
        entities[f"long-{k}"] = make_events(rows)
    return entities


def test_long_histories_match_reference_and_are_bit_identical():
    """Histories of up to 400 events (past NumPy's 8- and 128-element summation blocks)."""
    rng = np.random.default_rng(20240101)
    entities = _random_population(rng, 24, 400)
    ids = list(entities)
    times = [T0, T0 - 5 * MS_PER_DAY, T0 - 31 * MS_PER_DAY + 1]
    batch = make_batch(entities)
    queries = [(e, t) for e in range(len(ids)) for t in times]
    order = rng.permutation(len(queries))
    for version in VERSIONS:
        rows = compute(
            batch,
            np.array([queries[q][0] for q in order]),
            np.array([queries[q][1] for q in order]),
            version,
            CATEGORY_NAMES,
        ).values
        for position, q in enumerate(order):
            e, t = queries[q]
            single = _alone(ids[e], entities[ids[e]], t, version)
            assert np.array_equal(single, rows[position], equal_nan=True), (version, ids[e], t)
            expected = reference_features(ids[e], entities[ids[e]], t, version, CATEGORY_NAMES)
            assert mismatches(single, expected) == [], (version, ids[e], t)


# --- point in time ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    history=histories(max_events=30),
    later=st.lists(
        st.tuples(st.integers(1, 40 * MS_PER_DAY), VALUES, CATEGORIES), min_size=1, max_size=10
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_events_after_t_never_change_features(history, later, seed):
    as_of, events = history
    past = [e for e in events if e.ts_ms <= as_of]
    rows = [(e.ts_ms, e.value, e.category) for e in past]
    extra = [(as_of + dt, v, c) for dt, v, c in later]
    # interleave the later events anywhere in insertion order
    rng = random.Random(seed)
    mixed = list(rows)
    for row in extra:
        mixed.insert(rng.randint(0, len(mixed)), row)
    for version in VERSIONS:
        without = engine_row("e", make_events(rows), as_of, version)
        with_later = engine_row("e", make_events(mixed), as_of, version)
        assert np.array_equal(without, with_later, equal_nan=True), version
        # and in a batch whose other entity has only later events
        batch = make_batch({"e": make_events(mixed), "f": make_events(extra)})
        both = compute(batch, np.array([0, 1]), as_of, version, CATEGORY_NAMES)
        assert np.array_equal(both.values[0], without, equal_nan=True)
        assert not both.found[1]
