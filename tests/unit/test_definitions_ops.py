"""The definitions engine (DEFINITIONS.md, SPEC §14) against an independent reference.

- property tests: random schemas, random versions built from every op (random windows,
  `where` filters and parameters), random histories with edge cases, compared feature by
  feature with `reference_ops.py`;
- bit-identity of single, batch (several entities, shuffled queries) and historical rows;
- one worked example per op, with numbers checked by hand.

Comparison rules (`mismatches`): nulls must agree; integer features, selections of a value
(min, max, first, last, last_value) and means of equal values are exact; std, var, MAD, mean and
sum are 0 exactly when the reference is; everything else within relative and absolute 1e-9.
Decayed ops, quantile and iqr also allow the error their definition makes inherent
(`Expected.allowance`: irrational weights, NumPy's float interpolation). An expression
amplifies the 1e-9 allowed on its inputs; when it misses the reference, it must be what the
expression gives on the engine's own inputs, and those must agree with the reference within
relative 1e-9.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import reference_features
from definitions_text import render
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_ops import (
    WINDOW_UNIT_MS,
    Event,
    Expected,
    Plan,
    default_kind_and_type,
    duration_ms,
    evaluate_expression,
    expression_names,
    id_hash,
    plan_of,
    reference_vector,
)

from featurestore.definitions import load_definitions, parse_definitions
from featurestore.features.engine import compute
from featurestore.store.batch import EventBatch

HOUR = 3_600_000
DAY = 86_400_000
# 2024-01-01 00:00:00 UTC, a Monday.
BASE_MS = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1000)
T0 = BASE_MS + 10 * DAY + 12 * HOUR  # Thursday 2024-01-11 12:00 UTC

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
IDENTITY = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


# --- schemas, events and the engine ------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """An event schema: the field tables of a definitions file and each categorical field's
    label names (label i = names[i])."""

    fields: dict[str, dict]
    labels: dict[str, list[str]]

    def of_kind(self, kind: str) -> list[str]:
        return [n for n, spec in self.fields.items() if spec["kind"] == kind]

    @property
    def numeric(self) -> list[str]:
        return self.of_kind("numeric")

    @property
    def categorical(self) -> list[str]:
        return self.of_kind("categorical")


def make_batch(world: World, entities: dict[str, list[Event]]) -> EventBatch:
    """An EventBatch of several entities; each entity's events are fed in `seq` order, so the
    insertion order `from_columns` assigns keeps every entity's own sequence."""
    ids = list(entities)
    flat = sorted(
        ((e.seq, i, e) for i, eid in enumerate(ids) for e in entities[eid]),
        key=lambda row: (row[0], row[1]),
    )
    events = [e for _, _, e in flat]
    numeric = {
        name: [math.nan if e.get(name) is None else e.get(name) for e in events]
        for name in world.numeric
    }
    labels = {
        name: [-1 if e.get(name) is None else world.labels[name].index(e.get(name)) for e in events]
        for name in world.categorical
    }
    return EventBatch.from_columns(
        ids,
        ts=[e.ts_ms for e in events],
        entity_of_event=[i for _, i, _ in flat],
        numeric=numeric,
        labels=labels,
    )


def engine_rows(world, feature_set, entities, entity_index, as_of):
    batch = make_batch(world, entities)
    result = compute(batch, np.asarray(entity_index), as_of, feature_set, world.labels)
    assert result.values.dtype == np.float64
    assert result.values.shape == (len(entity_index), len(feature_set.names))
    return result


def engine_row(world, feature_set, entity_id, events, as_of) -> tuple[np.ndarray, bool]:
    result = engine_rows(world, feature_set, {entity_id: events}, [0], as_of)
    return result.values[0], bool(result.found[0])


# --- comparison ----------------------------------------------------------------------------------


def _null(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def mismatch(name: str, got: float, want: Expected, type_: str) -> str | None:
    """Why the engine's `got` is not the reference `want` (None when they agree)."""
    value = want.value
    if _null(value) or _null(got):
        agree, rule = _null(value) and _null(got), "null"
    elif type_ == "int" or want.exact:
        agree, rule = got == value and (type_ != "int" or got == int(got)), "exact"
    elif want.decided and (got == 0) != (value == 0):
        agree, rule = False, "zero is decided exactly"
    else:
        allowance = max(1e-9, want.allowance)
        agree, rule = math.isclose(got, value, rel_tol=1e-9, abs_tol=allowance), "1e-9"
    return None if agree else f"{name}: engine {got!r}, reference {value!r} ({rule})"


def _relatively_close(a, b) -> bool:
    if _null(a) or _null(b):
        return _null(a) and _null(b)
    return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))


def _expression_explained(feature, got, engine_values, reference) -> bool:
    """An ill-conditioned expression: its inputs agree with the reference within relative
    1e-9, and the engine's value is the expression of the engine's own inputs."""
    inputs = expression_names(feature["expr"])
    if not all(_relatively_close(engine_values[n], reference[n].value) for n in inputs):
        return False
    own = evaluate_expression(feature["expr"], engine_values)
    if _null(own) or _null(got):
        return _null(own) and _null(got)
    return math.isclose(got, own, rel_tol=1e-12, abs_tol=0.0)


def mismatches(plan: Plan, feature_set, row: np.ndarray, found: bool, reference) -> list[str]:
    """Every served feature on which the engine row differs from the reference vector
    (`reference` holds every feature, served or not; None = not found)."""
    assert list(feature_set.names) == plan.served
    if reference is None:
        problems = [] if not found else ["not found by the reference, found by the engine"]
        return problems + ([] if np.isnan(row).all() else ["not found, but not all null"])
    if not found:
        return ["found by the reference, not by the engine"]
    engine_values = {
        name: (None if math.isnan(v) else v)
        for name, v in zip(feature_set.names, row.tolist(), strict=True)
    }
    problems = []
    by_name = {f["name"]: f for f in plan.features}
    for served, got in zip(feature_set.features, row.tolist(), strict=True):
        feature = by_name[served.name]
        problem = mismatch(served.name, got, reference[served.name], served.type)
        if (
            problem
            and "expr" in feature
            and _expression_explained(feature, got, engine_values, reference)
        ):
            problem = None
        if problem:
            problems.append(problem)
    return problems


def test_comparison_detects_differences():
    assert mismatch("f", 1.0, Expected(1.0), "float") is None
    assert mismatch("f", 1.0 + 1e-8, Expected(1.0), "float")
    assert mismatch("f", 1e-10, Expected(0.0), "float") is None  # within absolute 1e-9
    assert mismatch("f", 1e-10, Expected(0.0, decided=True), "float")  # but 0 is decided
    assert mismatch("f", 0.0, Expected(1e-300, decided=True), "float")
    assert mismatch("f", math.nan, Expected(0.0), "float")
    assert mismatch("f", 0.0, Expected(None), "float")
    assert mismatch("f", math.nan, Expected(None), "float") is None
    assert mismatch("f", 3.0, Expected(4), "int")  # integers exactly
    assert mismatch("f", 0.1 + 2**-55, Expected(0.1, exact=True), "float")
    assert mismatch("f", 1.5, Expected(1.0, allowance=0.5), "float") is None
    assert mismatch("f", 1.5, Expected(1.0, allowance=0.1), "float")


# --- random schemas and versions -----------------------------------------------------------------

FIELD_NAMES = ["amount", "tip", "duration_s", "x", "score_2", "n" * 64, "merchant", "channel"]
LABEL_NAMES = ["food", "bar", "travel", "web", "ünï|cøde", 'say "hi"', "a b", "é" * 128, "0"]
DURATIONS = ["90m", "12h", "1d", "7d", "2w", "30d", "3600s", "45d", "1w"]
HALF_LIVES = ["1h", "12h", "1d", "7d", "30d", "90m", "3600s", "1w", "1s"]

NUMERIC_OPS = [
    "sum",
    "mean",
    "std",
    "var",
    "min",
    "max",
    "median",
    "quantile",
    "iqr",
    "mad",
    "slope",
    "percentile_rank",
    "zscore",
    "decayed_sum",
    "decayed_mean",
]
ANY_FIELD_OPS = ["first", "last", "distinct_count"]
AGGREGATION_OPS = ["count", *NUMERIC_OPS, *ANY_FIELD_OPS, "frequency"]
PLAIN_LAST_EVENT_OPS = ["day_of_week", "hour_of_day", "is_weekend"]

VALUES = st.one_of(
    st.integers(-5, 5).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False).filter(
        lambda v: v == 0 or abs(v) > 1e-30
    ),
    st.sampled_from([0.1, 0.2, -0.3, 0.5, -0.0, 1e6, -1e6, 123456.789, 1.0 + 2**-52]),
)
SCALES = st.sampled_from([1.0, 1.0, 1.0, 1.0, 1e-100, 1e100])


@st.composite
def worlds(draw) -> World:
    names = draw(st.lists(st.sampled_from(FIELD_NAMES), min_size=2, max_size=5, unique=True))
    n_categorical = draw(st.integers(1, min(2, len(names) - 1)))
    fields: dict[str, dict] = {}
    labels: dict[str, list[str]] = {}
    for k, name in enumerate(names):
        if k < n_categorical:
            fields[name] = {"kind": "categorical"}
            labels[name] = draw(
                st.lists(st.sampled_from(LABEL_NAMES), min_size=1, max_size=4, unique=True)
            )
        else:
            required = draw(st.sampled_from([True, False, None]))
            fields[name] = {"kind": "numeric"} | (
                {} if required is None else {"required": required}
            )
    order = draw(st.permutations(list(fields)))
    return World({n: fields[n] for n in order}, labels)


def _threshold(draw) -> float | int:
    value = draw(VALUES)
    if value.is_integer() and abs(value) < 2**53 and draw(st.booleans()):
        return int(value)
    return value


@st.composite
def conditions(draw, world: World, name: str):
    if world.fields[name]["kind"] == "categorical":
        some = st.sampled_from([*world.labels[name], "nope"])
        form = draw(st.sampled_from(["equal", "in", "not_in", "ne"]))
        if form == "equal":
            return draw(some)
        if form == "ne":
            return {"ne": draw(some)}
        return {form: draw(st.lists(some, min_size=1, max_size=3, unique=True))}
    if draw(st.booleans()):
        return _threshold(draw)
    ops = draw(
        st.lists(st.sampled_from(["gt", "ge", "lt", "le", "eq", "ne"]), min_size=1, max_size=2)
    )
    return {op: _threshold(draw) for op in ops}


@st.composite
def wheres(draw, world: World) -> dict:
    names = draw(st.lists(st.sampled_from(list(world.fields)), max_size=2, unique=True))
    return {name: draw(conditions(world, name)) for name in names}


@st.composite
def aggregations(draw, world: World, op: str | None = None) -> dict:
    op = op or draw(st.sampled_from(AGGREGATION_OPS))
    table: dict = {"op": op}
    if op == "count":
        field = draw(st.sampled_from([None, *world.fields]))
    elif op in NUMERIC_OPS:
        field = draw(st.sampled_from(world.numeric))
    elif op == "frequency":
        field = draw(st.sampled_from(world.categorical))
    else:
        field = draw(st.sampled_from(list(world.fields)))
    if field is not None:
        table["field"] = field
    if op == "quantile":
        table["q"] = draw(
            st.one_of(
                st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1 / 3]),
                st.floats(0, 1),
            )
        )
    if op.startswith("decayed_"):
        table["half_life"] = draw(st.sampled_from(HALF_LIVES))
    window = draw(st.sampled_from([None, "all", *DURATIONS, None, "30d", "all"]))
    if window is not None:
        table["window"] = window
    where = draw(st.one_of(st.just({}), st.just({}), wheres(world)))
    if where:
        table["where"] = where
    return table


LAST_EVENT_OPS = [
    "last_value",
    "last_label",
    "is_business_hours",
    "time_since_last",
    "time_since_first",
    *PLAIN_LAST_EVENT_OPS,
]


@st.composite
def last_event_attributes(draw, world: World, op: str | None = None) -> dict:
    op = op or draw(st.sampled_from(LAST_EVENT_OPS))
    table: dict = {"op": op}
    if op == "last_value":
        table["field"] = draw(st.sampled_from(world.numeric))
    elif op == "last_label":
        table["field"] = draw(st.sampled_from(world.categorical))
    elif op == "is_business_hours" and draw(st.booleans()):
        start = draw(st.integers(0, 23))
        table["hours"] = [start, draw(st.integers(start + 1, 24))]
    elif op.startswith("time_since_") and draw(st.booleans()):
        table["unit"] = draw(st.sampled_from(["ms", "s", "m", "h", "d"]))
    return table


@st.composite
def hashes(draw, world: World) -> dict:
    table: dict = {"op": "hash"}
    if draw(st.booleans()):
        table["field"] = draw(st.sampled_from(world.categorical))
    if draw(st.booleans()):
        table["buckets"] = draw(st.sampled_from([1, 7, 1000, 2**20, 2**32, 2**53]))
    return table


CONSTANTS = ["0", "1", "2", "3", "0.5", "1.4826", "100", "0.001"]


@st.composite
def expression_text(draw, names: list[str], depth: int = 0) -> str:
    if depth >= 2 or draw(st.integers(0, 2)) == 0:
        if draw(st.integers(0, 3)) == 0:
            return draw(st.sampled_from(CONSTANTS))
        return draw(st.sampled_from(names))
    form = draw(st.sampled_from(["+", "-", "*", "/", "/", "neg", "abs", "min", "max"]))
    inner = expression_text(names, depth + 1)
    if form == "neg":
        return f"-{draw(inner)}" if depth else f"-({draw(inner)})"
    if form == "abs":
        return f"abs({draw(inner)})"
    if form in ("min", "max"):
        args = draw(st.lists(inner, min_size=2, max_size=3))
        return f"{form}({', '.join(args)})"
    space = draw(st.sampled_from([" ", ""]))
    return f"({draw(inner)}{space}{form}{space}{draw(inner)})"


@st.composite
def versions(draw, world: World, max_features: int = 10) -> list[dict]:
    """Features of every kind. The ops are chosen by a seeded generator, so that every op
    comes up about equally often (hypothesis likes to repeat one choice across a case)."""
    n = draw(st.integers(1, max_features))
    choose = random.Random(draw(st.integers(0, 2**32 - 1))).choice
    features: list[dict] = []
    for i in range(n):
        kinds = [*AGGREGATION_OPS, *AGGREGATION_OPS, *LAST_EVENT_OPS, "hash", "hash"]
        kind = choose([*kinds, "expr", "expr", "expr", "expr"] if features else kinds)
        if kind in AGGREGATION_OPS:
            table = draw(aggregations(world, kind))
        elif kind in LAST_EVENT_OPS:
            table = draw(last_event_attributes(world, kind))
        elif kind == "hash":
            table = draw(hashes(world))
        else:
            table = {"expr": draw(expression_text([f["name"] for f in features]))}
        label = table.get("op", "expr")
        table = {"name": f"f{i}_{label}", **table}
        if i < n - 1 and draw(st.integers(0, 3)) == 0:
            table["serve"] = False
        features.append(table)
    return features


def _edges(features: list[dict]) -> list[int]:
    """Time offsets from T where something changes: window starts (T - w excluded, T - w + 1
    included) and half-lives."""
    widths = {WINDOW_UNIT_MS["d"] * 30}
    for f in features:
        for key in ("window", "half_life"):
            if f.get(key, "all") != "all":
                widths.add(duration_ms(f[key], WINDOW_UNIT_MS))
    return sorted({-w + k for w in widths for k in (-1, 0, 1)})


SIZES = (1, 2, 3, 5, 8, 1, 2, 20, 40, 0)


@st.composite
def value_pools(draw) -> tuple[list[float], bool]:
    """Values that recur in a history, and whether they are the only ones: a few values
    (constant runs), or values a few ulps or a tiny amount apart around a base
    (ill-conditioned statistics: std << |mean|)."""
    if draw(st.integers(0, 3)):
        return draw(st.lists(VALUES, min_size=1, max_size=3)), False
    base = draw(VALUES)
    ulp = math.ulp(base) if base else 0.0
    deltas = st.one_of(st.integers(-3, 3).map(lambda k: k * ulp), st.sampled_from([1e-3, 1e-9]))
    return sorted({base + d for d in draw(st.lists(deltas, min_size=1, max_size=4))}), True


AS_OF = st.builds(
    lambda d, h, m: BASE_MS + d * DAY + h * HOUR + m,
    st.integers(50, 60),
    st.integers(0, 23),
    st.sampled_from([0, 0, 1, 59_999]),
)


@st.composite
def histories(
    draw, world: World, features: list[dict], as_of: int, sizes: tuple[int, ...] = SIZES
) -> list[Event]:
    """One entity's events in insertion order: equal timestamps, window edges, T itself,
    events after T, recurring (constant) values, missing optional fields."""
    edges = _edges(features)
    offset = st.one_of(
        st.sampled_from([0, 0, -1, -1, 1, DAY]),
        st.sampled_from(edges),
        st.builds(
            lambda d, h: -d * DAY - h * HOUR,
            st.sampled_from([0, 1, 2, 6, 7, 8, 29, 30, 31, 45]),
            st.sampled_from([0, 0, 1, 5, 23]),
        ),
    )
    scale = draw(SCALES)
    pools = {name: draw(value_pools()) for name in world.numeric}
    n = draw(st.sampled_from(sizes))
    events: list[Event] = []
    for seq in range(n):
        if events and draw(st.integers(0, 4)) == 0:
            ts = draw(st.sampled_from([e.ts_ms for e in events]))  # an equal timestamp
        else:
            ts = as_of + draw(offset)
        fields: dict = {}
        for name, spec in world.fields.items():
            if spec["kind"] == "categorical":
                fields[name] = draw(st.one_of(st.none(), st.sampled_from(world.labels[name])))
            elif not spec.get("required", False) and draw(st.integers(0, 3)) == 0:
                fields[name] = None
            else:
                pool, only = pools[name]
                value = draw(
                    st.sampled_from(pool) if only else st.one_of(st.sampled_from(pool), VALUES)
                )
                fields[name] = value * scale
        events.append(Event(ts, seq, fields))
    return events


ENTITY_IDS = st.sampled_from(["user-1", "e", "ß-éntité", "a|b", "x" * 256])


@st.composite
def cases(draw):
    world = draw(worlds())
    features = draw(versions(world))
    as_of = draw(AS_OF)
    return world, features, draw(ENTITY_IDS), draw(histories(world, features, as_of)), as_of


def with_every_feature_served(features: list[dict]) -> list[dict]:
    return [{k: v for k, v in f.items() if k != "serve"} for f in features]


def definitions_of(world: World, features: list[dict]):
    """The definitions file with version `v` and its twin `every` (every feature served);
    the product's parse of it and the reference's plain-data reading."""
    text = render(world.fields, {"v": features, "every": with_every_feature_served(features)})
    return text, parse_definitions(text, source="random.toml"), tomllib.loads(text)


def check_case(world, features, entity_id, events, as_of):
    text, defs, document = definitions_of(world, features)
    rows = {}
    for version in ("every", "v"):
        plan = plan_of(document, version)
        fs = defs.versions[version]
        tables = [f for f in plan.features if f.get("serve", True)]
        assert len(fs.features) == len(tables)
        for served, table in zip(fs.features, tables, strict=True):
            assert served.name == table["name"]
            assert (served.kind, served.type) == default_kind_and_type(table, plan.kinds)
        reference = reference_vector(plan, entity_id, events, as_of, world.labels)
        row, found = engine_row(world, fs, entity_id, events, as_of)
        problems = mismatches(plan, fs, row, found, reference)
        assert not problems, (
            f"{text}\nversion {version}, entity {entity_id!r}, T = {as_of}, events:\n"
            + "\n".join(map(repr, events))
            + "\n"
            + "\n".join(problems)
        )
        rows[version] = dict(zip(fs.names, row.tolist(), strict=True))
    # serve = false changes nothing else: the served columns equal the twin's bit for bit
    for name, value in rows["v"].items():
        assert value == rows["every"][name] or (
            math.isnan(value) and math.isnan(rows["every"][name])
        )


@PROPERTY
@given(case=cases())
def test_random_versions_match_reference(case):
    check_case(*case)


@PROPERTY
@given(case=cases(), shift=st.sampled_from(["at", "before", "after"]))
def test_random_versions_at_window_edges_match_reference(case, shift):
    """T moved so that an event sits exactly on T, or a window starts exactly at an event."""
    world, features, entity_id, events, _ = case
    if not events:
        return
    pivot = events[len(events) // 2].ts_ms
    edge = random.Random(pivot).choice(_edges(features))
    as_of = {"at": pivot, "before": pivot - 1, "after": pivot - edge}[shift]
    check_case(world, features, entity_id, events, as_of)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_long_histories_match_reference(data):
    """Histories of 150-300 events, past NumPy's 8- and 128-element summation blocks."""
    world = data.draw(worlds())
    features = data.draw(versions(world, max_features=12))
    as_of = data.draw(AS_OF)
    events = data.draw(histories(world, features, as_of, sizes=(150, 300)))
    check_case(world, features, "long", events, as_of)


# --- bit-identity of single, batch and historical computation -----------------------------------


@st.composite
def populations(draw):
    world = draw(worlds())
    features = draw(versions(world))
    as_of = draw(AS_OF)
    entities = {
        f"ent-{k}": draw(histories(world, features, as_of)) for k in range(draw(st.integers(1, 5)))
    }
    times = [as_of, *(as_of + draw(st.sampled_from([-1, 1, -DAY, -7 * DAY])) for _ in range(2))]
    return world, features, entities, times, draw(st.integers(0, 2**32 - 1))


@IDENTITY
@given(population=populations())
def test_single_batch_and_historical_rows_are_bit_identical(population):
    world, features, entities, times, seed = population
    _, defs, _ = definitions_of(world, features)
    fs = defs.versions["v"]
    ids = list(entities)
    queries = [(e, t) for e in range(len(ids)) for t in times]
    random.Random(seed).shuffle(queries)
    historical = engine_rows(
        world, fs, entities, [e for e, _ in queries], np.array([t for _, t in queries])
    ).values
    by_query = {q: historical[i] for i, q in enumerate(queries)}
    for t in times:
        online = engine_rows(world, fs, entities, list(range(len(ids)))[::-1], t).values
        for e, eid in enumerate(ids):
            single, _ = engine_row(world, fs, eid, entities[eid], t)
            assert np.array_equal(single, online[len(ids) - 1 - e], equal_nan=True), (eid, t)
            assert np.array_equal(single, by_query[(e, t)], equal_nan=True), (eid, t)


# --- worked examples, one per op ------------------------------------------------------------------

WORLD = World(
    fields={
        "amount": {"kind": "numeric", "required": True},
        "tip": {"kind": "numeric"},
        "merchant": {"kind": "categorical"},
        "channel": {"kind": "categorical"},
    },
    labels={"merchant": ["food", "bar", "travel"], "channel": ["web", "app"]},
)

# (offset from T0, amount, tip, merchant, channel), in insertion order. T0 is Thursday 12:00.
ROWS = [
    (-10 * DAY, 100.0, None, "travel", "web"),  # outside 7 days
    (-3 * DAY, 10.0, 1.0, "food", "app"),
    (-2 * DAY, 20.0, None, "bar", None),
    (-1 * DAY, 30.0, 3.0, "food", "web"),
    (-1 * DAY, 40.0, 2.0, None, "web"),  # the same time as the one before, inserted later
    (-2 * HOUR, 50.0, 5.0, "food", "app"),  # the last event (Thursday 10:00)
]


def events_of(rows) -> list[Event]:
    names = ("amount", "tip", "merchant", "channel")
    return [
        Event(T0 + off, seq, dict(zip(names, values, strict=True)))
        for seq, (off, *values) in enumerate(rows)
    ]


def served(features: list[dict], rows=ROWS, as_of=T0, entity_id="e") -> dict:
    """The served vector of a version of `features` over `rows`, checked against the reference;
    values as Python numbers, int features as ints, null as None."""
    events = events_of(rows)
    text = render(WORLD.fields, {"t": features})
    fs = parse_definitions(text, source="worked.toml").versions["t"]
    plan = plan_of(tomllib.loads(text), "t")
    reference = reference_vector(plan, entity_id, events, as_of, WORLD.labels)
    row, found = engine_row(WORLD, fs, entity_id, events, as_of)
    problems = mismatches(plan, fs, row, found, reference)
    assert not problems, "\n".join(problems)
    out = {}
    for feature, value in zip(fs.features, row.tolist(), strict=True):
        out[feature.name] = None if math.isnan(value) else value
        if feature.type == "int" and out[feature.name] is not None:
            out[feature.name] = int(value)
    return out


def one(op: str, **keys) -> dict:
    return served([{"name": "f", "op": op, **keys}])["f"]


def test_count():
    got = served(
        [
            {"name": "all", "op": "count"},
            {"name": "week", "op": "count", "window": "7d"},
            {"name": "tips", "op": "count", "field": "tip"},
            {"name": "merchants_7d", "op": "count", "field": "merchant", "window": "7d"},
            {"name": "food", "op": "count", "where": {"merchant": "food"}},
            {"name": "none", "op": "count", "where": {"merchant": "nope"}},
            {"name": "old", "op": "count", "window": "1h"},
        ]
    )
    assert got == {
        "all": 6,
        "week": 5,
        "tips": 4,
        "merchants_7d": 4,
        "food": 3,
        "none": 0,
        "old": 0,
    }


def test_sum_and_mean():
    got = served(
        [
            {"name": "s7", "op": "sum", "field": "amount", "window": "7d"},
            {"name": "tips", "op": "sum", "field": "tip"},
            {"name": "empty", "op": "sum", "field": "amount", "window": "1h"},
            {"name": "m", "op": "mean", "field": "amount"},
            {"name": "m7", "op": "mean", "field": "amount", "window": "7d"},
            {"name": "mtip", "op": "mean", "field": "tip"},  # skips the events without a tip
            {"name": "mempty", "op": "mean", "field": "amount", "window": "1h"},
        ]
    )
    assert got["s7"] == 150.0
    assert got["tips"] == 11.0
    assert got["empty"] == 0.0
    assert got["m"] == pytest.approx(250 / 6, rel=1e-15)
    assert got["m7"] == 30.0
    assert got["mtip"] == 2.75
    assert got["mempty"] is None


def test_mean_of_equal_values_is_exactly_the_value():
    rows = [(-k * HOUR, 0.1, None, None, None) for k in (3, 2, 1)]
    got = served([{"name": "m", "op": "mean", "field": "amount"}], rows=rows)
    assert got["m"] == 0.1  # 0.1 + 0.1 + 0.1 = 0.30000000000000004, / 3 is not 0.1


def test_std_and_var():
    got = served(
        [
            {"name": "v", "op": "var", "field": "amount", "window": "7d"},
            {"name": "s", "op": "std", "field": "amount", "window": "7d"},
            {"name": "one", "op": "std", "field": "amount", "window": "3h"},  # n = 1
            {"name": "tip_var", "op": "var", "field": "tip"},
        ]
    )
    # 10..50: mean 30, squares 400 + 100 + 0 + 100 + 400 = 1000, / 4
    assert got["v"] == 250.0
    assert got["s"] == pytest.approx(math.sqrt(250), rel=1e-15)
    assert got["one"] is None
    # tips 1, 3, 2, 5: mean 2.75, squares 3.0625 + 0.0625 + 0.5625 + 5.0625 = 8.75, / 3
    assert got["tip_var"] == pytest.approx(8.75 / 3, rel=1e-15)
    constant = [(-k * HOUR, 7.25, None, None, None) for k in (3, 2, 1)]
    assert one_of(constant, "std") == 0.0
    assert one_of(constant, "var") == 0.0


def one_of(rows, op: str, **keys):
    return served([{"name": "f", "op": op, **keys, "field": keys.get("field", "amount")}], rows)[
        "f"
    ]


def test_min_max_median():
    got = served(
        [
            {"name": "lo7", "op": "min", "field": "amount", "window": "7d"},
            {"name": "hi", "op": "max", "field": "amount"},
            {"name": "hi7", "op": "max", "field": "amount", "window": "7d"},
            {"name": "med", "op": "median", "field": "amount"},
            {"name": "med7", "op": "median", "field": "amount", "window": "7d"},
            {"name": "empty", "op": "min", "field": "amount", "window": "1h"},
        ]
    )
    assert got == {"lo7": 10.0, "hi": 100.0, "hi7": 50.0, "med": 35.0, "med7": 30.0, "empty": None}


def test_quantile_and_iqr():
    got = served(
        [
            {"name": "q25_7d", "op": "quantile", "field": "amount", "q": 0.25, "window": "7d"},
            {"name": "q10", "op": "quantile", "field": "amount", "q": 0.1},
            {"name": "q0", "op": "quantile", "field": "amount", "q": 0.0},
            {"name": "q1", "op": "quantile", "field": "amount", "q": 1.0},
            {"name": "iqr7", "op": "iqr", "field": "amount", "window": "7d"},
        ]
    )
    # 7 days: 10 20 30 40 50, position 4 * 0.25 = 1 -> 20; all: 10 20 30 40 50 100,
    # position 5 * 0.1 = 0.5 -> 15
    assert got["q25_7d"] == 20.0
    assert got["q10"] == pytest.approx(15.0, rel=1e-15)
    assert (got["q0"], got["q1"]) == (10.0, 100.0)
    assert got["iqr7"] == 20.0  # 40 - 20


def test_mad():
    got = served([{"name": "mad7", "op": "mad", "field": "amount", "window": "7d"}])
    assert got["mad7"] == 10.0  # median 30; deviations 20 10 0 10 20 -> 10
    more_than_half = [
        (-k * HOUR, x, None, None, None)
        for k, x in zip((4, 3, 2, 1), (1.0, 2.0, 2.0, 2.0), strict=True)
    ]
    assert one_of(more_than_half, "mad") == 0.0
    exactly_half = [
        (-k * HOUR, x, None, None, None)
        for k, x in zip((4, 3, 2, 1), (1.0, 2.0, 2.0, 3.0), strict=True)
    ]
    assert one_of(exactly_half, "mad") == 0.5  # median 2; deviations 1 0 0 1 -> 0.5


def test_slope():
    rows = [
        (-3 * DAY, 1.0, None, None, None),
        (-2 * DAY, 3.0, None, None, None),
        (-1 * DAY, 5.0, None, None, None),
    ]
    assert one_of(rows, "slope") == pytest.approx(2.0, rel=1e-12)  # 2 per day
    assert one_of(rows, "slope", window="36h") is None  # one event
    same_time = [(-HOUR, x, None, None, None) for x in (1.0, 5.0, -2.0)]
    assert one_of(same_time, "slope") is None
    # 10 20 30 40 50 at -3, -2, -1, -1, -1/12 days
    t = [-3, -2, -1, -1, -1 / 12]
    x = [10, 20, 30, 40, 50]
    tm, xm = sum(t) / 5, sum(x) / 5
    slope = sum((a - tm) * (b - xm) for a, b in zip(t, x, strict=True)) / sum(
        (a - tm) ** 2 for a in t
    )
    assert one("slope", field="amount", window="7d") == pytest.approx(slope, rel=1e-12)


def test_first_and_last():
    got = served(
        [
            {"name": "first7", "op": "first", "field": "amount", "window": "7d"},
            {"name": "last7", "op": "last", "field": "amount", "window": "7d"},
            {"name": "first_merchant", "op": "first", "field": "merchant"},
            {
                "name": "last_merchant_web",
                "op": "last",
                "field": "merchant",
                "where": {"channel": "web"},
            },
            {"name": "last_tip_bar", "op": "last", "field": "tip", "where": {"merchant": "bar"}},
        ]
    )
    assert got["first7"] == 10.0
    assert got["last7"] == 50.0
    assert got["first_merchant"] == 2  # travel
    # web events: travel, food, (no merchant): the last that has a merchant is food
    assert got["last_merchant_web"] == 0
    assert got["last_tip_bar"] is None  # the bar event has no tip


def test_distinct_count():
    got = served(
        [
            {"name": "merchants", "op": "distinct_count", "field": "merchant"},
            {"name": "amounts", "op": "distinct_count", "field": "amount"},
            {"name": "tips_7d", "op": "distinct_count", "field": "tip", "window": "7d"},
            {"name": "empty", "op": "distinct_count", "field": "tip", "window": "1h"},
        ]
    )
    assert got == {"merchants": 3, "amounts": 6, "tips_7d": 4, "empty": 0}
    zeros = [(-k * HOUR, x, None, None, None) for k, x in ((3, 0.0), (2, -0.0), (1, 1.0))]
    assert one_of(zeros, "distinct_count") == 2  # 0.0 == -0.0


def test_frequency():
    got = served(
        [
            {"name": "all", "op": "frequency", "field": "merchant"},
            {"name": "week", "op": "frequency", "field": "merchant", "window": "7d"},
            {"name": "app", "op": "frequency", "field": "merchant", "where": {"channel": "app"}},
        ]
    )
    # the last event's merchant is food: 3 of 6 events; of the last 7 days 3 of 5 (the event
    # without a merchant counts in the denominator); of the app events 2 of 2
    assert got == {"all": 0.5, "week": 0.6, "app": 1.0}
    no_merchant_last = [*ROWS, (-HOUR, 1.0, None, None, "web")]
    assert served([{"name": "f", "op": "frequency", "field": "merchant"}], no_merchant_last) == {
        "f": None
    }


def test_percentile_rank():
    got = served(
        [
            {"name": "all", "op": "percentile_rank", "field": "amount"},
            {"name": "week", "op": "percentile_rank", "field": "amount", "window": "7d"},
            {"name": "tip", "op": "percentile_rank", "field": "tip"},
            {
                "name": "big",
                "op": "percentile_rank",
                "field": "amount",
                "where": {"amount": {"gt": 35}},
            },
        ]
    )
    # 50 against 10 20 30 40 50 100; against the 7 days; tip 5 against 1 3 2 5; 50 against
    # the amounts over 35: 40 50 100
    assert got == {"all": 5 / 6, "week": 1.0, "tip": 1.0, "big": 2 / 3}
    no_tip_last = [*ROWS, (-HOUR, 1.0, None, None, None)]
    assert served([{"name": "f", "op": "percentile_rank", "field": "tip"}], no_tip_last) == {
        "f": None
    }


def test_zscore():
    got = served(
        [
            {"name": "z7", "op": "zscore", "field": "amount", "window": "7d"},
            {"name": "one", "op": "zscore", "field": "amount", "window": "3h"},
        ]
    )
    assert got["z7"] == pytest.approx(20 / math.sqrt(250), rel=1e-12)  # (50 - 30) / std
    assert got["one"] is None  # n < 2
    constant = [(-k * HOUR, 7.0, None, None, None) for k in (3, 2, 1)]
    assert one_of(constant, "zscore") is None  # std 0


def test_decayed_sum_and_mean():
    got = served(
        [
            {
                "name": "s",
                "op": "decayed_sum",
                "field": "amount",
                "half_life": "1d",
                "window": "7d",
            },
            {
                "name": "m",
                "op": "decayed_mean",
                "field": "amount",
                "half_life": "1d",
                "window": "7d",
            },
            {
                "name": "e",
                "op": "decayed_sum",
                "field": "amount",
                "half_life": "1d",
                "window": "1h",
            },
            {
                "name": "n",
                "op": "decayed_mean",
                "field": "amount",
                "half_life": "24h",
                "window": "1h",
            },
        ]
    )
    # ages 3 d, 2 d, 1 d, 1 d and 2 h = 1/12 d
    weights = [2**-3, 2**-2, 2**-1, 2**-1, 2 ** (-1 / 12)]
    total = 10 * 2**-3 + 20 * 2**-2 + 30 * 2**-1 + 40 * 2**-1 + 50 * 2 ** (-1 / 12)
    assert got["s"] == pytest.approx(total, rel=1e-12)
    assert got["m"] == pytest.approx(total / sum(weights), rel=1e-12)
    assert got["e"] == 0.0
    assert got["n"] is None
    constant = [(-k * DAY, 0.1, None, None, None) for k in (3, 2, 1)]
    assert one_of(constant, "decayed_mean", half_life="1d") == 0.1


def test_last_event_attributes():
    got = served(
        [
            {"name": "amount", "op": "last_value", "field": "amount"},
            {"name": "tip", "op": "last_value", "field": "tip"},
            {"name": "merchant", "op": "last_label", "field": "merchant"},
            {"name": "channel", "op": "last_label", "field": "channel"},
            {"name": "dow", "op": "day_of_week"},
            {"name": "hour", "op": "hour_of_day"},
            {"name": "weekend", "op": "is_weekend"},
            {"name": "business", "op": "is_business_hours"},
            {"name": "late_start", "op": "is_business_hours", "hours": [11, 17]},
            {"name": "since_h", "op": "time_since_last", "unit": "h"},
            {"name": "since_d", "op": "time_since_last"},
            {"name": "since_ms", "op": "time_since_last", "unit": "ms"},
            {"name": "first_d", "op": "time_since_first", "unit": "d"},
            {"name": "first_m", "op": "time_since_first", "unit": "m"},
        ]
    )
    assert got == {
        "amount": 50.0,
        "tip": 5.0,
        "merchant": 0,
        "channel": 1,
        "dow": 3,
        "hour": 10,
        "weekend": 0,
        "business": 1,
        "late_start": 0,
        "since_h": 2.0,
        "since_d": pytest.approx(2 / 24, rel=1e-15),
        "since_ms": 7_200_000.0,
        "first_d": 10.0,
        "first_m": 14_400.0,
    }
    no_tip = [*ROWS, (-HOUR, 1.0, None, None, None)]
    got = served(
        [
            {"name": "tip", "op": "last_value", "field": "tip"},
            {"name": "merchant", "op": "last_label", "field": "merchant"},
        ],
        no_tip,
    )
    assert got == {"tip": None, "merchant": None}  # nothing filled from earlier events


@pytest.mark.parametrize(
    ("when", "weekday", "hour", "weekend", "business"),
    [
        ("2024-01-01T09:00:00", 0, 9, 0, 1),
        ("2024-01-01T08:59:59.999", 0, 8, 0, 0),
        ("2024-01-05T16:59:59.999", 4, 16, 0, 1),
        ("2024-01-05T17:00:00", 4, 17, 0, 0),
        ("2024-01-06T12:00:00", 5, 12, 1, 0),
        ("2024-01-07T23:59:59.999", 6, 23, 1, 0),
    ],
)
def test_calendar_of_the_last_event(when, weekday, hour, weekend, business):
    ts = int(datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp() * 1000)
    rows = [(ts - T0, 1.0, None, None, None)]
    got = served(
        [
            {"name": "dow", "op": "day_of_week"},
            {"name": "hour", "op": "hour_of_day"},
            {"name": "weekend", "op": "is_weekend"},
            {"name": "business", "op": "is_business_hours", "hours": [9, 17]},
            {"name": "all_day", "op": "is_business_hours", "hours": [0, 24]},
        ],
        rows,
        as_of=ts + 3 * DAY,
    )
    assert got == {
        "dow": weekday,
        "hour": hour,
        "weekend": weekend,
        "business": business,
        "all_day": 1 - weekend,
    }


def test_hashes():
    got = served(
        [
            {"name": "entity", "op": "hash"},
            {"name": "entity_1000", "op": "hash", "buckets": 1000},
            {"name": "pair", "op": "hash", "field": "merchant"},
            {"name": "pair_53", "op": "hash", "field": "channel", "buckets": 2**53},
        ],
        entity_id="ß-éntité",
    )
    digest = __import__("hashlib").blake2b("ß-éntité".encode(), digest_size=8).digest()
    assert got["entity"] == int.from_bytes(digest, "little") % 2**20
    assert got["entity_1000"] == id_hash("ß-éntité", 1000)
    assert got["pair"] == id_hash("ß-éntité|food", 2**20)
    assert got["pair_53"] == id_hash("ß-éntité|app", 2**53)
    no_merchant = [*ROWS, (-HOUR, 1.0, None, None, "web")]
    assert served([{"name": "pair", "op": "hash", "field": "merchant"}], no_merchant) == {
        "pair": None
    }


def test_where_forms():
    def count(where):
        return served([{"name": "n", "op": "count", "where": where}])["n"]

    assert count({"merchant": "food"}) == 3
    assert count({"merchant": {"in": ["food", "bar"]}}) == 4
    assert count({"merchant": {"not_in": ["food"]}}) == 2  # the event without one never matches
    assert count({"merchant": {"ne": "food"}}) == 2
    assert count({"channel": "web", "merchant": "food"}) == 1  # all conditions must hold
    assert count({"amount": 30.0}) == 1
    assert count({"amount": 30}) == 1
    assert count({"amount": {"gt": 20, "le": 50}}) == 3
    assert count({"amount": {"ge": 20, "lt": 50}}) == 3
    assert count({"amount": {"eq": 100}}) == 1
    assert count({"amount": {"ne": 100}}) == 5
    assert count({"tip": {"ne": 1}}) == 3  # 2 events lack a tip: they never match
    assert count({"tip": {"le": 1000}}) == 4


def test_expressions():
    got = served(
        [
            {"name": "last", "op": "last_value", "field": "amount", "serve": False},
            {"name": "mean7", "op": "mean", "field": "amount", "window": "7d"},
            {"name": "ratio", "expr": "last / mean7"},
            {"name": "neg", "expr": "-(last - mean7) * 2"},
            {"name": "mixed", "expr": "abs(mean7 - last) + min(last, mean7, 45) - max(1, 2.5)"},
            {"name": "nested", "expr": "(ratio + 1) / (neg - 1)"},
            {"name": "tip_mean", "op": "mean", "field": "tip", "window": "1h", "serve": False},
            {"name": "null_in", "expr": "tip_mean + 1"},
            {"name": "null_in_min", "expr": "min(1, tip_mean)"},
            {"name": "by_zero", "expr": "last / (mean7 - 30)"},
            {"name": "by_zero_absorbed", "expr": "min(1, 1 / (last - last))"},
            {"name": "by_zero_literal", "expr": "last / 0"},
            {"name": "huge", "expr": "last * 1e308"},
            {"name": "count", "op": "count"},
            {"name": "of_int", "expr": "count / 4"},
        ]
    )
    assert "last" not in got and "tip_mean" not in got
    assert got["ratio"] == 50 / 30
    assert got["neg"] == -40.0
    assert got["mixed"] == 20 + 30 - 2.5
    assert got["nested"] == pytest.approx((50 / 30 + 1) / -41, rel=1e-15)
    assert got["null_in"] is None
    assert got["null_in_min"] is None
    assert got["by_zero"] is None
    assert got["by_zero_absorbed"] is None
    assert got["by_zero_literal"] is None
    assert got["huge"] is None  # 5e309 is beyond float64
    assert got["of_int"] == 1.5


def test_serve_false_features_are_absent_but_computed():
    text = render(
        WORLD.fields,
        {
            "t": [
                {"name": "hidden", "op": "max", "field": "amount", "serve": False},
                {"name": "shown", "expr": "hidden * 2"},
                {"name": "also_shown", "op": "count", "serve": True},
            ]
        },
    )
    fs = parse_definitions(text, source="serve.toml").versions["t"]
    assert list(fs.names) == ["shown", "also_shown"]
    assert [f.name for f in fs.features] == ["shown", "also_shown"]
    assert served(
        [
            {"name": "hidden", "op": "max", "field": "amount", "serve": False},
            {"name": "shown", "expr": "hidden * 2"},
        ]
    ) == {"shown": 200.0}


def test_windows_in_every_unit_are_left_open_right_closed():
    rows = [
        (-2 * WINDOW_UNIT_MS["w"], 1.0, None, None, None),  # excluded by 2w: T - w is not in
        (-2 * WINDOW_UNIT_MS["w"] + 1, 2.0, None, None, None),
        (-DAY, 4.0, None, None, None),
        (-HOUR, 8.0, None, None, None),
        (-60_000, 16.0, None, None, None),
        (-1000, 32.0, None, None, None),
        (0, 64.0, None, None, None),  # at T: in every window
        (1, 128.0, None, None, None),  # after T: in none
    ]
    got = served(
        [
            {"name": "w", "op": "sum", "field": "amount", "window": "2w"},
            {"name": "d", "op": "sum", "field": "amount", "window": "1d"},
            {"name": "h", "op": "sum", "field": "amount", "window": "1h"},
            {"name": "m", "op": "sum", "field": "amount", "window": "1m"},
            {"name": "s", "op": "sum", "field": "amount", "window": "1s"},
            {"name": "s3601", "op": "sum", "field": "amount", "window": "3601s"},
            {"name": "all", "op": "sum", "field": "amount", "window": "all"},
            {"name": "default", "op": "sum", "field": "amount"},
        ],
        rows,
    )
    assert got == {
        "w": 126.0,
        "d": 120.0,  # the event at T - 1 d is not in
        "h": 112.0,
        "m": 96.0,
        "s": 64.0,
        "s3601": 120.0,
        "all": 127.0,
        "default": 127.0,
    }


def test_not_found_and_empty_queries():
    text = render(WORLD.fields, {"t": [{"name": "n", "op": "count"}]})
    fs = parse_definitions(text, source="empty.toml").versions["t"]
    result = engine_rows(
        WORLD, fs, {"a": [], "b": events_of(ROWS)}, [0, 1, 1], np.array([T0, T0, T0 - 11 * DAY])
    )
    assert result.found.tolist() == [False, True, False]
    assert np.isnan(result.values[[0, 2]]).all()
    assert result.values[1, 0] == 6.0
    empty = engine_rows(WORLD, fs, {"a": []}, np.array([], dtype=np.int64), T0)
    assert empty.values.shape == (0, 1)


# --- the shipped file: v1 and v2 of SPEC §4 -----------------------------------------------------

SHIPPED = Path(__file__).resolve().parents[2] / "featurestore" / "definitions" / "shipped.toml"
SHIPPED_WORLD = World(
    fields={"value": {"kind": "numeric", "required": True}, "category": {"kind": "categorical"}},
    labels={"category": ["web", "store", "app", "ünï|cøde"]},
)


def _as_v1_events(events: list[Event]) -> list[reference_features.Event]:
    names = SHIPPED_WORLD.labels["category"]
    return [
        reference_features.Event(
            e.ts_ms,
            e.seq,
            e.get("value"),
            None if e.get("category") is None else names.index(e.get("category")),
        )
        for e in events
    ]


@st.composite
def shipped_cases(draw):
    as_of = draw(AS_OF)
    events = draw(histories(SHIPPED_WORLD, [{"window": "7d"}, {"window": "30d"}], as_of))
    return draw(ENTITY_IDS), events, as_of


@PROPERTY
@given(case=shipped_cases())
def test_reference_reads_the_shipped_file_as_the_v1_v2_reference(case):
    """Two independent references agree: this one reading shipped.toml, and
    `reference_features.py` written from SPEC §4 (no engine involved)."""
    entity_id, events, as_of = case
    document = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    for version in ("v1", "v2"):
        plan = plan_of(document, version)
        assert plan.served == reference_features.FEATURE_NAMES
        mine = reference_vector(plan, entity_id, events, as_of, SHIPPED_WORLD.labels)
        theirs = reference_features.reference_features(
            entity_id, _as_v1_events(events), as_of, version, SHIPPED_WORLD.labels["category"]
        )
        if theirs is None:
            assert mine is None
            continue
        for name in plan.served:
            a, b = mine[name].value, theirs[name]
            assert (a is None) == (b is None), (version, name, a, b)
            if a is not None:  # the other one is NumPy's float formula where this is exact
                allowance = max(1e-9, mine[name].allowance)
                assert math.isclose(a, b, rel_tol=1e-9, abs_tol=allowance), (version, name, a, b)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=shipped_cases())
def test_engine_on_the_shipped_file_matches_reference(case):
    entity_id, events, as_of = case
    text = SHIPPED.read_text(encoding="utf-8")
    defs = load_definitions(SHIPPED)
    assert [(f.name, f.kind, f.required) for f in defs.schema.fields] == [
        ("value", "numeric", True),
        ("category", "categorical", False),
    ]
    assert list(defs.versions) == ["v1", "v2"]
    document = tomllib.loads(text)
    for version in ("v1", "v2"):
        plan = plan_of(document, version)
        fs = defs.versions[version]
        reference = reference_vector(plan, entity_id, events, as_of, SHIPPED_WORLD.labels)
        row, found = engine_row(SHIPPED_WORLD, fs, entity_id, events, as_of)
        problems = mismatches(plan, fs, row, found, reference)
        assert not problems, (version, events, as_of, problems)


# --- edge cases of the readings of DEFINITIONS.md ----------------------------------------------


def test_ops_of_the_last_event_use_the_entitys_last_event_even_when_filtered_out():
    """frequency, percentile_rank and zscore compare with the last event (the entity's final
    event <= T), whether or not it passes the feature's `where`."""
    got = served(
        [
            {"name": "freq", "op": "frequency", "field": "merchant", "where": {"channel": "web"}},
            {
                "name": "freq_bar",
                "op": "frequency",
                "field": "merchant",
                "where": {"merchant": "bar"},
            },
            {
                "name": "rank",
                "op": "percentile_rank",
                "field": "amount",
                "where": {"amount": {"lt": 35}},
            },
            {"name": "z", "op": "zscore", "field": "amount", "where": {"amount": {"lt": 35}}},
        ]
    )
    # web events: travel, food, (none): 1 of 3 has the last event's merchant (food)
    assert got["freq"] == pytest.approx(1 / 3, rel=1e-15)
    assert got["freq_bar"] == 0.0  # the one bar event is not food
    assert got["rank"] == 1.0  # 50 against 10 20 30
    assert got["z"] == pytest.approx((50 - 20) / 10, rel=1e-12)  # mean 20, std 10


def test_frequency_without_any_value_of_the_field_in_the_window_is_null():
    """X is empty (no matching event has a merchant) although the last event has one."""
    rows = [(-3 * HOUR, 1.0, None, None, "web"), (-HOUR, 2.0, None, "food", "app")]
    got = served(
        [{"name": "f", "op": "frequency", "field": "merchant", "where": {"channel": "web"}}], rows
    )
    assert got == {"f": None}


def test_decayed_mean_of_events_many_half_lives_old():
    """Every weight 2^(-age/h) underflows float64, their ratios do not."""
    rows = [(-10 * DAY, 1.0, None, None, None), (-10 * DAY + 1000, 3.0, None, None, None)]
    got = served(
        [
            {"name": "m", "op": "decayed_mean", "field": "amount", "half_life": "1s"},
            {"name": "s", "op": "decayed_sum", "field": "amount", "half_life": "1s"},
        ],
        rows,
    )
    assert got["m"] == pytest.approx((1 * 0.5 + 3 * 1) / 1.5, rel=1e-12)
    assert got["s"] == pytest.approx(0.0, abs=1e-300)


@pytest.mark.parametrize("scale", [1e-150, 1e150, 1e200])
def test_numeric_ops_at_tiny_and_huge_magnitudes(scale):
    rows = [
        (-k * HOUR, x * scale, x, None, None)
        for k, x in zip((4, 3, 2, 1), (1.0, 2.0, 2.0, 5.0), strict=True)
    ]
    ops = [op for op in NUMERIC_OPS if op not in ("quantile", "decayed_sum", "decayed_mean")]
    features = [{"name": op, "op": op, "field": "amount"} for op in ops]
    features += [
        {"name": "q", "op": "quantile", "field": "amount", "q": 0.3},
        {"name": "ds", "op": "decayed_sum", "field": "amount", "half_life": "2h"},
        {"name": "dm", "op": "decayed_mean", "field": "amount", "half_life": "2h"},
        {"name": "ratio", "expr": "std / mean"},
    ]
    got = served(features, rows)
    assert got["mean"] == pytest.approx(2.5 * scale, rel=1e-12)
    assert got["std"] == pytest.approx(math.sqrt(3) * scale, rel=1e-12)
    assert got["ratio"] == pytest.approx(math.sqrt(3) / 2.5, rel=1e-12)
    if scale == 1e200:
        assert got["var"] is None  # 3e400 is beyond float64
    else:
        assert got["var"] == pytest.approx(3 * scale**2, rel=1e-12)


def test_sums_beyond_float64_are_null_and_equal_huge_values_have_their_mean():
    rows = [(-2 * HOUR, 1e308, None, None, None), (-HOUR, 1e308, None, None, None)]
    got = served(
        [
            {"name": "s", "op": "sum", "field": "amount"},
            {"name": "m", "op": "mean", "field": "amount"},
            {"name": "dm", "op": "decayed_mean", "field": "amount", "half_life": "1h"},
        ],
        rows,
    )
    assert got == {"s": None, "m": 1e308, "dm": 1e308}


def test_zero_is_decided_exactly_under_cancellation():
    rows = [
        (-4 * HOUR, 1e6, None, None, None),
        (-3 * HOUR, 0.1, None, None, None),
        (-2 * HOUR, -1e6, None, None, None),
        (-HOUR, -0.1, None, None, None),
    ]
    got = served(
        [
            {"name": "s", "op": "sum", "field": "amount"},
            {"name": "m", "op": "mean", "field": "amount"},
            {"name": "last", "op": "last_value", "field": "amount"},
            {"name": "ratio", "expr": "last / m"},
            {"name": "ratio_sum", "expr": "last / s"},
        ],
        rows,
    )
    assert got == {"s": 0.0, "m": 0.0, "last": -0.1, "ratio": None, "ratio_sum": None}
    # 0.1 + 0.2 - 0.3 is not 0 in binary: nothing is null, and the ratio is huge
    rows = [(-k * HOUR, x, None, None, None) for k, x in ((3, 0.1), (2, 0.2), (1, -0.3))]
    got = served(
        [
            {"name": "m", "op": "mean", "field": "amount"},
            {"name": "last", "op": "last_value", "field": "amount"},
            {"name": "ratio", "expr": "last / m"},
        ],
        rows,
    )
    assert 0 < got["m"] < 1e-16
    assert got["ratio"] < -1e15


def test_quantile_positions_on_and_between_ranks():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]  # sorted 1 1 2 3 4 5 6 9
    rows = [(-(10 - i) * HOUR, x, None, None, None) for i, x in enumerate(values)]
    qs = {"a": 0.0, "b": 1 / 7, "c": 0.5, "d": 0.29, "e": 0.999, "f": 1.0}
    got = served(
        [{"name": k, "op": "quantile", "field": "amount", "q": q} for k, q in qs.items()], rows
    )
    assert got["a"] == 1.0
    assert got["b"] == pytest.approx(1.0, rel=1e-12)  # position 1
    assert got["c"] == 3.5  # between 3 and 4
    assert got["d"] == pytest.approx(2 + 0.03 * 1, rel=1e-12)  # position 2.03: 2 + 0.03 (3 - 2)
    assert got["e"] == pytest.approx(6 + 0.993 * 3, rel=1e-12)  # position 6.993
    assert got["f"] == 9.0
