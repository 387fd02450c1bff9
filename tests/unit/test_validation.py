"""Event validation (SPEC §3, §5 fine print): every accepted form, every rejection with its
exact {"index", "field", "reason"}, the error cap, the request-level errors, and a property:
arbitrary JSON-like input never raises anything but ServiceError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.errors import MAX_REPORTED_ERRORS, Code, ServiceError
from featurestore.store.columns import EventColumns
from featurestore.timestamps import MAX_TIMESTAMP_MS, now_ms, parse_timestamp
from featurestore.validation.events import validate_events

MAX_EVENTS = 10_000
FUTURE_MS = 300_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"entity_id": "user_1", "timestamp": T0, "value": 1.5}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not _ABSENT}


_ABSENT = object()


def validate(events: Any, max_events: int = MAX_EVENTS, future_ms: int = FUTURE_MS):
    return validate_events(events, max_events=max_events, max_future_ms=future_ms)


def rejection(events: Any, **kwargs: Any) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        validate(events, **kwargs)
    return caught.value


def errors_of(events: Any, **kwargs: Any) -> list[dict[str, Any]]:
    error = rejection(events, **kwargs)
    assert error.code is Code.INVALID_REQUEST
    assert error.http_status == 400
    return error.extra["errors"]


def one_error(index: int, field: str, reason: str) -> list[dict[str, Any]]:
    return [{"index": index, "field": field, "reason": reason}]


# ------------------------------------------------------------------------------- accepted
@pytest.mark.parametrize(
    ("stamp", "expected_ms"),
    [
        (T0, T0),
        (0, 0),
        (float(T0), T0),
        (1_700_000_000_000.0, 1_700_000_000_000),
        ("2024-01-01T00:00:00Z", T0),
        ("2024-01-01T00:00:00+00:00", T0),
        ("2024-01-01T02:00:00+02:00", T0),
        ("2023-12-31T19:00:00-05:00", T0),
        ("2024-01-01T00:00:00", T0),  # no offset: UTC
        ("2024-01-01T00:00:00.123Z", T0 + 123),
        ("2024-01-01T00:00:00.1239Z", T0 + 123),  # below the millisecond: floored
        ("2024-01-01T00:00:00.999999Z", T0 + 999),
        ("2024-01-01T00:00:00.0009999", T0),
        ("2024-01-01", T0),  # date only: midnight UTC
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_accepted_timestamp_forms(stamp: Any, expected_ms: int) -> None:
    columns = validate([event(timestamp=stamp)])
    assert columns.ts.dtype == np.int64
    assert columns.ts.tolist() == [expected_ms]


def test_valid_events_become_columns_in_request_order() -> None:
    events = [
        event(entity_id="b", timestamp=T0 + 5, value=2),
        event(entity_id="a", timestamp="2024-01-01T00:00:00Z", value=-1.25, category="cat"),
        event(entity_id="b", timestamp=T0, value=0, category=None, event_id="e-1"),
        {"entity_id": "é" * 128, "timestamp": T0, "value": 10**300},  # exactly 256 bytes
    ]
    columns = validate(events)
    assert isinstance(columns, EventColumns)
    assert len(columns) == 4
    assert columns.entity_id == ["b", "a", "b", "é" * 128]
    assert columns.ts.tolist() == [T0 + 5, T0, T0, T0]
    assert columns.value.dtype == np.float64
    assert columns.value.tolist() == [2.0, -1.25, 0.0, 1e300]
    assert columns.category == [None, "cat", None, None]
    assert columns.event_id == [None, None, "e-1", None]


def test_largest_timestamp_is_accepted_when_the_future_allows_it() -> None:
    columns = validate([event(timestamp=MAX_TIMESTAMP_MS - 1)], future_ms=MAX_TIMESTAMP_MS)
    assert columns.ts.tolist() == [MAX_TIMESTAMP_MS - 1]


def test_events_near_now_respect_max_future() -> None:
    now = now_ms()
    assert validate([event(timestamp=now + FUTURE_MS - 60_000)]).ts[0] == now + FUTURE_MS - 60_000
    assert validate([event(timestamp=now - 1_000)], future_ms=0).ts[0] == now - 1_000


def test_exactly_max_events_are_accepted() -> None:
    assert len(validate([event()] * 5, max_events=5)) == 5


@pytest.mark.parametrize(
    "identifier",
    ["a", "x" * 256, "é" * 128, "日本" * 42 + "ab", "\x7f", " spaced ", "emoji 😀"],
)
def test_identifiers_accepted(identifier: str) -> None:
    columns = validate([event(entity_id=identifier, category=identifier, event_id=identifier)])
    assert columns.entity_id == [identifier]
    assert columns.category == [identifier]
    assert columns.event_id == [identifier]


# ------------------------------------------------------------------------------- rejected
def test_missing_fields() -> None:
    assert errors_of([{}]) == [
        {"index": 0, "field": "entity_id", "reason": "is required"},
        {"index": 0, "field": "timestamp", "reason": "is required"},
        {"index": 0, "field": "value", "reason": "is required"},
    ]
    assert errors_of([event(), event(value=_ABSENT)]) == one_error(1, "value", "is required")
    assert errors_of([event(timestamp=_ABSENT)]) == one_error(0, "timestamp", "is required")
    assert errors_of([event(entity_id=_ABSENT)]) == one_error(0, "entity_id", "is required")


def test_unknown_field() -> None:
    assert errors_of([event(amount=3)]) == one_error(0, "amount", "unknown field")
    assert errors_of([event(ts=1, Value=2)]) == [
        {"index": 0, "field": "ts", "reason": "unknown field"},
        {"index": 0, "field": "Value", "reason": "unknown field"},
    ]


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"value": True}, "value", "must be a number"),
        ({"value": False}, "value", "must be a number"),
        ({"timestamp": True}, "timestamp", "a boolean is not a timestamp"),
        ({"timestamp": False}, "timestamp", "a boolean is not a timestamp"),
        ({"value": float("nan")}, "value", "must be finite"),
        ({"value": float("inf")}, "value", "must be finite"),
        ({"value": float("-inf")}, "value", "must be finite"),
        ({"value": 2**1025}, "value", "must be finite"),
        ({"value": "1.5"}, "value", "must be a number"),
        ({"value": None}, "value", "must be a number"),
        ({"value": [1]}, "value", "must be a number"),
        ({"timestamp": 1_700_000_000_000.5}, "timestamp", "epoch milliseconds must be an integer"),
        ({"timestamp": float("nan")}, "timestamp", "epoch milliseconds must be an integer"),
        ({"timestamp": float("inf")}, "timestamp", "epoch milliseconds must be an integer"),
        ({"timestamp": -1}, "timestamp", "out of range: epoch milliseconds must be in [0, 2^53)"),
        (
            {"timestamp": MAX_TIMESTAMP_MS},
            "timestamp",
            "out of range: epoch milliseconds must be in [0, 2^53)",
        ),
        (
            {"timestamp": float(2**60)},
            "timestamp",
            "out of range: epoch milliseconds must be in [0, 2^53)",
        ),
        (
            {"timestamp": "1969-12-31T23:59:59.999Z"},
            "timestamp",
            "out of range: epoch milliseconds must be in [0, 2^53)",
        ),
        ({"timestamp": None}, "timestamp", "expected epoch milliseconds or an ISO-8601 string"),
        ({"timestamp": [T0]}, "timestamp", "expected epoch milliseconds or an ISO-8601 string"),
        ({"timestamp": "yesterday"}, "timestamp", "not an ISO-8601 timestamp"),
        ({"timestamp": "1700000000000"}, "timestamp", "not a valid ISO-8601 timestamp"),
        ({"timestamp": "2024-02-30T00:00:00Z"}, "timestamp", "not a valid ISO-8601 timestamp"),
        ({"timestamp": "2023-02-29"}, "timestamp", "not a valid ISO-8601 timestamp"),
        ({"timestamp": "2024-01-01T24:00:01Z"}, "timestamp", "not a valid ISO-8601 timestamp"),
        ({"timestamp": "2024-13-01T00:00:00Z"}, "timestamp", "not a valid ISO-8601 timestamp"),
        ({"timestamp": ""}, "timestamp", "not an ISO-8601 timestamp"),
        ({"entity_id": ""}, "entity_id", "must be 1-256 UTF-8 bytes"),
        ({"entity_id": "x" * 257}, "entity_id", "must be 1-256 UTF-8 bytes"),
        ({"entity_id": "é" * 128 + "x"}, "entity_id", "must be 1-256 UTF-8 bytes"),
        ({"entity_id": "é" * 129}, "entity_id", "must be 1-256 UTF-8 bytes"),
        ({"entity_id": 7}, "entity_id", "must be a string"),
        ({"entity_id": None}, "entity_id", "must be a string"),
        (
            {"entity_id": "a\x00b"},
            "entity_id",
            "contains a control character (U+0000-U+001F)",
        ),
        ({"entity_id": "a\nb"}, "entity_id", "contains a control character (U+0000-U+001F)"),
        ({"entity_id": "\x1f"}, "entity_id", "contains a control character (U+0000-U+001F)"),
        ({"entity_id": "\ud800"}, "entity_id", "contains a lone surrogate"),
        ({"entity_id": "ok\udfff"}, "entity_id", "contains a lone surrogate"),
        ({"category": ""}, "category", "must be 1-256 UTF-8 bytes"),
        ({"category": "c" * 257}, "category", "must be 1-256 UTF-8 bytes"),
        ({"category": 3}, "category", "must be a string"),
        ({"category": "a\tb"}, "category", "contains a control character (U+0000-U+001F)"),
        ({"category": "\ud800"}, "category", "contains a lone surrogate"),
        ({"event_id": ""}, "event_id", "must be 1-256 UTF-8 bytes"),
        ({"event_id": "e" * 257}, "event_id", "must be 1-256 UTF-8 bytes"),
        ({"event_id": 12}, "event_id", "must be a string"),
        ({"event_id": "e\r"}, "event_id", "contains a control character (U+0000-U+001F)"),
        ({"event_id": "\udc80"}, "event_id", "contains a lone surrogate"),
    ],
)
def test_rejected_field(fields: dict[str, Any], field: str, reason: str) -> None:
    errors = errors_of([event(), event(**fields)])
    assert len(errors) == 1
    assert set(errors[0]) == {"index", "field", "reason"}
    assert errors[0]["index"] == 1
    assert errors[0]["field"] == field
    if reason.startswith("not a valid ISO-8601"):  # followed by the parser's own words
        assert errors[0]["reason"].startswith(reason + " (")
    else:
        assert errors[0]["reason"] == reason


def test_impossible_date_reason_is_specific() -> None:
    errors = errors_of([event(timestamp="2024-02-30T00:00:00Z")])
    assert errors == one_error(
        0, "timestamp", "not a valid ISO-8601 timestamp (day is out of range for month)"
    )


def test_future_beyond_max_future_is_rejected() -> None:
    too_late = now_ms() + FUTURE_MS + 60_000
    assert errors_of([event(timestamp=too_late)]) == one_error(
        0, "timestamp", "is too far in the future"
    )
    assert errors_of([event(timestamp=now_ms() + 60_000)], future_ms=0) == one_error(
        0, "timestamp", "is too far in the future"
    )
    iso = datetime.fromtimestamp((now_ms() + 2 * FUTURE_MS) / 1000, tz=UTC).isoformat()
    assert errors_of([event(timestamp=iso)]) == one_error(
        0, "timestamp", "is too far in the future"
    )


def test_an_event_that_is_not_an_object() -> None:
    assert errors_of([event(), 5, "x", None, [1]]) == [
        {"index": i, "field": "event", "reason": "must be an object"} for i in (1, 2, 3, 4)
    ]


def test_category_none_means_no_category() -> None:
    assert validate([event(category=None)]).category == [None]
    assert validate([event(event_id=None)]).event_id == [None]


def test_all_problems_of_one_event_are_listed_in_field_order() -> None:
    bad = {"entity_id": "", "timestamp": "nope", "value": "x", "category": "", "extra": 1}
    assert errors_of([bad]) == [
        {"index": 0, "field": "extra", "reason": "unknown field"},
        {"index": 0, "field": "entity_id", "reason": "must be 1-256 UTF-8 bytes"},
        {"index": 0, "field": "timestamp", "reason": "not an ISO-8601 timestamp"},
        {"index": 0, "field": "value", "reason": "must be a number"},
        {"index": 0, "field": "category", "reason": "must be 1-256 UTF-8 bytes"},
    ]


def test_one_bad_event_rejects_the_whole_request() -> None:
    error = rejection([event(), event(), event(value=True), event()])
    assert error.extra["errors"] == one_error(2, "value", "must be a number")
    assert error.message == (
        "1 invalid event field(s); first: events[2].value: must be a number. Nothing was stored."
    )
    assert error.body() == {
        "error": "invalid_request",
        "message": error.message,
        "errors": error.extra["errors"],
    }


def test_at_most_twenty_errors_are_reported_but_all_are_counted() -> None:
    events = [event(value="bad") for _ in range(25)]
    error = rejection(events)
    assert MAX_REPORTED_ERRORS == 20
    assert error.extra["errors"] == [
        {"index": i, "field": "value", "reason": "must be a number"} for i in range(20)
    ]
    assert error.message.startswith("25 invalid event field(s); first: events[0].value: ")


def test_error_count_includes_several_problems_per_event() -> None:
    events = [event()] + [event(value=None, entity_id="") for _ in range(15)]
    error = rejection(events)
    assert len(error.extra["errors"]) == 20
    assert error.extra["errors"][:2] == [
        {"index": 1, "field": "entity_id", "reason": "must be 1-256 UTF-8 bytes"},
        {"index": 1, "field": "value", "reason": "must be a number"},
    ]
    assert error.extra["errors"][-1]["index"] == 10
    assert error.message.startswith("30 invalid event field(s); first: events[1].entity_id: ")


# -------------------------------------------------------------------------- request level
@pytest.mark.parametrize("events", [[], {}, {"events": []}, "events", None, 3, (event(),)])
def test_empty_or_non_list_is_invalid_request(events: Any) -> None:
    error = rejection(events)
    assert error.code is Code.INVALID_REQUEST
    assert error.http_status == 400
    assert "errors" not in error.extra


def test_more_than_max_events_is_batch_too_large() -> None:
    error = rejection([event()] * 6, max_events=5)
    assert error.code is Code.BATCH_TOO_LARGE
    assert error.http_status == 413
    assert error.extra == {"limit": 5}
    assert error.body()["error"] == "batch_too_large"
    assert "6 events exceed EVENTS_MAX_PER_REQUEST (5)" in error.message


def test_batch_too_large_is_decided_before_validating_events() -> None:
    assert rejection([None] * 3, max_events=2).code is Code.BATCH_TOO_LARGE


# ------------------------------------------------------------------------------ properties
_TRICKY_CHARS = ["\ud800", "\udfff", "\x00", "\n", "\x1f", "é", "日", "a", "1", "-", ":", "T", "Z"]
_zones = st.none() | st.integers(-1439, 1439).map(lambda m: timezone(timedelta(minutes=m)))
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.text(alphabet=st.sampled_from(_TRICKY_CHARS), max_size=12)
)
_json = st.recursive(
    _json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
_timestamps = (
    st.integers(min_value=-10, max_value=2**54)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.datetimes(timezones=_zones).map(lambda d: d.isoformat())
    | st.dates().map(lambda d: d.isoformat())
    | st.text(max_size=30)
    | _json
)
_event_like = st.fixed_dictionaries(
    {},
    optional={
        "entity_id": st.text(max_size=300) | _json,
        "timestamp": _timestamps,
        "value": st.floats(allow_nan=True, allow_infinity=True) | st.integers() | _json,
        "category": st.none() | st.text(max_size=300) | _json,
        "event_id": st.none() | st.text(max_size=300) | _json,
        "other": _json,
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_event_like | _json, max_size=6) | _json)
def test_arbitrary_input_only_ever_raises_service_error(events: Any) -> None:
    try:
        columns = validate(events, max_events=5)
    except ServiceError as error:
        assert error.code in (Code.INVALID_REQUEST, Code.BATCH_TOO_LARGE)
        for item in error.extra.get("errors", []):
            assert set(item) == {"index", "field", "reason"}
            assert 0 <= item["index"] < len(events)
        assert len(error.extra.get("errors", [])) <= MAX_REPORTED_ERRORS
        return
    assert isinstance(events, list)
    assert 1 <= len(events) <= 5
    assert len(columns) == len(events)
    assert columns.ts.dtype == np.int64 and columns.value.dtype == np.float64
    assert np.isfinite(columns.value).all()
    assert ((columns.ts >= 0) & (columns.ts < MAX_TIMESTAMP_MS)).all()


@settings(max_examples=200, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.none()
    ),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_iso_strings_give_floored_epoch_ms(naive: datetime, offset_min: int) -> None:
    zone = timezone(timedelta(minutes=offset_min))
    aware = naive.replace(tzinfo=zone)
    expected = (aware - EPOCH) // timedelta(milliseconds=1)
    assert parse_timestamp(aware.isoformat()) == expected
    assert parse_timestamp(naive.isoformat()) == (naive.replace(tzinfo=UTC) - EPOCH) // timedelta(
        milliseconds=1
    )


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_TIMESTAMP_MS - 1))
def test_integer_and_integral_float_ms_are_exact(ms: int) -> None:
    assert parse_timestamp(ms) == ms
    if float(ms) == ms:
        assert parse_timestamp(float(ms)) == ms


_identifier = st.text(
    alphabet=st.characters(min_codepoint=0x20, exclude_categories=("Cs",)),
    min_size=1,
    max_size=64,  # at most 4 bytes a character: never over 256 bytes
)
_valid_event = st.fixed_dictionaries(
    {
        "entity_id": _identifier,
        "timestamp": st.integers(min_value=0, max_value=T0)
        | st.integers(min_value=0, max_value=T0).map(float),
        "value": st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**60), 2**60),
    },
    optional={"category": st.none() | _identifier, "event_id": st.none() | _identifier},
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_valid_event, min_size=1, max_size=8))
def test_valid_events_round_trip_into_columns(events: list[dict[str, Any]]) -> None:
    columns = validate(events)
    assert columns.entity_id == [e["entity_id"] for e in events]
    assert columns.ts.tolist() == [int(e["timestamp"]) for e in events]
    assert columns.value.tolist() == [float(e["value"]) for e in events]
    assert columns.category == [e.get("category") for e in events]
    assert columns.event_id == [e.get("event_id") for e in events]
