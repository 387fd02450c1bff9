"""The typed requests and answers of the API (SPEC §5, §6, §13): one msgspec Struct each.

A request decodes and is structurally checked in one pass (`decode_request`): object-ness,
field names, required fields, the types of lists and strings. What a type cannot say (an
identifier's UTF-8 bytes and control characters, timestamps, known versions and features,
count limits) is checked once, in `featurestore.validation`, which turns every failure into
the §5 catalogue. Answers are the same Structs on both transports: msgpack on ZeroMQ
(`ArrayRef` blocks for bulk numbers) and JSON over HTTP; the OpenAPI document is generated
from them (gateway/openapi.py).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from featurestore.errors import MAX_REPORTED_ERRORS, Code
from featurestore.timestamps import MAX_TIMESTAMP_MS
from featurestore.validation.identifiers import MAX_ID_BYTES
from featurestore.wire.frames import ArrayRef, Op

# ---------------------------------------------------------------------------- field types
# JSON Schema for what the decoder leaves to featurestore.validation (better messages there).
TIMESTAMP_SCHEMA = {
    "anyOf": [
        {"type": "integer", "minimum": 0, "maximum": MAX_TIMESTAMP_MS - 1},
        {"type": "string", "minLength": 10, "maxLength": 64, "pattern": "^[0-9]{4}"},
    ],
    "description": "epoch milliseconds (a number with an integral value) or an ISO-8601 "
    "string (UTC without offset; below the millisecond floored)",
}
IDENTIFIER_SCHEMA = {
    "minLength": 1,
    "maxLength": MAX_ID_BYTES,
    "pattern": "^[^\\u0000-\\u001f]+$",
    "description": "1-256 UTF-8 bytes, no control characters",
}
Timestamp = Annotated[Any, Meta(extra_json_schema=TIMESTAMP_SCHEMA)]
Identifier = Annotated[str, Meta(extra_json_schema=IDENTIFIER_SCHEMA)]
FeatureNames = Annotated[
    list[str] | None,
    Meta(description="feature names; absent, null or empty = all, in registry order"),
]
FeatureValue = Annotated[float | int | None, Meta(description="null when degenerate")]
FeatureMap = dict[str, FeatureValue]
Status = Literal["ok", "not_found"]


class Message(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Base of every request: unknown fields are refused, absent optional fields omitted."""


# ------------------------------------------------------------------------------- requests
class GetRequest(Message):
    entity_id: Identifier
    features: FeatureNames = None
    version: str | None = None
    as_of: Timestamp | None = None


class BatchRequest(Message):
    entity_ids: list[Identifier]
    features: FeatureNames = None
    version: str | None = None
    as_of: Timestamp | None = None


class Row(Message):
    entity_id: Identifier
    timestamp: Timestamp


class HistoricalRequest(Message):
    """Rows as [{entity_id, timestamp}] (HTTP), or as two lists (ZeroMQ clients)."""

    rows: list[Row] | None = None
    entity_ids: list[Identifier] | None = None
    timestamps: list[Timestamp] | None = None
    features: FeatureNames = None
    version: str | None = None


class IngestRequest(Message):
    # event objects: checked field by field, with {index, field, reason} items
    events: list[Any]


class DeleteRequest(Message):
    entity_id: Identifier


class EmptyRequest(Message):
    """stats, health, definitions, clear, drift_report: no fields."""


class DriftBaselineRequest(Message):
    action: str | None = None  # checked with the valid actions listed
    version: str | None = None
    entity_ids: list[str] | None = None
    path: str | None = None


# Already validated forms (the gateway sends these; the broker routes them as they are).
class ComputeRequest(Message):
    """Full vectors of distinct entities as of one T (online: cached and published)."""

    version: str
    entity_ids: list[Identifier]
    t_ms: int
    online: bool


class HistoricalRows(Message):
    """Validated historical rows: entity ids and an int64 block of their T."""

    version: str
    entity_ids: list[Identifier]
    timestamps: ArrayRef


class IngestColumns(Message):
    """Validated events as columns: int64 timestamps and a float64 array per numeric field
    (NaN = missing) as blocks, a list per categorical field (null = missing)."""

    entity_id: list[str]
    ts: ArrayRef
    event_id: list[str | None]
    numeric: dict[str, ArrayRef] = {}
    categorical: dict[str, list[str | None]] = {}


PAYLOAD_TYPES: dict[Op, type[Message]] = {
    Op.GET: GetRequest,
    Op.BATCH: BatchRequest,
    Op.HISTORICAL: HistoricalRequest,
    Op.INGEST: IngestRequest,
    Op.DELETE: DeleteRequest,
    Op.STATS: EmptyRequest,
    Op.CLEAR: EmptyRequest,
    Op.HEALTH: EmptyRequest,
    Op.DEFINITIONS: EmptyRequest,
    Op.DRIFT_REPORT: EmptyRequest,
    Op.DRIFT_BASELINE: DriftBaselineRequest,
    Op.COMPUTE: ComputeRequest,
    Op.HISTORICAL_ROWS: HistoricalRows,
    Op.INGEST_COLUMNS: IngestColumns,
    Op.HISTORICAL_CHUNK: HistoricalRows,
}
_JSON_DECODERS = {op: msgspec.json.Decoder(t) for op, t in PAYLOAD_TYPES.items()}
_MSGPACK_DECODERS = {op: msgspec.msgpack.Decoder(t) for op, t in PAYLOAD_TYPES.items()}


def decode_json(op: Op, body: bytes) -> Message:
    """An HTTP body as the request of `op` (msgspec errors; see validation.decoded)."""
    return _JSON_DECODERS[op].decode(body)


def decode_msgpack(op: Op, payload: bytes | memoryview) -> Message:
    """A ZeroMQ payload as the request of `op` (msgspec errors; see validation.decoded)."""
    return _MSGPACK_DECODERS[op].decode(payload)


# -------------------------------------------------------------------------------- answers
class Answer(Struct, omit_defaults=True):
    """Base of every answer."""


class GetAnswer(Answer):
    entity_id: str
    features: FeatureMap
    version: str
    cached: bool
    timestamp: int
    latency_ms: float | None = None  # HTTP only


class BatchItem(Answer):
    entity_id: str
    features: FeatureMap | None
    status: Status
    cached: bool
    timestamp: int


class BatchAnswer(Answer):
    """POST /features/batch (HTTP)."""

    count: int
    features: list[BatchItem]
    latency_ms: float
    avg_latency_per_entity: float
    timestamp: int


class HistoricalItem(Answer):
    entity_id: str
    timestamp: int
    features: FeatureMap | None
    status: Status


class HistoricalAnswer(Answer):
    """POST /features/historical (HTTP)."""

    count: int
    rows: list[HistoricalItem]
    latency_ms: float


class MatrixAnswer(Answer):
    """A batch or historical result on ZeroMQ: the selected features of every row as one
    float64 block (NaN = null), `found` per row; a batch adds `cached` and `timestamps`."""

    count: int
    version: str
    features: list[str]
    integer: list[bool]  # per feature: an integer-valued feature (JSON integers, int columns)
    values: ArrayRef
    found: ArrayRef
    cached: ArrayRef | None = None
    timestamps: ArrayRef | None = None
    timestamp: int | None = None


class ComputeAnswer(Answer):
    """Full vectors of the entities of a ComputeRequest (or of a historical chunk)."""

    values: ArrayRef
    found: ArrayRef
    t_ms: int | None = None
    computes: int = 0  # for the broker's statistics; not forwarded
    compute_ms: float = 0.0


class IngestAnswer(Answer):
    accepted: int
    duplicates: int


class DeleteAnswer(Answer):
    deleted_events: int


class Cleared(Answer):
    cleared: int


class CacheStats(Answer):
    size: int
    max_size: int
    hit_rate: float
    utilization: float
    evictions: int
    expirations: int
    memory_bytes: int


class WorkerSummary(Answer):
    id: str
    pid: int
    computes: int
    avg_compute_latency_ms: float
    jobs: int
    busy: bool
    ingested: int
    errors: int


class MessageFigures(Answer):
    """What the receivers dropped (SPEC §11)."""

    malformed: dict[str, int]
    dropped_replies: int
    stalled_clients: int
    backlogged_clients: int
    backlog_bytes: int


class Stats(Answer):
    total_computes: int
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    avg_compute_latency_ms: float
    cache_stats: CacheStats
    workers: list[WorkerSummary]
    messages: MessageFigures


class Alive(Answer):
    alive: int
    expected: int


class ListenerHealth(Answer):
    """The change listener of a host sharing its store (SPEC §15; featurestore/nearcache.py)."""

    state: Literal["starting", "connecting", "catching_up", "live", "disconnected", "stopped"]
    fresh: bool  # caught up within max_staleness_ms: cache hits are served
    lag_ms: float | None  # since it last confirmed every change was applied (None: never)
    max_staleness_ms: int
    position: int  # the change sequence number applied last
    reconnects: int
    cache_clears: int
    changes_applied: int
    entities_invalidated: int


class Health(Answer):
    status: Literal["ok", "degraded", "down"]
    workers: Alive
    broker: Literal["ok", "down"]
    drift: Literal["ok", "down", "disabled"]
    cache: Literal["ok", "down"]
    store: Literal["ok", "unavailable"]
    store_backend: Literal["sqlite", "postgresql"]
    uptime_s: float
    memory: dict[str, int]
    listener: ListenerHealth | None = None  # with STORE_URL (a store several hosts share)
    gateway: Alive | None = None  # added by the gateway (HTTP)


class FeatureDefinition(Answer):
    name: str
    kind: Literal["numeric", "categorical", "identifier"]
    type: Literal["int", "float"]
    description: str
    definition: dict[str, Any]  # the feature's table of the definitions file, normalised


class Definitions(Answer):
    versions: list[str]
    features: dict[str, list[FeatureDefinition]]
    hashes: dict[str, str]  # each version's content hash (SHA-256 of its canonical form)


class Moments(Answer):
    mean: float | None
    stdDev: float | None  # camelCase: the name of the report, kept for compatibility
    count: int
    null_fraction: float | None


class DriftDetail(Answer):
    feature: str
    version: str
    drift_score: float | None
    ks_statistic: float | None
    is_drifting: bool
    baseline: Moments
    current: Moments
    statistic: str | None = None  # the registered statistic that decides is_drifting
    threshold: float | None = None  # what its score is compared with


class DriftReport(Answer, kw_only=True):
    monitoring_since: str | None = None
    total_tracked: int | None = None
    drift_threshold: float | None = None
    features_monitored: int | None = None
    drifting_features: int | None = None
    dropped: int | None = None
    status: Literal["ok", "drift_detected", "insufficient_data", "disabled"]
    drift_details: list[DriftDetail] | None = None
    message: str | None = None  # when disabled
    operation: str | None = None


class DriftBaselineAnswer(Answer):
    action: str
    versions: list[str] | None = None
    monitoring_since: str | None = None
    entities: int | None = None
    rows: int | None = None
    timestamp: int | None = None
    features: dict[str, list[str]] | None = None
    status: str | None = None  # when disabled
    message: str | None = None
    operation: str | None = None


class ErrorItem(Answer):
    index: int
    field: str
    reason: str


class ErrorBody(Answer):
    """Every error (SPEC §5): `error` is a code of the catalogue; ZeroMQ adds `status`."""

    error: Code
    message: str
    status: int | None = None
    errors: Annotated[list[ErrorItem], Meta(max_length=MAX_REPORTED_ERRORS)] | None = None
    unknown: list[str] | None = None
    valid: list[str] | None = None
    limit: int | None = None
    retry_after_s: int | None = None
    entity_id: str | None = None


ANSWER_TYPES: dict[Op, type[Answer]] = {
    Op.GET: GetAnswer,
    Op.BATCH: MatrixAnswer,
    Op.HISTORICAL: MatrixAnswer,
    Op.HISTORICAL_ROWS: ComputeAnswer,  # full vectors: the gateway selects
    Op.COMPUTE: ComputeAnswer,
    Op.HISTORICAL_CHUNK: ComputeAnswer,
    Op.INGEST: IngestAnswer,
    Op.INGEST_COLUMNS: IngestAnswer,
    Op.DELETE: DeleteAnswer,
    Op.STATS: Stats,
    Op.HEALTH: Health,
    Op.DEFINITIONS: Definitions,
    Op.CLEAR: Cleared,
    Op.DRIFT_REPORT: DriftReport,
    Op.DRIFT_BASELINE: DriftBaselineAnswer,
}
_ANSWER_DECODERS = {op: msgspec.msgpack.Decoder(t) for op, t in ANSWER_TYPES.items()}
_ERROR_DECODER = msgspec.msgpack.Decoder(ErrorBody)


def decode_answer(op: Op, body: bytes | memoryview) -> Answer:
    """The typed answer of `op` (msgspec.DecodeError / ValidationError if it is not one)."""
    return _ANSWER_DECODERS[op].decode(body)


def decode_error(body: bytes | memoryview) -> ErrorBody:
    return _ERROR_DECODER.decode(body)
