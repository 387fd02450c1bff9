"""The OpenAPI 3.1 document of the HTTP API (SPEC §5), generated once at start-up.

Derived, not written: the paths and methods from the app's routes; the request and answer
schemas from the message types (`featurestore.wire.messages`, through msgspec's JSON Schema);
the versions and feature names from the feature registry; the error statuses and their codes
from the catalogue (`featurestore.errors`); bearer security from the routes' scopes and
API_TOKENS_FILE. What stays here is what cannot be derived: a summary per route, its request
and answer types, and which errors it can answer besides the ones every route has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec

from featurestore.config import Settings
from featurestore.errors import HTTP_STATUS, Code
from featurestore.security.tokens import Scope
from featurestore.wire import messages as m
from gateway.auth import required_scope

REF = "#/components/schemas/{name}"
BROKER = (500, 503, 504)  # what a route that asks the broker can also answer
ALWAYS = (400,)  # a malformed X-Request-Id
WITH_BODY = (400, 413)  # a body over MAX_BODY_BYTES, malformed JSON
CODE_NOTES = {
    Code.INVALID_REQUEST: "also a malformed X-Request-Id header",
    Code.ENTITY_NOT_FOUND: "single /features only",
    Code.OVERLOADED: "with Retry-After",
    Code.STORE_UNAVAILABLE: "with Retry-After",
}


class Event(m.Message):
    """An event of POST /events (checked field by field: errors [{index, field, reason}]),
    with the fields of the definitions file served."""

    # `value` and `category` stand for a numeric and a categorical field: `_event_fields`
    # replaces them by the fields of the definitions file.

    entity_id: m.Identifier
    timestamp: m.Timestamp
    value: float
    category: m.Identifier | None = None
    event_id: m.Identifier | None = None


@dataclass(frozen=True)
class Route:
    summary: str
    answer: Any  # a message type, or a schema
    body: type | None = None
    statuses: tuple[int, ...] = ()  # besides ALWAYS (and WITH_BODY when it has a body)
    broker: bool = True  # asks the broker: BROKER statuses too
    media: str = "application/json"


ROUTES: dict[str, Route] = {
    "features": Route(
        "Features of one entity (cached or computed now, or as of a time)",
        m.GetAnswer,
        m.GetRequest,
        (404,),
    ),
    "features_batch": Route(
        "Features of many entities, in request order", m.BatchAnswer, m.BatchRequest
    ),
    "features_historical": Route(
        "Point-in-time features: each row as of its own timestamp",
        m.HistoricalAnswer,
        m.HistoricalRequest,
    ),
    "events": Route(
        "Ingest events (idempotent by event_id and by X-Request-Id)",
        m.IngestAnswer,
        m.IngestRequest,
        (409,),
    ),
    "entities_delete": Route("Delete an entity's events and cached vectors", m.DeleteAnswer),
    "features_stats": Route("Computation and cache statistics", m.Stats),
    "features_definitions": Route("Versions and feature definitions", m.Definitions, broker=False),
    "drift_report": Route("The drift report", m.DriftReport),
    "drift_baseline": Route(
        "Reset or set the drift baseline", m.DriftBaselineAnswer, m.DriftBaselineRequest
    ),
    "health": Route("Liveness of every process (503 when down)", m.Health, statuses=(503,)),
    "cache_clear": Route("Empty the feature cache", m.Cleared, broker=False),
    "metrics": Route(
        "Prometheus metrics (text exposition format)", {"type": "string"}, media="text/plain"
    ),
    "openapi": Route("This document", {"type": "object"}, broker=False),
}
SCHEMA_TYPES = (
    *(r.answer for r in ROUTES.values() if isinstance(r.answer, type)),
    *(r.body for r in ROUTES.values() if r.body is not None),
    Event,
    m.ErrorBody,
)


def openapi_document(settings: Settings, routes: list) -> dict:
    """The document served at GET /openapi.json; `routes`: the app's router routes."""
    _, schemas = msgspec.json.schema_components(SCHEMA_TYPES, ref_template=REF)
    _refine(schemas, settings)
    secured = settings.api_tokens_file != ""
    paths: dict[str, dict] = {}
    for route in routes:
        name = route.name.rsplit(".", 1)[-1]
        spec = ROUTES.get(name)
        if spec is None:
            continue
        path, parameters = _path(route)
        scope = required_scope(route.handler)
        for method in sorted(route.methods):
            paths.setdefault(path, {})[method.lower()] = _operation(
                spec, parameters, scope if secured else None
            )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "featurestore",
            "version": "1",
            "description": "Feature store HTTP API. Versions: "
            + ", ".join(
                f"{v} ({len(settings.definitions.versions[v].features)} features)"
                for v in settings.versions
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": schemas},
        "x-error-codes": {c.value: HTTP_STATUS[c] for c in Code},
    }
    if secured:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    return document


REQUEST_ID_PARAMETER = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "echoed in the response; made up when absent; the ingest request id of "
    "POST /events",
    "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
}


def _path(route) -> tuple[str, list[dict]]:
    """`/entities/{entity_id}` and its path parameters, from a Sanic route."""
    parameters = []
    path = "/" + route.path.lstrip("/")
    for name in re.findall(r"<([^:>]+)(?::[^>]*)?>", path):
        parameters.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "description": "percent-encoded; may contain '/'",
                "schema": {"type": "string", **m.IDENTIFIER_SCHEMA},
            }
        )
    return re.sub(r"<([^:>]+)(?::[^>]*)?>", r"{\1}", path), parameters


def _operation(spec: Route, parameters: list[dict], scope: Scope | None) -> dict:
    statuses = {*ALWAYS, *spec.statuses}
    if spec.body is not None:
        statuses |= set(WITH_BODY)
    if spec.broker:
        statuses |= set(BROKER)
    answer = spec.answer if isinstance(spec.answer, dict) else _ref(spec.answer.__name__)
    responses = {"200": {"description": "OK", "content": {spec.media: {"schema": answer}}}}
    if scope is not None:
        statuses |= {401} if scope is Scope.READ else {401, 403}
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": _describe(status),
            "content": {"application/json": {"schema": _ref(_status_schema(spec, status))}},
        }
    operation: dict[str, Any] = {
        "summary": spec.summary,
        "parameters": [*parameters, REQUEST_ID_PARAMETER],
        "responses": responses,
    }
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(spec.body.__name__)}},
        }
    if scope is not None:
        operation["security"] = [{"bearer": []}]
    return operation


def _status_schema(spec: Route, status: int) -> str:
    """Errors answer an ErrorBody, except /health when down (its own answer)."""
    if status == 503 and spec.answer is m.Health:
        return "Health"
    return "ErrorBody"


def _describe(status: int) -> str:
    codes = [c for c in Code if HTTP_STATUS[c] == status]
    return ", ".join(f"{c.value} ({CODE_NOTES[c]})" if c in CODE_NOTES else c.value for c in codes)


def _ref(name: str) -> dict:
    return {"$ref": REF.format(name=name)}


def _refine(schemas: dict, settings: Settings) -> None:
    """What the registry knows and the types do not: the versions served, the feature names."""
    definitions = settings.definitions
    names = sorted({f.name for v in settings.versions for f in definitions.versions[v].features})
    version = {"anyOf": [{"enum": list(settings.versions)}, {"type": "null"}]}
    for name in ("GetRequest", "BatchRequest", "HistoricalRequest", "DriftBaselineRequest"):
        properties = schemas[name]["properties"]
        properties["version"] = {
            **version,
            "description": f"absent or null = FEATURE_VERSION ({settings.default_version})",
        }
        if "features" in properties:
            properties["features"] = {
                "anyOf": [
                    {"type": "array", "items": {"enum": names}},
                    {"type": "null"},
                ],
                "description": "feature names; absent, null or empty = all, in registry order",
            }
    schemas["IngestRequest"]["properties"]["events"]["items"] = _ref("Event")
    _event_fields(schemas["Event"], definitions.schema)


def _event_fields(event: dict, schema) -> None:
    """The Event schema with the definitions' fields: a numeric field is a number (nullable
    unless required), a categorical one an identifier or null."""
    properties = event["properties"]
    numeric = {k: v for k, v in properties.pop("value").items() if k != "default"}
    categorical = properties.pop("category")
    for field in schema.fields:
        if field.kind == "numeric":
            properties[field.name] = (
                numeric if field.required else {"anyOf": [numeric, {"type": "null"}]}
            )
        else:
            properties[field.name] = categorical
    event["required"] = ["entity_id", "timestamp", *schema.required]
