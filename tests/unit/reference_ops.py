"""An independent reference for the feature definitions of DEFINITIONS.md (SPEC §14).

It reads a definitions file as plain data (the tables `tomllib` returns) and computes one
entity's features with a Python loop over that entity's events. Nothing is shared with
`featurestore`: not the loader, not the engine, not a constant. It is the oracle of
`test_definitions_ops.py`.

Exactness conventions (SPEC §4, "Numbers"):
- sums, means, variances, medians, quantiles, MADs and slopes are computed on exact rationals
  (`fractions.Fraction`) and rounded once to float, so degenerate cases fall out exactly:
  std = 0 iff all values are equal, MAD = 0 iff more than half equal the median, a mean of
  equal values is that value, a sum is 0 iff its exact value is;
- decayed weights 2^(-(T - t)/h) are irrational: they are computed in 50-digit decimal
  arithmetic, and the error any float64 engine must make (1e-12 of Σ|x·w|) is reported as an
  `allowance`; NumPy's linear interpolation is a float64 formula, a few ulps of the data off
  the exact interpolation: quantile and iqr allow 4 and 8 ulps of max |x|;
- the median a MAD is centred on, and the quantiles an iqr subtracts, are the (rounded)
  median and quantile values, as in SPEC §4 (value_iqr = value_q75 - value_q25) and in
  `reference_features.py`;
- a value beyond float64 is null.

An event is `Event(ts_ms, seq, fields)`: `fields` maps a declared field to a float (numeric),
a string (categorical) or None (missing); an absent key is missing too. The labels of a
categorical field are given as its list of names, label i = names[i].
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from fractions import Fraction

WINDOW_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
TIME_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_BUCKETS = 2**20
DEFAULT_HOURS = (9, 17)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DECIMAL_DIGITS = 50
EPS = 2.0**-52

NUMERIC = "numeric"
CATEGORICAL = "categorical"
IDENTIFIER = "identifier"
INT = "int"
FLOAT = "float"

Scalar = float | int | None


@dataclass(frozen=True)
class Event:
    ts_ms: int
    seq: int
    fields: Mapping[str, float | str | None] = field(default_factory=dict)

    def get(self, name: str) -> float | str | None:
        return self.fields.get(name)


@dataclass(frozen=True)
class Expected:
    """One feature's reference value and how strictly an engine must match it."""

    value: Scalar
    exact: bool = False  # ints, selections of a value, means of equal values: bit for bit
    decided: bool = False  # zero-ness decided exactly (std = 0 iff all equal, ...)
    allowance: float = 0.0  # an absolute error inherent to the definition (see above)


@dataclass(frozen=True)
class Plan:
    """What the reference needs of one version: its features (the TOML tables, in order)
    and the kind of every declared field."""

    features: list[dict]
    kinds: dict[str, str]

    @property
    def served(self) -> list[str]:
        return [f["name"] for f in self.features if f.get("serve", True)]


def plan_of(document: Mapping, version: str) -> Plan:
    """The reference's reading of version `version` of a parsed (`tomllib`) document."""
    kinds = {name: spec["kind"] for name, spec in document.get("fields", {}).items()}
    return Plan(list(document["versions"][version]["features"]), kinds)


def default_kind_and_type(feature: Mapping, kinds: Mapping[str, str]) -> tuple[str, str]:
    """The kind and type DEFINITIONS.md gives a feature that declares neither."""
    if "expr" in feature:
        kind, type_ = NUMERIC, FLOAT
    else:
        op = feature["op"]
        of_categorical = kinds.get(feature.get("field", "")) == CATEGORICAL
        if op in ("count", "distinct_count", *CALENDAR_OPS):
            kind, type_ = NUMERIC, INT
        elif op == "hash":
            kind, type_ = IDENTIFIER, INT
        elif op == "last_label" or (op in ("first", "last") and of_categorical):
            kind, type_ = CATEGORICAL, INT
        else:
            kind, type_ = NUMERIC, FLOAT
    return feature.get("kind", kind), feature.get("type", type_)


# --- exact elementary arithmetic ---------------------------------------------------------------


def to_float(x: Fraction | Decimal | int) -> float | None:
    """Correctly rounded; None beyond float64."""
    try:
        value = float(x)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def sqrt_fraction(v: Fraction) -> float | None:
    """sqrt of a non-negative rational, without underflow or overflow on the way."""
    if v == 0:
        return 0.0
    k = (v.numerator.bit_length() - v.denominator.bit_length()) // 2
    scaled = v / Fraction(4) ** k  # within [1/16, 16]
    try:
        return math.ldexp(math.sqrt(float(scaled)), k)
    except OverflowError:
        return None


def exact_sum(xs: Sequence[float]) -> Fraction:
    total = Fraction(0)
    for x in xs:
        total += Fraction(x)
    return total


def exact_mean(xs: Sequence[float]) -> Fraction:
    return exact_sum(xs) / len(xs)


def exact_variance(xs: Sequence[float]) -> Fraction:
    """Sample variance (ddof 1) of n >= 2 values."""
    m = exact_mean(xs)
    squares = Fraction(0)
    for x in xs:
        squares += (Fraction(x) - m) ** 2
    return squares / (len(xs) - 1)


def exact_median(values: Sequence[Fraction]) -> Fraction:
    s = sorted(values)
    n = len(s)
    if n % 2 == 1:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def exact_quantile(xs: Sequence[float], q: float) -> Fraction:
    """NumPy's "linear" quantile in exact arithmetic: position (n - 1) q on the sorted values,
    interpolated linearly between its neighbours."""
    s = sorted(Fraction(x) for x in xs)
    position = (len(s) - 1) * Fraction(q)
    low = math.floor(position)
    high = min(low + 1, len(s) - 1)
    return s[low] + (s[high] - s[low]) * (position - low)


def exact_mad(xs: Sequence[float]) -> Fraction:
    """median |x - m| exactly, m the median rounded to float64 (the median's value)."""
    centre = Fraction(float(exact_median([Fraction(x) for x in xs])))
    return exact_median([abs(Fraction(x) - centre) for x in xs])


def exact_slope(points: Sequence[tuple[int, float]]) -> Fraction | None:
    """Least-squares slope of x against time in days; None if n < 2 or all at one time."""
    if len(points) < 2 or all(t == points[0][0] for t, _ in points):
        return None
    days = [Fraction(t, WINDOW_UNIT_MS["d"]) for t, _ in points]
    xs = [Fraction(x) for _, x in points]
    t_mean = sum(days, Fraction(0)) / len(days)
    x_mean = sum(xs, Fraction(0)) / len(xs)
    sxy = sum(((t - t_mean) * (x - x_mean) for t, x in zip(days, xs, strict=True)), Fraction(0))
    sxx = sum(((t - t_mean) ** 2 for t in days), Fraction(0))
    return sxy / sxx


def decay_weights(ages_ms: Sequence[int], half_life_ms: int) -> list[Decimal]:
    """2^(-age/h) to 50 significant digits."""
    with localcontext() as ctx:
        ctx.prec = DECIMAL_DIGITS
        ctx.Emin = -(10**9)
        ctx.Emax = 10**9
        return [Decimal(2) ** (-Decimal(age) / Decimal(half_life_ms)) for age in ages_ms]


def id_hash(text: str, buckets: int) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % buckets


def duration_ms(text: str, units: Mapping[str, int]) -> int:
    match = re.fullmatch(r"([0-9]+)([a-z]+)", text)
    if match is None or match.group(2) not in units:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * units[match.group(2)]


# --- events of a feature -----------------------------------------------------------------------


def in_window(history: Sequence[Event], as_of_ms: int, window: str) -> list[Event]:
    """The events with T - w < ts <= T (`history` holds only events <= T already)."""
    if window == "all":
        return list(history)
    width = duration_ms(window, WINDOW_UNIT_MS)
    return [e for e in history if as_of_ms - width < e.ts_ms]


def condition_holds(value: float | str, condition: object, kind: str) -> bool:
    if not isinstance(condition, dict):  # the short form: equal
        return value == condition
    checks: dict[str, Callable[[object, object], bool]] = {
        "in": lambda v, arg: v in arg,
        "not_in": lambda v, arg: v not in arg,
        "ne": lambda v, arg: v != arg,
    }
    if kind == NUMERIC:
        checks = {
            "gt": lambda v, arg: v > arg,
            "ge": lambda v, arg: v >= arg,
            "lt": lambda v, arg: v < arg,
            "le": lambda v, arg: v <= arg,
            "eq": lambda v, arg: v == arg,
            "ne": lambda v, arg: v != arg,
        }
    return all(checks[op](value, arg) for op, arg in condition.items())


def matches(event: Event, where: Mapping[str, object], kinds: Mapping[str, str]) -> bool:
    """All conditions hold; an event that lacks a field never matches a condition on it."""
    for name, condition in where.items():
        value = event.get(name)
        if value is None or not condition_holds(value, condition, kinds[name]):
            return False
    return True


@dataclass(frozen=True)
class Scope:
    """What an aggregation sees: the window's matching events, X (the values of those that
    have the field), the entity's last event and T."""

    feature: Mapping
    kinds: Mapping[str, str]
    labels: Mapping[str, list[str]]
    matching: list[Event]
    having: list[Event]  # the matching events that have the field (all of them without one)
    last: Event
    as_of: int

    @property
    def field(self) -> str | None:
        return self.feature.get("field")

    @property
    def values(self) -> list:
        return [e.get(self.field) for e in self.having]

    @property
    def mine(self) -> float | str | None:
        """The last event's value of the field."""
        return self.last.get(self.field)

    def label_or_value(self, value) -> Scalar:
        return label_or_value(value, self.field, self.kinds, self.labels)


def label_or_value(value, name: str, kinds: Mapping[str, str], labels) -> Scalar:
    if value is None:
        return None
    return labels[name].index(value) if kinds[name] == CATEGORICAL else value


def scope_of(feature: Mapping, kinds, labels, history: list[Event], as_of: int) -> Scope:
    window = in_window(history, as_of, feature.get("window", "all"))
    matching = [e for e in window if matches(e, feature.get("where", {}), kinds)]
    name = feature.get("field")
    having = matching if name is None else [e for e in matching if e.get(name) is not None]
    return Scope(feature, kinds, labels, matching, having, history[-1], as_of)


# --- the aggregations --------------------------------------------------------------------------


def _all_equal(xs: Sequence) -> bool:
    return all(x == xs[0] for x in xs)


def op_count(sel: Scope) -> Expected:
    return Expected(len(sel.having), exact=True)


def op_sum(sel: Scope) -> Expected:
    return Expected(to_float(exact_sum(sel.values)), decided=True)


def op_mean(sel: Scope) -> Expected:
    xs = sel.values
    if not xs:
        return Expected(None)
    if _all_equal(xs):
        return Expected(xs[0], exact=True)
    return Expected(to_float(exact_mean(xs)), decided=True)


def op_var(sel: Scope) -> Expected:
    xs = sel.values
    if len(xs) < 2:
        return Expected(None)
    return Expected(to_float(exact_variance(xs)), decided=True)


def op_std(sel: Scope) -> Expected:
    xs = sel.values
    if len(xs) < 2:
        return Expected(None)
    return Expected(sqrt_fraction(exact_variance(xs)), decided=True)


def op_min(sel: Scope) -> Expected:
    return Expected(min(sel.values) if sel.values else None, exact=True)


def op_max(sel: Scope) -> Expected:
    return Expected(max(sel.values) if sel.values else None, exact=True)


def op_median(sel: Scope) -> Expected:
    xs = sel.values
    return Expected(to_float(exact_median([Fraction(x) for x in xs])) if xs else None)


def _ulps(xs: Sequence[float], k: int) -> float:
    return k * math.ulp(max(abs(x) for x in xs))


def op_quantile(sel: Scope) -> Expected:
    xs = sel.values
    if not xs:
        return Expected(None)
    return Expected(to_float(exact_quantile(xs, sel.feature["q"])), allowance=_ulps(xs, 4))


def op_iqr(sel: Scope) -> Expected:
    xs = sel.values
    if not xs:
        return Expected(None)
    high, low = to_float(exact_quantile(xs, 0.75)), to_float(exact_quantile(xs, 0.25))
    return Expected(high - low, allowance=_ulps(xs, 8))


def op_mad(sel: Scope) -> Expected:
    xs = sel.values
    return Expected(to_float(exact_mad(xs)), decided=True) if xs else Expected(None)


def op_slope(sel: Scope) -> Expected:
    slope = exact_slope([(e.ts_ms, e.get(sel.field)) for e in sel.having])
    return Expected(None if slope is None else to_float(slope))


def op_first(sel: Scope) -> Expected:
    first = sel.values[0] if sel.values else None
    return Expected(sel.label_or_value(first), exact=True)


def op_last(sel: Scope) -> Expected:
    final = sel.values[-1] if sel.values else None
    return Expected(sel.label_or_value(final), exact=True)


def op_distinct_count(sel: Scope) -> Expected:
    return Expected(len(set(sel.values)), exact=True)  # 0.0 == -0.0: one value


def op_frequency(sel: Scope) -> Expected:
    mine = sel.mine
    if mine is None or not sel.having:
        return Expected(None)
    same = sum(1 for e in sel.matching if e.get(sel.field) == mine)
    return Expected(to_float(Fraction(same, len(sel.matching))))


def op_percentile_rank(sel: Scope) -> Expected:
    mine = sel.mine
    xs = sel.values
    if mine is None or not xs:
        return Expected(None)
    return Expected(to_float(Fraction(sum(1 for x in xs if x <= mine), len(xs))))


def op_zscore(sel: Scope) -> Expected:
    mine = sel.mine
    xs = sel.values
    if mine is None or len(xs) < 2 or _all_equal(xs):
        return Expected(None)
    deviation = Fraction(mine) - exact_mean(xs)
    size = sqrt_fraction(deviation**2 / exact_variance(xs))
    return Expected(None if size is None else math.copysign(size, deviation))


def _decayed(sel: Scope) -> tuple[list[Decimal], list[Decimal]]:
    half_life = duration_ms(sel.feature["half_life"], WINDOW_UNIT_MS)
    weights = decay_weights([sel.as_of - e.ts_ms for e in sel.having], half_life)
    return weights, [Decimal(x) for x in sel.values]


def op_decayed_sum(sel: Scope) -> Expected:
    weights, xs = _decayed(sel)
    with localcontext() as ctx:
        ctx.prec, ctx.Emin, ctx.Emax = DECIMAL_DIGITS, -(10**9), 10**9
        total = sum((x * w for x, w in zip(xs, weights, strict=True)), Decimal(0))
        scale = sum((abs(x) * w for x, w in zip(xs, weights, strict=True)), Decimal(0))
    return Expected(to_float(total), allowance=1e-12 * (to_float(scale) or 0.0))


def op_decayed_mean(sel: Scope) -> Expected:
    if not sel.having:
        return Expected(None)
    if _all_equal(sel.values):
        return Expected(sel.values[0], exact=True)
    weights, xs = _decayed(sel)
    with localcontext() as ctx:
        ctx.prec, ctx.Emin, ctx.Emax = DECIMAL_DIGITS, -(10**9), 10**9
        mass = sum(weights, Decimal(0))
        total = sum((x * w for x, w in zip(xs, weights, strict=True)), Decimal(0))
        scale = sum((abs(x) * w for x, w in zip(xs, weights, strict=True)), Decimal(0))
        allowance = 1e-12 * (to_float(scale / mass) or 0.0)
        return Expected(to_float(total / mass), allowance=allowance)


AGGREGATIONS: dict[str, Callable[..., Expected]] = {
    "count": op_count,
    "sum": op_sum,
    "mean": op_mean,
    "std": op_std,
    "var": op_var,
    "min": op_min,
    "max": op_max,
    "median": op_median,
    "quantile": op_quantile,
    "iqr": op_iqr,
    "mad": op_mad,
    "slope": op_slope,
    "first": op_first,
    "last": op_last,
    "distinct_count": op_distinct_count,
    "frequency": op_frequency,
    "percentile_rank": op_percentile_rank,
    "zscore": op_zscore,
    "decayed_sum": op_decayed_sum,
    "decayed_mean": op_decayed_mean,
}


# --- the last event, hashes ------------------------------------------------------------------

CALENDAR_OPS = ("day_of_week", "hour_of_day", "is_weekend", "is_business_hours")


def last_event_attribute(feature, kinds, history: list[Event], as_of: int, labels) -> Expected:
    op = feature["op"]
    last = history[-1]
    if op == "last_value":
        return Expected(last.get(feature["field"]), exact=True)
    if op == "last_label":
        value = label_or_value(last.get(feature["field"]), feature["field"], kinds, labels)
        return Expected(value, exact=True)
    if op in ("time_since_last", "time_since_first"):
        moment = last.ts_ms if op == "time_since_last" else history[0].ts_ms
        unit = TIME_UNIT_MS[feature.get("unit", "d")]
        return Expected(to_float(Fraction(as_of - moment, unit)))
    when = EPOCH + timedelta(milliseconds=last.ts_ms)
    weekday, hour = when.weekday(), when.hour
    start, end = feature.get("hours", DEFAULT_HOURS)
    value = {
        "day_of_week": weekday,
        "hour_of_day": hour,
        "is_weekend": int(weekday >= 5),
        "is_business_hours": int(weekday < 5 and start <= hour < end),
    }[op]
    return Expected(value, exact=True)


LAST_EVENT_OPS = ("last_value", "last_label", *CALENDAR_OPS, "time_since_last", "time_since_first")


def hash_feature(feature, entity_id: str, last: Event) -> Expected:
    buckets = feature.get("buckets", DEFAULT_BUCKETS)
    name = feature.get("field")
    if name is None:
        return Expected(id_hash(entity_id, buckets), exact=True)
    value = last.get(name)
    return Expected(None if value is None else id_hash(f"{entity_id}|{value}", buckets), exact=True)


# --- expressions -------------------------------------------------------------------------------


class _Null(Exception):
    """An input is null or a division is by zero: the expression is null."""


def _evaluate(node: ast.AST, values: Mapping[str, Scalar]) -> float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value)
    if isinstance(node, ast.Name):
        if values[node.id] is None:
            raise _Null
        return float(values[node.id])
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, values)
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Div):
            if right == 0:
                raise _Null
            return left / right
        arithmetic = {ast.Add: float.__add__, ast.Sub: float.__sub__, ast.Mult: float.__mul__}
        return arithmetic[type(node.op)](left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _call(node.func.id, [_evaluate(a, values) for a in node.args])
    raise ValueError(f"not a whitelisted expression: {ast.dump(node)}")


def _call(function: str, args: list[float]) -> float:
    if function == "abs":
        (x,) = args
        return abs(x)
    choose = {"min": min, "max": max}[function]
    return math.nan if any(math.isnan(a) for a in args) else choose(args)


def evaluate_expression(text: str, values: Mapping[str, Scalar]) -> float | None:
    """The expression over float64 inputs; null when an input is null, a division is by zero
    or the result is not finite."""
    try:
        result = _evaluate(ast.parse(text.strip(), mode="eval").body, values)
    except _Null:
        return None
    return result if math.isfinite(result) else None


def expression_names(text: str) -> set[str]:
    tree = ast.parse(text.strip(), mode="eval")
    calls = {n.func for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n not in calls}


# --- one entity's vector -------------------------------------------------------------------------


def reference_vector(
    plan: Plan,
    entity_id: str,
    events: Sequence[Event],
    as_of_ms: int,
    labels: Mapping[str, list[str]],
) -> dict[str, Expected] | None:
    """Every feature of the version (served or not) as of `as_of_ms`, in order; None when the
    entity is not found (no event at or before T)."""
    history = sorted((e for e in events if e.ts_ms <= as_of_ms), key=lambda e: (e.ts_ms, e.seq))
    if not history:
        return None
    entity = Entity(entity_id, history, as_of_ms, labels)
    out: dict[str, Expected] = {}
    for feature in plan.features:
        out[feature["name"]] = compute_feature(feature, plan.kinds, entity, out)
    return out


@dataclass(frozen=True)
class Entity:
    """One entity as of T: its events with ts <= T in (ts, seq) order (at least one)."""

    entity_id: str
    history: list[Event]
    as_of: int
    labels: Mapping[str, list[str]]


def compute_feature(feature, kinds, entity: Entity, earlier: Mapping[str, Expected]) -> Expected:
    if "expr" in feature:
        inputs = {name: expected.value for name, expected in earlier.items()}
        return Expected(evaluate_expression(feature["expr"], inputs))
    op = feature["op"]
    if op == "hash":
        return hash_feature(feature, entity.entity_id, entity.history[-1])
    if op in LAST_EVENT_OPS:
        return last_event_attribute(feature, kinds, entity.history, entity.as_of, entity.labels)
    scope = scope_of(feature, kinds, entity.labels, entity.history, entity.as_of)
    return AGGREGATIONS[op](scope)
