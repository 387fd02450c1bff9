"""Validation of incoming events and identifiers exactly as SPEC §3 says.

`validate_events` turns a JSON/msgpack list of event objects into `EventColumns`, or raises an
`invalid_request` listing every bad field as {"index", "field", "reason"} (the first 20).
`check_identifier` is the one rule for entity ids, categories and event ids everywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from featurestore.errors import Code, ServiceError, invalid_events
from featurestore.timestamps import TimestampError, now_ms, parse_timestamp

MAX_ID_BYTES = 256
EVENT_FIELDS = ("entity_id", "timestamp", "value", "category", "event_id")
_CONTROL = re.compile("[\x00-\x1f]")


@dataclass(frozen=True)
class EventColumns:
    """Validated events as columns, in request (insertion) order."""

    entity_id: list[str]
    ts: np.ndarray  # int64 epoch ms
    value: np.ndarray  # float64
    category: list[str | None]
    event_id: list[str | None]

    def __len__(self) -> int:
        return len(self.entity_id)


def identifier_problem(value: Any, *, min_bytes: int = 1) -> str | None:
    """Why `value` is not a valid identifier string (entity id, category, event id), or None."""
    if not isinstance(value, str):
        return "must be a string"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "contains a lone surrogate"
    if not min_bytes <= size <= MAX_ID_BYTES:
        return f"must be {min_bytes}-{MAX_ID_BYTES} UTF-8 bytes"
    if _CONTROL.search(value):
        return "contains a control character (U+0000-U+001F)"
    return None


def value_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    if isinstance(value, int) and abs(value) > 2**1023:
        return "must be finite"
    return None


def validate_events(events: Any, max_events: int, max_future_ms: int) -> EventColumns:
    """The events of an ingest request, validated whole: one bad field rejects them all."""
    if not isinstance(events, list):
        raise ServiceError(Code.INVALID_REQUEST, "'events' must be a list of event objects")
    if not events:
        raise ServiceError(Code.INVALID_REQUEST, "'events' must not be empty")
    if len(events) > max_events:
        raise ServiceError(
            Code.BATCH_TOO_LARGE,
            f"{len(events)} events exceed EVENTS_MAX_PER_REQUEST ({max_events})",
            limit=max_events,
        )
    latest = now_ms() + max_future_ms
    errors: list[dict[str, Any]] = []
    entity_ids: list[str] = []
    stamps: list[int] = []
    values: list[float] = []
    categories: list[str | None] = []
    event_ids: list[str | None] = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            errors.append({"index": index, "field": "event", "reason": "must be an object"})
            continue
        problems = _event_problems(event, latest)
        if problems:
            errors.extend({"index": index, "field": f, "reason": r} for f, r in problems)
            continue
        entity_ids.append(event["entity_id"])
        stamps.append(parse_timestamp(event["timestamp"]))
        values.append(float(event["value"]))
        categories.append(event.get("category"))
        event_ids.append(event.get("event_id"))
    if errors:
        raise invalid_events(errors)
    return EventColumns(
        entity_id=entity_ids,
        ts=np.array(stamps, dtype=np.int64),
        value=np.array(values, dtype=np.float64),
        category=categories,
        event_id=event_ids,
    )


def _event_problems(event: dict, latest_ms: int) -> list[tuple[str, str]]:
    problems = [(name, "unknown field") for name in event if name not in EVENT_FIELDS]
    for name in ("entity_id", "timestamp", "value"):
        if name not in event:
            problems.append((name, "is required"))
    if "entity_id" in event and (why := identifier_problem(event["entity_id"])):
        problems.append(("entity_id", why))
    if "timestamp" in event:
        try:
            if parse_timestamp(event["timestamp"]) > latest_ms:
                problems.append(("timestamp", "is too far in the future"))
        except TimestampError as exc:
            problems.append(("timestamp", str(exc)))
    if "value" in event and (why := value_problem(event["value"])):
        problems.append(("value", why))
    for name in ("category", "event_id"):
        if event.get(name) is not None and (why := identifier_problem(event[name])):
            problems.append((name, why))
    return problems
