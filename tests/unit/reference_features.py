"""An independent reference for the features of SPEC §4 (versions v1 and v2).

Deliberately naive: one entity at a time, a plain Python loop over a list of events, exact
arithmetic where the result must be correctly rounded, and no code (and no NumPy reduction)
shared with `featurestore.features`. It is the oracle of `test_features_reference.py`.

Exactness conventions:
- sums and means are exact (`fractions.Fraction`), rounded once to float; "mean = 0" is decided
  by `math.fsum` (SPEC: the exactly rounded sum is 0);
- std = 0 iff all values are equal; otherwise sqrt of the exact sample variance;
- MAD = median(|x - median|), its zero decided by counting exact zero deviations;
- quantiles follow NumPy's "linear" rule, written out on a sorted list;
- a trend is the exact least-squares slope (time in days; exact arithmetic makes centring exact).

A feature is `None` when null; the whole result is `None` when the entity is not found.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction

MS_PER_DAY = 86_400_000
WEEK_MS = 7 * MS_PER_DAY
MONTH_MS = 30 * MS_PER_DAY
ROBUST_Z_SCALE = 1.4826
HASH_MODULUS = 2**20
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STATISTICS = [
    "value_mean",
    "value_std",
    "value_min",
    "value_max",
    "value_median",
    "value_q25",
    "value_q75",
    "value_iqr",
]
TIME_AND_CATEGORY = [
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
]
LAST_VALUE = ["ratio_to_mean", "z_score", "percentile_rank"]
HASHES = ["entity_hash", "interaction_hash"]

# SPEC §4 table order (identical for both versions).
FEATURE_NAMES = [*STATISTICS, *TIME_AND_CATEGORY, *LAST_VALUE, *HASHES]
INT_FEATURES = frozenset(
    {
        "day_of_week",
        "hour_of_day",
        "is_weekend",
        "is_business_hours",
        "category_encoded",
        "entity_hash",
        "interaction_hash",
    }
)
# The features v2 computes over the 30-day window (SPEC §4, "Version v2").
V2_WINDOWED = frozenset([*STATISTICS, *LAST_VALUE])


@dataclass(frozen=True)
class Event:
    ts_ms: int
    seq: int
    value: float
    category: int | None  # global label, None = no category


# --- elementary statistics -------------------------------------------------------------------


def exact_sum(xs: list[float]) -> Fraction:
    total = Fraction(0)
    for x in xs:
        total += Fraction(x)
    return total


def mean(xs: list[float]) -> float:
    return float(exact_sum(xs) / len(xs))


def mean_is_zero(xs: list[float]) -> bool:
    return math.fsum(xs) == 0


def sqrt_fraction(v: Fraction) -> float:
    """sqrt of a non-negative rational, without underflow or overflow on the way."""
    if v == 0:
        return 0.0
    k = (v.numerator.bit_length() - v.denominator.bit_length()) // 2
    scaled = v / Fraction(4) ** k  # within [1/16, 16]
    return math.ldexp(math.sqrt(float(scaled)), k)


def sample_std(xs: list[float]) -> float | None:
    """Sample standard deviation (ddof=1): None for n < 2, exactly 0 iff all values are equal."""
    n = len(xs)
    if n < 2:
        return None
    if all(x == xs[0] for x in xs):
        return 0.0
    m = exact_sum(xs) / n
    squares = Fraction(0)
    for x in xs:
        squares += (Fraction(x) - m) ** 2
    return sqrt_fraction(squares / (n - 1))


def median_exact(values: list[Fraction]) -> Fraction:
    """The textbook median of exact numbers: middle element, or mean of the two middle ones."""
    s = sorted(values)
    n = len(s)
    if n % 2 == 1:
        return s[n // 2]
    return (s[n // 2 - 1] + s[n // 2]) / 2


def median(xs: list[float]) -> float:
    return float(median_exact([Fraction(x) for x in xs]))


def quantile_linear(xs: list[float], q: float) -> float:
    """NumPy's default ("linear") quantile, written out on a sorted list."""
    s = sorted(xs)
    n = len(s)
    position = (n - 1) * q
    low = math.floor(position)
    high = min(low + 1, n - 1)
    t = position - low
    a, b = s[low], s[high]
    diff = b - a
    if t >= 0.5:
        return b - diff * (1 - t)
    return a + diff * t


def mad(xs: list[float]) -> float:
    """median(|x - median(x)|); exactly 0 iff more than half of the values equal the median."""
    centre = Fraction(median(xs))
    deviations = [abs(Fraction(x) - centre) for x in xs]
    zeros = sum(1 for d in deviations if d == 0)
    if 2 * zeros > len(xs):
        return 0.0
    return float(median_exact(deviations))


def trend(events: list[Event]) -> float | None:
    """Exact least-squares slope of value against time in days; None if undefined."""
    n = len(events)
    if n < 2 or all(e.ts_ms == events[0].ts_ms for e in events):
        return None
    t = [Fraction(e.ts_ms, MS_PER_DAY) for e in events]
    x = [Fraction(e.value) for e in events]
    t_mean = sum(t, Fraction(0)) / n
    x_mean = sum(x, Fraction(0)) / n
    sxy = Fraction(0)
    sxx = Fraction(0)
    for ti, xi in zip(t, x, strict=True):
        sxy += (ti - t_mean) * (xi - x_mean)
        sxx += (ti - t_mean) ** 2
    return float(sxy / sxx)


def id_hash(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HASH_MODULUS


# --- one feature vector ----------------------------------------------------------------------


def _value_statistics(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return dict.fromkeys(STATISTICS)
    q25 = quantile_linear(xs, 0.25)
    q75 = quantile_linear(xs, 0.75)
    return {
        "value_mean": mean(xs),
        "value_std": sample_std(xs),
        "value_min": min(xs),
        "value_max": max(xs),
        "value_median": median(xs),
        "value_q25": q25,
        "value_q75": q75,
        "value_iqr": q75 - q25,
    }


def _last_value_features(xs: list[float], x_last: float, robust: bool) -> dict[str, float | None]:
    if not xs:
        return dict.fromkeys(LAST_VALUE)
    ratio = None if mean_is_zero(xs) else x_last / mean(xs)
    if robust:
        spread = mad(xs)
        centre = Fraction(median(xs))
        z = None if spread == 0 else float(Fraction(x_last) - centre) / (ROBUST_Z_SCALE * spread)
    else:
        std = sample_std(xs)
        centre = exact_sum(xs) / len(xs)
        z = None if not std else float(Fraction(x_last) - centre) / std
    if z is not None and not math.isfinite(z):
        z = None  # the quotient overflowed: a non-finite result is null, as everywhere
    rank = sum(1 for x in xs if x <= x_last) / len(xs)
    return {"ratio_to_mean": ratio, "z_score": z, "percentile_rank": rank}


def reference_features(
    entity_id: str,
    events: list[Event],
    as_of_ms: int,
    version: str,
    category_names: list[str],
) -> dict[str, float | int | None] | None:
    """The feature vector of one entity as of `as_of_ms`, or None when it is not found."""
    if version not in ("v1", "v2"):
        raise ValueError(version)
    history = sorted((e for e in events if e.ts_ms <= as_of_ms), key=lambda e: (e.ts_ms, e.seq))
    if not history:
        return None
    last = history[-1]
    week = [e for e in history if e.ts_ms > as_of_ms - WEEK_MS]
    month = [e for e in history if e.ts_ms > as_of_ms - MONTH_MS]
    all_values = [e.value for e in history]
    month_values = [e.value for e in month]
    stats_values = month_values if version == "v2" else all_values

    when = EPOCH + timedelta(milliseconds=last.ts_ms)
    weekday, hour = when.weekday(), when.hour
    trend_7d, trend_30d = trend(week), trend(month)
    volatility = None
    if len(month_values) >= 2 and not mean_is_zero(month_values):
        volatility = sample_std(month_values) / abs(mean(month_values))
    category = last.category
    frequency = None
    interaction = None
    if category is not None:
        frequency = sum(1 for e in history if e.category == category) / len(history)
        interaction = id_hash(f"{entity_id}|{category_names[category]}")

    out: dict[str, float | int | None] = {}
    out.update(_value_statistics(stats_values))
    out.update(
        {
            "day_of_week": weekday,
            "hour_of_day": hour,
            "is_weekend": 1 if weekday >= 5 else 0,
            "is_business_hours": 1 if weekday < 5 and 9 <= hour < 17 else 0,
            "trend_7d": trend_7d,
            "trend_30d": trend_30d,
            "momentum": None if trend_7d is None or trend_30d is None else trend_7d - trend_30d,
            "volatility": volatility,
            "category_encoded": category,
            "frequency": frequency,
            "recency_days": (as_of_ms - last.ts_ms) / MS_PER_DAY,
        }
    )
    out.update(_last_value_features(stats_values, last.value, robust=version == "v2"))
    out["entity_hash"] = id_hash(entity_id)
    out["interaction_hash"] = interaction
    return {name: out[name] for name in FEATURE_NAMES}
