"""What a decoded request may not be, checked once (SPEC §3, §4, §5): identifiers, versions and
feature names, timestamps, `as_of` not later than now, count limits. Each `check_*` takes the
typed request and the settings and returns a small plan, or raises the catalogue's error.
Views (which features, in which order, which are integers) are built once per (version,
selection) and reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from featurestore.config import Settings
from featurestore.definitions.model import FeatureSet
from featurestore.errors import Code, ServiceError
from featurestore.features.vectors import VectorView
from featurestore.timestamps import TimestampError, now_ms, parse_timestamp
from featurestore.validation.decoding import invalid
from featurestore.validation.identifiers import MAX_ID_BYTES, identifier_problem
from featurestore.wire.frames import get_array
from featurestore.wire.messages import (
    BatchRequest,
    ComputeRequest,
    GetRequest,
    HistoricalRequest,
    HistoricalRows,
)

VIEW_CACHE_SIZE = 1024
ONLINE_CLOCK_SKEW_MS = 60_000  # how far an online T may be from the broker's clock


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


def entity_id_of(value: Any, field: str = "entity_id") -> str:
    problem = identifier_problem(value)
    if problem:
        raise invalid(f"'{field}' {problem}")
    return value


@lru_cache(maxsize=VIEW_CACHE_SIZE)
def _view(features: FeatureSet, names: tuple[str, ...]) -> VectorView:
    return VectorView(features, list(names))


def version_of(version: str | None, settings: Settings) -> str:
    """The version asked for (FEATURE_VERSION when none), if this service serves it."""
    if version is None:
        return settings.default_version
    if version not in settings.versions:
        raise ServiceError(
            Code.UNKNOWN_VERSION,
            f"unknown version {version!r}",
            unknown=[version],
            valid=list(settings.versions),
        )
    return version


def view_of(version: str | None, names: list[str] | None, settings: Settings) -> VectorView:
    """The version and feature selection of a request, checked against the registry."""
    version = version_of(version, settings)
    features = settings.definitions.versions[version]
    if not names:  # absent, null or empty: all
        return _view(features, ())
    unknown = features.unknown(names)
    if unknown:
        raise ServiceError(
            Code.UNKNOWN_FEATURE,
            f"unknown feature(s) in {version}: {', '.join(unknown)}",
            unknown=unknown,
            valid=features.names,
        )
    return _view(features, tuple(names))


def as_of_of(value: Any) -> int | None:
    if value is None:
        return None
    try:
        as_of = parse_timestamp(value)
    except TimestampError as exc:
        raise invalid(f"'as_of' {exc}") from None
    if as_of > now_ms():
        raise invalid("'as_of' is later than now")
    return as_of


def _id_list(ids: list[str], field: str, limit: int, limit_name: str) -> list[str]:
    if not ids:
        raise invalid(f"'{field}' must not be empty")
    _within(len(ids), field, limit, limit_name)
    for index, item in enumerate(ids):
        problem = identifier_problem(item)
        if problem:
            raise invalid(f"'{field}[{index}]' {problem}")
    return ids


def _within(count: int, what: str, limit: int, limit_name: str) -> None:
    if count > limit:
        raise ServiceError(
            Code.BATCH_TOO_LARGE, f"{count} {what} exceed {limit_name} ({limit})", limit=limit
        )


def check_get(request: GetRequest, settings: Settings) -> GetPlan:
    entity_id = entity_id_of(request.entity_id)
    view = view_of(request.version, request.features, settings)
    return GetPlan(entity_id, FeatureQuery(view, as_of_of(request.as_of)))


def check_batch(request: BatchRequest, settings: Settings) -> BatchPlan:
    ids = _id_list(
        request.entity_ids, "entity_ids", settings.batch_max_entities, "BATCH_MAX_ENTITIES"
    )
    view = view_of(request.version, request.features, settings)
    return BatchPlan(ids, FeatureQuery(view, as_of_of(request.as_of)))


def check_historical(request: HistoricalRequest, settings: Settings) -> HistoricalPlan:
    """Rows as [{"entity_id", "timestamp"}...] (HTTP) or columns entity_ids + timestamps."""
    limit = settings.historical_max_rows
    if request.rows is not None:
        if not request.rows:
            raise invalid("'rows' must not be empty")
        _within(len(request.rows), "rows", limit, "HISTORICAL_MAX_ROWS")
        ids = [
            entity_id_of(r.entity_id, f"rows[{i}].entity_id") for i, r in enumerate(request.rows)
        ]
        stamps = [_row_timestamp(r.timestamp, i) for i, r in enumerate(request.rows)]
    elif request.entity_ids is not None and request.timestamps is not None:
        ids = _id_list(request.entity_ids, "entity_ids", limit, "HISTORICAL_MAX_ROWS")
        if len(request.timestamps) != len(ids):
            raise invalid("'timestamps' must be a list as long as 'entity_ids'")
        stamps = [_row_timestamp(v, i) for i, v in enumerate(request.timestamps)]
    else:
        raise invalid("'rows' is required")
    view = view_of(request.version, request.features, settings)
    return HistoricalPlan(ids, np.array(stamps, dtype=np.int64), FeatureQuery(view, None))


def _row_timestamp(value: Any, index: int) -> int:
    try:
        return parse_timestamp(value)
    except TimestampError as exc:
        raise invalid(f"'rows[{index}].timestamp' {exc}") from None


# ------------------------------------------------------- the already validated forms
def check_compute(request: ComputeRequest, settings: Settings) -> ComputeRequest:
    """What the broker itself must rely on in a ComputeRequest (the gateway checked each
    identifier): a version it serves, a bounded count of ids that fit the cache's keys, and
    for an online computation a T near its clock (a vector cached as of long ago would be
    served as current)."""
    version_of(request.version, settings)
    _checked_keys(request.entity_ids, settings.batch_max_entities, "BATCH_MAX_ENTITIES")
    now = now_ms()
    if request.online and abs(request.t_ms - now) > ONLINE_CLOCK_SKEW_MS:
        raise invalid("'t_ms' of an online computation must be now")
    if not request.online and not 0 <= request.t_ms <= now:
        raise invalid("'t_ms' must be an epoch millisecond timestamp, not later than now")
    return request


def check_historical_rows(
    request: HistoricalRows, blocks: list, settings: Settings
) -> HistoricalPlan:
    version = version_of(request.version, settings)
    _checked_keys(request.entity_ids, settings.historical_max_rows, "HISTORICAL_MAX_ROWS")
    stamps = get_array(blocks, request.timestamps)
    if stamps.dtype != np.int64 or stamps.shape != (len(request.entity_ids),):
        raise invalid("'timestamps' must be an int64 block as long as 'entity_ids'")
    return HistoricalPlan(request.entity_ids, stamps, FeatureQuery(_view(version, ()), None))


def _checked_keys(ids: Sequence[str], limit: int, limit_name: str) -> None:
    if not ids:
        raise invalid("'entity_ids' must not be empty")
    _within(len(ids), "entity_ids", limit, limit_name)
    if max(map(len, map(str.encode, ids))) > MAX_ID_BYTES:  # C speed: no per-id Python
        raise invalid(f"an entity id is longer than {MAX_ID_BYTES} UTF-8 bytes")
