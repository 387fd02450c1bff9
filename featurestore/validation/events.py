"""Events exactly as SPEC §3 says: `validate_events` turns a JSON/msgpack list of event objects
into `EventColumns`, or raises an `invalid_request` listing every bad field as
{"index", "field", "reason"} (the first 20); `checked_columns` checks events that arrive
already as columns (`IngestColumns`, vectorised)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.errors import Code, ServiceError, invalid_events
from featurestore.store.columns import EventColumns
from featurestore.timestamps import MAX_TIMESTAMP_MS, TimestampError, now_ms, parse_timestamp
from featurestore.validation.identifiers import (
    CONTROL_PATTERN,
    MAX_ID_BYTES,
    identifier_problem,
    value_problem,
)
from featurestore.wire.frames import get_array
from featurestore.wire.messages import IngestColumns

EVENT_FIELDS = ("entity_id", "timestamp", "value", "category", "event_id")


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


def checked_columns(
    columns: IngestColumns, blocks: list, max_events: int, max_future_ms: int
) -> EventColumns:
    """Events that arrive as columns (the gateway validated them one by one), checked again
    as columns, vectorised: what a worker must rely on whoever sent them."""
    ts = get_array(blocks, columns.ts)
    value = get_array(blocks, columns.value)
    count = len(columns.entity_id)
    if not count:
        raise ServiceError(Code.INVALID_REQUEST, "'events' must not be empty")
    if count > max_events:
        raise ServiceError(
            Code.BATCH_TOO_LARGE,
            f"{count} events exceed EVENTS_MAX_PER_REQUEST ({max_events})",
            limit=max_events,
        )
    shapes = (ts.shape, value.shape, (len(columns.category),), (len(columns.event_id),))
    if ts.dtype != np.int64 or value.dtype != np.float64 or set(shapes) != {(count,)}:
        raise ServiceError(Code.INVALID_REQUEST, "event columns of different lengths or types")
    errors = []
    latest = now_ms() + max_future_ms
    for name, bad, reason in (
        ("timestamp", (ts < 0) | (ts >= MAX_TIMESTAMP_MS), "out of range"),
        ("timestamp", ts > latest, "is too far in the future"),
        ("value", ~np.isfinite(value), "must be finite"),
    ):
        errors += [{"index": int(i), "field": name, "reason": reason} for i in np.flatnonzero(bad)]
    for name, texts, required in (
        ("entity_id", columns.entity_id, True),
        ("category", columns.category, False),
        ("event_id", columns.event_id, False),
    ):
        errors += [
            {"index": i, "field": name, "reason": reason}
            for i, reason in identifier_problems(texts, required=required)
        ]
    if errors:
        raise invalid_events(sorted(errors, key=lambda e: e["index"]))
    return EventColumns(
        list(columns.entity_id), ts, value, list(columns.category), list(columns.event_id)
    )


def identifier_problems(texts: list[str | None], *, required: bool) -> list[tuple[int, str]]:
    """(index, reason) of the strings that break the identifier rule, vectorised (Arrow)."""
    array = pa.array(texts, type=pa.string())
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    sizes = np.nan_to_num(pc.binary_length(array).to_numpy(zero_copy_only=False), nan=1)
    control = pc.fill_null(pc.match_substring_regex(array, CONTROL_PATTERN), False)
    checks = [
        (~nulls & ((sizes < 1) | (sizes > MAX_ID_BYTES)), f"must be 1-{MAX_ID_BYTES} UTF-8 bytes"),
        (control.to_numpy(zero_copy_only=False), "contains a control character (U+0000-U+001F)"),
    ]
    if required:
        checks.insert(0, (nulls, "is required"))
    return [(int(i), reason) for bad, reason in checks for i in np.flatnonzero(bad)]
