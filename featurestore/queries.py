"""Request checking shared by every entry point (HTTP gateway, ZeroMQ broker, workers).

Each `parse_*` takes the decoded JSON/msgpack body of a request and the settings and returns a
small plan, or raises the `ServiceError` of SPEC §5. Views (which features, in which order,
which are integers) are built once per (version, selection) and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import feature_set
from featurestore.features.vectors import VectorView
from featurestore.timestamps import TimestampError, now_ms, parse_timestamp
from featurestore.validation import identifier_problem

VIEW_CACHE_SIZE = 1024


@dataclass(frozen=True)
class FeatureQuery:
    """What to compute and return: version, selected features, and `as_of` (None = online)."""

    view: VectorView
    as_of_ms: int | None

    @property
    def version(self) -> str:
        return self.view.version


@dataclass(frozen=True)
class GetPlan:
    entity_id: str
    query: FeatureQuery


@dataclass(frozen=True)
class BatchPlan:
    entity_ids: list[str]
    query: FeatureQuery


@dataclass(frozen=True)
class HistoricalPlan:
    entity_ids: list[str]
    timestamps: np.ndarray  # int64 epoch ms, one per row
    query: FeatureQuery


def invalid(message: str, **extra: Any) -> ServiceError:
    return ServiceError(Code.INVALID_REQUEST, message, **extra)


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def check_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = [k for k in body if k not in allowed]
    if unknown:
        raise invalid(
            f"unknown field(s): {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}"
        )


def entity_id_of(value: Any, field: str = "entity_id") -> str:
    if value is None:
        raise invalid(f"'{field}' is required")
    problem = identifier_problem(value)
    if problem:
        raise invalid(f"'{field}' {problem}")
    return value


@lru_cache(maxsize=VIEW_CACHE_SIZE)
def _view(version: str, names: tuple[str, ...]) -> VectorView:
    return VectorView(version, list(names))


def view_of(body: dict[str, Any], settings: Settings) -> VectorView:
    """The version and feature selection of a request, checked against the registry."""
    version = body.get("version")
    if version is None:
        version = settings.feature_version
    elif not isinstance(version, str):
        raise invalid("'version' must be a string")
    if version not in settings.versions:
        raise ServiceError(
            Code.UNKNOWN_VERSION,
            f"unknown version {version!r}",
            unknown=[version],
            valid=list(settings.versions),
        )
    names = body.get("features")
    if names is None or (isinstance(names, list) and not names):  # absent/null/empty: all
        return _view(version, ())
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise invalid("'features' must be a list of feature names")
    unknown = feature_set(version).unknown(names)
    if unknown:
        raise ServiceError(
            Code.UNKNOWN_FEATURE,
            f"unknown feature(s) in {version}: {', '.join(unknown)}",
            unknown=unknown,
            valid=feature_set(version).names,
        )
    return _view(version, tuple(names))


def as_of_of(body: dict[str, Any]) -> int | None:
    value = body.get("as_of")
    if value is None:
        return None
    try:
        as_of = parse_timestamp(value)
    except TimestampError as exc:
        raise invalid(f"'as_of' {exc}") from None
    if as_of > now_ms():
        raise invalid("'as_of' is later than now")
    return as_of


def _id_list(value: Any, field: str, limit: int, limit_name: str) -> list[str]:
    if not isinstance(value, list):
        raise invalid(f"'{field}' must be a list of entity ids")
    if not value:
        raise invalid(f"'{field}' must not be empty")
    if len(value) > limit:
        raise ServiceError(
            Code.BATCH_TOO_LARGE, f"{len(value)} {field} exceed {limit_name} ({limit})", limit=limit
        )
    for index, item in enumerate(value):
        problem = identifier_problem(item)
        if problem:
            raise invalid(f"'{field}[{index}]' {problem}")
    return value


GET_FIELDS = ("entity_id", "features", "version", "as_of")
BATCH_FIELDS = ("entity_ids", "features", "version", "as_of")
HISTORICAL_FIELDS = ("rows", "entity_ids", "timestamps", "features", "version")


def parse_get(body: Any, settings: Settings) -> GetPlan:
    body = require_object(body)
    check_fields(body, GET_FIELDS)
    entity_id = entity_id_of(body.get("entity_id"))
    return GetPlan(entity_id, FeatureQuery(view_of(body, settings), as_of_of(body)))


def parse_batch(body: Any, settings: Settings) -> BatchPlan:
    body = require_object(body)
    check_fields(body, BATCH_FIELDS)
    if "entity_ids" not in body:
        raise invalid("'entity_ids' is required")
    ids = _id_list(
        body["entity_ids"], "entity_ids", settings.batch_max_entities, "BATCH_MAX_ENTITIES"
    )
    return BatchPlan(ids, FeatureQuery(view_of(body, settings), as_of_of(body)))


def parse_historical(body: Any, settings: Settings) -> HistoricalPlan:
    """Rows as [{"entity_id", "timestamp"}...] (HTTP) or columns entity_ids + timestamps."""
    body = require_object(body)
    check_fields(body, HISTORICAL_FIELDS)
    limit = settings.historical_max_rows
    if "rows" in body:
        rows = body["rows"]
        if not isinstance(rows, list):
            raise invalid("'rows' must be a list of {entity_id, timestamp} objects")
        if not rows:
            raise invalid("'rows' must not be empty")
        if len(rows) > limit:
            raise ServiceError(
                Code.BATCH_TOO_LARGE,
                f"{len(rows)} rows exceed HISTORICAL_MAX_ROWS ({limit})",
                limit=limit,
            )
        ids, stamps = _rows(rows)
    elif "entity_ids" in body and "timestamps" in body:
        ids = _id_list(body["entity_ids"], "entity_ids", limit, "HISTORICAL_MAX_ROWS")
        raw = body["timestamps"]
        if not isinstance(raw, list) or len(raw) != len(ids):
            raise invalid("'timestamps' must be a list as long as 'entity_ids'")
        stamps = [_row_timestamp(v, i) for i, v in enumerate(raw)]
    else:
        raise invalid("'rows' is required")
    return HistoricalPlan(
        ids, np.array(stamps, dtype=np.int64), FeatureQuery(view_of(body, settings), None)
    )


def _row_timestamp(value: Any, index: int) -> int:
    try:
        return parse_timestamp(value)
    except TimestampError as exc:
        raise invalid(f"'rows[{index}].timestamp' {exc}") from None


def _rows(rows: list) -> tuple[list[str], list[int]]:
    ids: list[str] = []
    stamps: list[int] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or "entity_id" not in row or "timestamp" not in row:
            raise invalid(f"'rows[{index}]' must be an object with entity_id and timestamp")
        if len(row) != 2:
            raise invalid(f"'rows[{index}]' has unknown fields; allowed: entity_id, timestamp")
        ids.append(entity_id_of(row["entity_id"], f"rows[{index}].entity_id"))
        stamps.append(_row_timestamp(row["timestamp"], index))
    return ids, stamps


def parse_delete(body: Any) -> str:
    body = require_object(body)
    check_fields(body, ("entity_id",))
    return entity_id_of(body.get("entity_id"))
