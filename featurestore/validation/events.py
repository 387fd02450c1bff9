"""Events exactly as SPEC §3 says: `validate_events` turns a JSON/msgpack list of event objects
into `EventColumns`, or raises an `invalid_request` listing every bad field as
{"index", "field", "reason"} (the first 20); `checked_columns` checks events that arrive
already as columns (`IngestColumns`, vectorised)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.definitions.model import EventSchema, schema_or_shipped
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

EVENT_KEYS = ("entity_id", "timestamp", "event_id")  # every event's own keys; fields follow


def validate_events(
    events: Any, max_events: int, max_future_ms: int, schema: EventSchema | None = None
) -> EventColumns:
    """The events of an ingest request, validated whole against the schema's fields (default:
    the shipped file's): one bad field rejects them all."""
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
    rules = _Rules.of(schema_or_shipped(schema))
    latest = now_ms() + max_future_ms
    errors: list[dict[str, Any]] = []
    entity_ids: list[str] = []
    stamps: list[int] = []
    numeric: dict[str, list[float]] = {name: [] for name in rules.numeric}
    categorical: dict[str, list[str | None]] = {name: [] for name in rules.categorical}
    event_ids: list[str | None] = []
    nan = float("nan")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            errors.append({"index": index, "field": "event", "reason": "must be an object"})
            continue
        problems = rules.problems(event, latest)
        if problems:
            errors.extend({"index": index, "field": f, "reason": r} for f, r in problems)
            continue
        entity_ids.append(event["entity_id"])
        stamps.append(parse_timestamp(event["timestamp"]))
        for name, column in numeric.items():
            value = event.get(name)
            column.append(nan if value is None else float(value))
        for name, column in categorical.items():
            column.append(event.get(name))
        event_ids.append(event.get("event_id"))
    if errors:
        raise invalid_events(errors)
    return EventColumns(
        entity_ids,
        np.array(stamps, dtype=np.int64),
        event_id=event_ids,
        numeric={name: np.array(v, dtype=np.float64) for name, v in numeric.items()},
        categorical=categorical,
    )


class _Rules:
    """What an event of a schema may and must carry, precomputed per schema."""

    def __init__(self, schema: EventSchema) -> None:
        self.numeric = schema.numeric
        self.categorical = schema.categorical
        self.allowed = frozenset((*EVENT_KEYS, *schema.names))
        self.required = ("entity_id", "timestamp", *schema.required)
        self.identifiers = (*self.categorical, "event_id")

    @classmethod
    def of(cls, schema: EventSchema) -> _Rules:
        found = _RULES.get(schema)
        if found is None:
            found = _RULES[schema] = cls(schema)
        return found

    def problems(self, event: dict, latest_ms: int) -> list[tuple[str, str]]:
        """What is wrong with one event. A required key must be present (null is then a bad
        value); an optional field that is null is missing for the event."""
        problems = []
        if not self.allowed.issuperset(event):
            problems += [(name, "unknown field") for name in event if name not in self.allowed]
        for name in self.required:
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
        return problems + self.field_problems(event)

    def field_problems(self, event: dict) -> list[tuple[str, str]]:
        problems = []
        for name in self.numeric:
            if name in event and (name in self.required or event[name] is not None):
                why = value_problem(event[name])
                if why:
                    problems.append((name, why))
        for name in self.identifiers:
            if event.get(name) is not None and (why := identifier_problem(event[name])):
                problems.append((name, why))
        return problems


_RULES: dict[EventSchema, _Rules] = {}


def checked_columns(
    columns: IngestColumns,
    blocks: list,
    max_events: int,
    max_future_ms: int,
    schema: EventSchema | None = None,
) -> EventColumns:
    """Events that arrive as columns (the gateway validated them one by one), checked again
    as columns, vectorised: what a worker must rely on whoever sent them."""
    schema = schema_or_shipped(schema)
    ts = get_array(blocks, columns.ts)
    count = len(columns.entity_id)
    if not count:
        raise ServiceError(Code.INVALID_REQUEST, "'events' must not be empty")
    if count > max_events:
        raise ServiceError(
            Code.BATCH_TOO_LARGE,
            f"{count} events exceed EVENTS_MAX_PER_REQUEST ({max_events})",
            limit=max_events,
        )
    unknown = sorted(
        (set(columns.numeric) - set(schema.numeric))
        | (set(columns.categorical) - set(schema.categorical))
    )
    if unknown:
        raise ServiceError(Code.INVALID_REQUEST, f"event columns of unknown fields: {unknown}")
    numeric = {name: get_array(blocks, ref) for name, ref in columns.numeric.items()}
    shapes = {ts.shape, (len(columns.event_id),)}
    shapes |= {v.shape for v in numeric.values()}
    shapes |= {(len(v),) for v in columns.categorical.values()}
    if (
        ts.dtype != np.int64
        or shapes != {(count,)}
        or any(v.dtype != np.float64 for v in numeric.values())
    ):
        raise ServiceError(Code.INVALID_REQUEST, "event columns of different lengths or types")
    errors = []
    latest = now_ms() + max_future_ms
    checks = [
        ("timestamp", (ts < 0) | (ts >= MAX_TIMESTAMP_MS), "out of range"),
        ("timestamp", ts > latest, "is too far in the future"),
        *_numeric_checks(schema, numeric, count),
    ]
    for name, bad, reason in checks:
        errors += [{"index": int(i), "field": name, "reason": reason} for i in np.flatnonzero(bad)]
    texts = [("entity_id", columns.entity_id, True), ("event_id", columns.event_id, False)]
    texts += [(name, values, False) for name, values in columns.categorical.items()]
    for name, values, required in texts:
        errors += [
            {"index": i, "field": name, "reason": reason}
            for i, reason in identifier_problems(values, required=required)
        ]
    if errors:
        raise invalid_events(sorted(errors, key=lambda e: e["index"]))
    return EventColumns(
        list(columns.entity_id),
        ts,
        event_id=list(columns.event_id),
        numeric=numeric,
        categorical={name: list(values) for name, values in columns.categorical.items()},
    )


def _numeric_checks(
    schema: EventSchema, numeric: dict[str, np.ndarray], count: int
) -> list[tuple[str, np.ndarray, str]]:
    """(field, bad rows, reason) of the numeric columns: finite or NaN (missing), and present
    where the field is required."""
    checks = []
    for spec in schema.fields:
        if spec.kind != "numeric":
            continue
        values = numeric.get(spec.name)
        if values is None:
            if spec.required:
                checks.append((spec.name, np.ones(count, dtype=bool), "is required"))
            continue
        checks.append((spec.name, np.isinf(values), "must be finite"))
        if spec.required:
            checks.append((spec.name, np.isnan(values), "is required"))
    return checks


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
