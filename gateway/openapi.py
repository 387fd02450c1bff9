"""The OpenAPI 3 document of the HTTP API (SPEC §5), built once at start-up."""

from __future__ import annotations

from typing import Any

from featurestore.config import Settings
from featurestore.errors import HTTP_STATUS, MAX_REPORTED_ERRORS, Code
from featurestore.features.registry import REGISTRY
from featurestore.results import CACHE_STATS_FIELDS
from featurestore.timestamps import MAX_TIMESTAMP_MS
from featurestore.validation import MAX_ID_BYTES

EPOCH_MS = {"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP_MS - 1}
TIMESTAMP = {
    "oneOf": [
        EPOCH_MS,
        {"type": "string", "minLength": 10, "maxLength": 64, "pattern": "^[0-9]{4}"},
    ],
    "description": "epoch milliseconds (a number with an integral value) or an ISO-8601 string "
    "(UTC without offset; below the millisecond floored)",
}
# 1-256 UTF-8 bytes (JSON Schema counts characters, so maxLength is only the outer bound),
# no control characters, no lone surrogates
IDENTIFIER_PATTERN = "^[^\\u0000-\\u001f]+$"
ENTITY_ID = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ID_BYTES,
    "pattern": IDENTIFIER_PATTERN,
    "description": "1-256 UTF-8 bytes, no control characters",
}
FEATURE_NAMES = {
    "type": "array",
    "items": {"type": "string"},
    "nullable": True,
    "description": "feature names; absent, null or empty = all, in registry order",
}
VALUE = {"type": "number", "nullable": True, "description": "null when degenerate"}
FEATURE_MAP = {"type": "object", "additionalProperties": VALUE}
NUMBER = {"type": "number"}
INTEGER = {"type": "integer"}
STRING = {"type": "string"}
BOOLEAN = {"type": "boolean"}


def _obj(properties: dict, required: list[str] | None = None, extra: bool = True) -> dict:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


ERROR_DESCRIPTIONS = {
    400: "invalid_json, invalid_request (also a malformed X-Request-Id header), "
    "unknown_feature or unknown_version",
    404: "entity_not_found (single /features) or not_found (no such route)",
    405: "method_not_allowed",
    409: "request_id_conflict (an ingest request id used before with a different body)",
    413: "body_too_large or batch_too_large",
    500: "internal",
    503: "overloaded or store_unavailable (both with Retry-After), or no_workers",
    504: "timeout",
}


def _errors(*statuses: int) -> dict:
    return {
        str(s): {"description": ERROR_DESCRIPTIONS[s], "content": _json(_ref("Error"))}
        for s in statuses
    }


BROKER_ERRORS = (500, 503, 504)
REQUEST_ID_PARAMETER = {
    "name": "X-Request-Id",
    "in": "header",
    "required": False,
    "description": "echoed in the response; made up when absent; the ingest request id of "
    "POST /events",
    "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
}


def _operation(
    summary: str,
    ok: dict,
    statuses: tuple[int, ...],
    body: dict | None = None,
    ok_description: str = "OK",
) -> dict:
    if body is not None:
        statuses = (*statuses, 413)  # any body over MAX_BODY_BYTES
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [REQUEST_ID_PARAMETER],
        "responses": {
            "200": {"description": ok_description, "content": _json(ok)},
            **_errors(*sorted({400, *statuses})),  # 400: a malformed X-Request-Id
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _schemas(settings: Settings) -> dict:
    versions = list(settings.versions)
    version = {
        "type": "string",
        "enum": [*versions, None],
        "nullable": True,
        "description": f"absent or null = FEATURE_VERSION ({settings.feature_version})",
    }
    as_of = {
        **TIMESTAMP,
        "nullable": True,
        "description": "absent or null = now (online, cached); a time = as of then, not cached",
    }
    batch_item = _obj(
        {
            "entity_id": STRING,
            "features": {**FEATURE_MAP, "nullable": True},
            "status": {"type": "string", "enum": ["ok", "not_found"]},
            "cached": BOOLEAN,
            "timestamp": INTEGER,
        },
        ["entity_id", "features", "status", "cached", "timestamp"],
    )
    row_item = _obj(
        {
            "entity_id": STRING,
            "timestamp": {**EPOCH_MS, "description": "the row's T, epoch milliseconds"},
            "features": {**FEATURE_MAP, "nullable": True},
            "status": {"type": "string", "enum": ["ok", "not_found"]},
        },
        ["entity_id", "timestamp", "features", "status"],
    )
    event = _obj(
        {
            "entity_id": ENTITY_ID,
            "timestamp": TIMESTAMP,
            "value": NUMBER,
            "category": {**ENTITY_ID, "nullable": True},
            "event_id": {**ENTITY_ID, "nullable": True},
        },
        ["entity_id", "timestamp", "value"],
        extra=False,
    )
    definition = _obj(
        {
            "name": STRING,
            "kind": {"type": "string", "enum": ["numeric", "categorical", "identifier"]},
            "type": {"type": "string", "enum": ["int", "float"]},
            "description": STRING,
        },
        ["name", "kind", "type", "description"],
    )
    moments = _obj(
        {
            "mean": {**NUMBER, "nullable": True},
            "stdDev": {**NUMBER, "nullable": True},
            "count": INTEGER,
            "null_fraction": {**NUMBER, "nullable": True},
        }
    )
    return {
        "Error": _obj(
            {
                "error": {"type": "string", "enum": [c.value for c in Code]},
                "message": STRING,
                "unknown": {"type": "array", "items": STRING},
                "valid": {"type": "array", "items": STRING},
                "errors": {
                    "type": "array",
                    "maxItems": MAX_REPORTED_ERRORS,
                    "items": _obj(
                        {"index": INTEGER, "field": STRING, "reason": STRING},
                        ["index", "field", "reason"],
                    ),
                },
                "entity_id": STRING,
                "limit": INTEGER,
                "retry_after_s": INTEGER,
            },
            ["error", "message"],
        ),
        "FeatureQuery": _obj(
            {
                "entity_id": ENTITY_ID,
                "features": FEATURE_NAMES,
                "version": version,
                "as_of": as_of,
            },
            ["entity_id"],
            extra=False,
        ),
        "FeatureResponse": _obj(
            {
                "entity_id": STRING,
                "features": FEATURE_MAP,
                "version": STRING,
                "cached": BOOLEAN,
                "latency_ms": NUMBER,
                "timestamp": INTEGER,
            },
            ["entity_id", "features", "version", "cached", "latency_ms", "timestamp"],
        ),
        "BatchQuery": _obj(
            {
                "entity_ids": {
                    "type": "array",
                    "items": ENTITY_ID,
                    "minItems": 1,
                    "maxItems": settings.batch_max_entities,
                },
                "features": FEATURE_NAMES,
                "version": version,
                "as_of": as_of,
            },
            ["entity_ids"],
            extra=False,
        ),
        "BatchResponse": _obj(
            {
                "count": INTEGER,
                "features": {"type": "array", "items": batch_item},
                "latency_ms": NUMBER,
                "avg_latency_per_entity": NUMBER,
                "timestamp": INTEGER,
            },
            ["count", "features", "latency_ms", "avg_latency_per_entity", "timestamp"],
        ),
        "HistoricalQuery": _obj(
            {
                "rows": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": settings.historical_max_rows,
                    "items": _obj(
                        {"entity_id": ENTITY_ID, "timestamp": TIMESTAMP},
                        ["entity_id", "timestamp"],
                        extra=False,
                    ),
                },
                "features": FEATURE_NAMES,
                "version": version,
            },
            ["rows"],
            extra=False,
        ),
        "HistoricalResponse": _obj(
            {"count": INTEGER, "rows": {"type": "array", "items": row_item}, "latency_ms": NUMBER},
            ["count", "rows", "latency_ms"],
        ),
        "Events": _obj(
            {
                "events": {
                    "type": "array",
                    "items": event,
                    "minItems": 1,
                    "maxItems": settings.events_max_per_request,
                }
            },
            ["events"],
            extra=False,
        ),
        "IngestResponse": _obj(
            {"accepted": INTEGER, "duplicates": INTEGER}, ["accepted", "duplicates"]
        ),
        "DeleteResponse": _obj({"deleted_events": INTEGER}, ["deleted_events"]),
        "Stats": _obj(
            {
                "total_computes": INTEGER,
                "cache_hits": INTEGER,
                "cache_misses": INTEGER,
                "cache_hit_rate": NUMBER,
                "avg_compute_latency_ms": NUMBER,
                "cache_stats": _obj({k: NUMBER for k in CACHE_STATS_FIELDS}),
                "workers": {
                    "type": "array",
                    "items": _obj(
                        {"id": STRING, "computes": INTEGER, "avg_compute_latency_ms": NUMBER}
                    ),
                },
                "messages": _obj(
                    {
                        "malformed": {"type": "object", "additionalProperties": INTEGER},
                        "dropped_replies": INTEGER,
                        "stalled_clients": INTEGER,
                        "backlogged_clients": INTEGER,
                        "backlog_bytes": INTEGER,
                    }
                ),
            },
            [
                "total_computes",
                "cache_hits",
                "cache_misses",
                "cache_hit_rate",
                "avg_compute_latency_ms",
                "cache_stats",
                "workers",
            ],
        ),
        "Definitions": _obj(
            {
                "versions": {"type": "array", "items": STRING},
                "features": {
                    "type": "object",
                    "additionalProperties": {"type": "array", "items": definition},
                },
            },
            ["versions", "features"],
        ),
        "DriftReport": _obj(
            {
                "monitoring_since": {**STRING, "nullable": True},
                "total_tracked": INTEGER,
                "drift_threshold": NUMBER,
                "features_monitored": INTEGER,
                "drifting_features": INTEGER,
                "dropped": INTEGER,
                "status": {
                    "type": "string",
                    "enum": ["ok", "drift_detected", "insufficient_data", "disabled"],
                },
                "drift_details": {
                    "type": "array",
                    "items": _obj(
                        {
                            "feature": STRING,
                            "version": STRING,
                            "drift_score": {**NUMBER, "nullable": True},
                            "ks_statistic": {**NUMBER, "nullable": True},
                            "is_drifting": BOOLEAN,
                            "baseline": moments,
                            "current": moments,
                        }
                    ),
                },
            },
            ["status"],
        ),
        "DriftBaseline": _obj(
            {
                "action": {"type": "string", "enum": ["reset", "entity_ids", "file"]},
                "version": {"type": "string", "enum": versions},
                "entity_ids": {"type": "array", "items": ENTITY_ID},
                "path": STRING,
            },
            ["action"],
            extra=False,
        ),
        "Health": _obj(
            {
                "status": {"type": "string", "enum": ["ok", "degraded", "down"]},
                "workers": _obj({"alive": INTEGER, "expected": INTEGER}),
                "gateway": _obj({"alive": INTEGER, "expected": INTEGER}),
                "broker": {"type": "string", "enum": ["ok", "down"]},
                "drift": {"type": "string", "enum": ["ok", "down", "disabled"]},
                "cache": {"type": "string", "enum": ["ok", "down"]},
                "store": {"type": "string", "enum": ["ok", "unavailable"]},
                "uptime_s": NUMBER,
                "memory": {"type": "object", "additionalProperties": INTEGER},
            },
            ["status", "workers", "gateway", "broker", "drift", "cache", "uptime_s", "memory"],
        ),
        "Cleared": _obj({"cleared": INTEGER}, ["cleared"]),
    }


def openapi_document(settings: Settings) -> dict:
    """The document served at GET /openapi.json."""
    errors_write = (400, 413, *BROKER_ERRORS)
    paths = {
        "/features": {
            "post": _operation(
                "Features of one entity (cached or computed now, or as of a time)",
                _ref("FeatureResponse"),
                (400, 404, 413, *BROKER_ERRORS),
                _ref("FeatureQuery"),
            )
        },
        "/features/batch": {
            "post": _operation(
                "Features of many entities, in request order",
                _ref("BatchResponse"),
                errors_write,
                _ref("BatchQuery"),
            )
        },
        "/features/historical": {
            "post": _operation(
                "Point-in-time features: each row as of its own timestamp",
                _ref("HistoricalResponse"),
                errors_write,
                _ref("HistoricalQuery"),
            )
        },
        "/events": {
            "post": _operation(
                "Ingest events (idempotent by event_id and X-Request-Id)",
                _ref("IngestResponse"),
                (*errors_write, 409),
                _ref("Events"),
            )
        },
        "/entities/{entity_id}": {
            "delete": {
                **_operation(
                    "Delete an entity's events and cached vectors",
                    _ref("DeleteResponse"),
                    (400, *BROKER_ERRORS),
                ),
                "parameters": [
                    {
                        "name": "entity_id",
                        "in": "path",
                        "required": True,
                        "description": "percent-encoded; may contain '/'",
                        "schema": ENTITY_ID,
                    },
                    REQUEST_ID_PARAMETER,
                ],
            }
        },
        "/features/stats": {
            "get": _operation("Computation and cache statistics", _ref("Stats"), BROKER_ERRORS)
        },
        "/features/definitions": {
            "get": _operation("Versions and feature definitions", _ref("Definitions"), ())
        },
        "/drift/report": {
            "get": _operation("The drift report", _ref("DriftReport"), BROKER_ERRORS)
        },
        "/drift/baseline": {
            "post": _operation(
                "Reset or set the drift baseline",
                {"type": "object"},
                errors_write,
                _ref("DriftBaseline"),
            )
        },
        "/health": {
            "get": {
                **_operation("Liveness of every process", _ref("Health"), ()),
                "responses": {
                    "200": {"description": "ok or degraded", "content": _json(_ref("Health"))},
                    **_errors(400),
                    "503": {
                        "description": "down: no compute worker",
                        "content": _json(_ref("Health")),
                    },
                },
            }
        },
        "/cache/clear": {"post": _operation("Empty the feature cache", _ref("Cleared"), ())},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "parameters": [REQUEST_ID_PARAMETER],
                "responses": {
                    "200": {
                        "description": "text exposition format 0.0.4",
                        "content": {"text/plain": {"schema": STRING}},
                    },
                    **_errors(400),
                },
            }
        },
        "/openapi.json": {
            "get": _operation("This document", {"type": "object"}, (), ok_description="OpenAPI 3")
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "featurestore",
            "version": "1",
            "description": "Feature store HTTP API. Versions: "
            + ", ".join(f"{v} ({len(REGISTRY[v].features)} features)" for v in settings.versions),
        },
        "paths": paths,
        "components": {"schemas": _schemas(settings)},
        "x-error-codes": {c.value: HTTP_STATUS[c] for c in Code},
    }
