"""The OpenAPI 3 document of the HTTP API (SPEC §5), built once at start-up."""

from __future__ import annotations

from typing import Any

from featurestore.config import Settings
from featurestore.errors import HTTP_STATUS, Code
from featurestore.features.registry import REGISTRY

TIMESTAMP = {
    "oneOf": [{"type": "integer", "minimum": 0}, {"type": "string"}],
    "description": "epoch milliseconds or an ISO-8601 string (UTC without offset)",
}
ENTITY_ID = {"type": "string", "minLength": 1, "description": "1-256 UTF-8 bytes"}
FEATURE_NAMES = {
    "type": "array",
    "items": {"type": "string"},
    "description": "feature names; absent or empty = all, in registry order",
}
VALUE = {"oneOf": [{"type": "number"}, {"type": "integer"}], "nullable": True}
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
    400: "invalid_json, invalid_request, unknown_feature or unknown_version",
    404: "entity_not_found (single /features) or not_found (route)",
    405: "method_not_allowed",
    413: "body_too_large or batch_too_large",
    500: "internal",
    503: "overloaded (with Retry-After) or no_workers",
    504: "timeout",
}


def _errors(*statuses: int) -> dict:
    return {
        str(s): {"description": ERROR_DESCRIPTIONS[s], "content": _json(_ref("Error"))}
        for s in statuses
    }


BROKER_ERRORS = (500, 503, 504)


def _operation(
    summary: str,
    ok: dict,
    statuses: tuple[int, ...],
    body: dict | None = None,
    ok_description: str = "OK",
) -> dict:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [
            {
                "name": "X-Request-Id",
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
            }
        ],
        "responses": {
            "200": {"description": ok_description, "content": _json(ok)},
            **_errors(*statuses),
        },
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(body)}
    return operation


def _schemas(settings: Settings) -> dict:
    versions = list(settings.versions)
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
            "timestamp": TIMESTAMP,
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
            "category": {"type": "string", "minLength": 1, "nullable": True},
            "event_id": {"type": "string", "minLength": 1, "nullable": True},
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
            {"error": {"type": "string", "enum": [c.value for c in Code]}, "message": STRING},
            ["error", "message"],
        ),
        "FeatureQuery": _obj(
            {
                "entity_id": ENTITY_ID,
                "features": FEATURE_NAMES,
                "version": {"type": "string", "enum": versions},
                "as_of": TIMESTAMP,
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
                "version": {"type": "string", "enum": versions},
                "as_of": TIMESTAMP,
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
                "version": {"type": "string", "enum": versions},
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
                "cache_stats": _obj(
                    {
                        k: NUMBER
                        for k in (
                            "size",
                            "max_size",
                            "hit_rate",
                            "utilization",
                            "evictions",
                            "expirations",
                            "memory_bytes",
                        )
                    }
                ),
                "workers": {
                    "type": "array",
                    "items": _obj(
                        {"id": STRING, "computes": INTEGER, "avg_compute_latency_ms": NUMBER}
                    ),
                },
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
                "broker": {"type": "string", "enum": ["ok", "down"]},
                "drift": {"type": "string", "enum": ["ok", "down", "disabled"]},
                "cache": {"type": "string", "enum": ["ok", "down"]},
                "uptime_s": NUMBER,
                "memory": {"type": "object", "additionalProperties": INTEGER},
            },
            ["status", "workers", "broker", "drift", "cache", "uptime_s", "memory"],
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
                errors_write,
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
                        "schema": {"type": "string", "minLength": 1},
                    },
                    {
                        "name": "X-Request-Id",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[!-~]{1,128}$"},
                    },
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
                "responses": {
                    "200": {
                        "description": "text exposition format",
                        "content": {"text/plain": {"schema": STRING}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {
                    "200": {"description": "OpenAPI 3", "content": _json({"type": "object"})}
                },
            }
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
