"""Broker <-> worker and drift messages on the back end, and the vectors workers publish.

Back end (DEALER -> ROUTER; the first frame is a one-byte command):
    READY      [W_READY, msgpack Ready]
    HEARTBEAT  [W_HEARTBEAT, msgpack Heartbeat]               both ways
    JOB        [W_JOB, job_id, msgpack JobHeader, payload, *blocks]
    RESULT     [W_RESULT, job_id, b"ok" | b"error", body, *blocks]
    DISCONNECT [W_DISCONNECT]                                 broker -> worker: register again
A job's payload is the request's own (`messages.PAYLOAD_TYPES[op]`, encoded): a client
payload the broker does not serve itself travels on undecoded, and the worker decodes it
once. A result's body is the operation's answer (`messages.ANSWER_TYPES[op]`) or an
ErrorBody; the broker forwards it to the client as it is, or folds it into a batch.

Vectors (workers PUB -> drift SUB): [TOPIC_VECTORS, msgpack Vectors, block].
Reports and alerts (drift PUB): [TOPIC_REPORT, JSON DriftReport], [TOPIC_ALERT, JSON Alert].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from featurestore.errors import ServiceError
from featurestore.wire.envelope import encode, error_body
from featurestore.wire.frames import (
    STATUS_OK,
    W_HEARTBEAT,
    W_JOB,
    W_READY,
    W_RESULT,
    ArrayRef,
    Op,
    ProtocolError,
    get_array,
    put_array,
)
from featurestore.wire.messages import Answer, Message

OK = STATUS_OK.encode()
ERROR = b"error"
TOPIC_VECTORS = b"vectors"
TOPIC_REPORT = b"report"
TOPIC_ALERT = b"alert"


class Ready(msgspec.Struct, forbid_unknown_fields=True):
    service: str
    worker_id: str
    pid: int


class Heartbeat(msgspec.Struct):
    """A peer's heartbeat: who it is (so a restarted broker can register it) and its figures
    (counters the broker sums into `stats`); the broker's own heartbeat is empty."""

    service: str | None = None
    worker_id: str | None = None
    pid: int | None = None
    figures: dict[str, Any] = msgspec.field(default_factory=dict)


class JobHeader(msgspec.Struct, array_like=True):
    op: str
    request_id: str


class Vectors(msgspec.Struct, forbid_unknown_fields=True):
    worker_id: str
    seq: int
    version: str
    values: ArrayRef


class Alert(msgspec.Struct):
    feature: str
    version: str
    is_drifting: bool
    drift_score: float | None
    at: str


_READY = msgspec.msgpack.Decoder(Ready)
_HEARTBEAT = msgspec.msgpack.Decoder(Heartbeat)
_JOB_HEADER = msgspec.msgpack.Decoder(JobHeader)
_VECTORS = msgspec.msgpack.Decoder(Vectors)
EMPTY_HEARTBEAT = encode(Heartbeat())


def _decoded(decoder: msgspec.msgpack.Decoder, data: Any, what: str) -> Any:
    try:
        return decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError(f"{what}: {exc}") from None


# ------------------------------------------------------------------------------ control
def ready_frames(service: str, worker_id: str, pid: int) -> list:
    return [W_READY, encode(Ready(service, worker_id, pid))]


def heartbeat_frames(heartbeat: Heartbeat | None = None) -> list:
    return [W_HEARTBEAT, EMPTY_HEARTBEAT if heartbeat is None else encode(heartbeat)]


def decode_ready(frame: Any) -> Ready:
    ready = _decoded(_READY, frame, "a READY")
    if not ready.service or ready.pid < 0:
        raise ProtocolError("a READY must name a service and a non-negative pid")
    return ready


def decode_heartbeat(frame: Any) -> Heartbeat:
    heartbeat = _decoded(_HEARTBEAT, frame, "a HEARTBEAT")
    if heartbeat.pid is not None and heartbeat.pid < 0:
        raise ProtocolError("a HEARTBEAT's pid must be non-negative")
    return heartbeat


# --------------------------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """A job as a worker received it: the payload still encoded; the handler of `op`
    decodes it once into its type (`validation.decoding.decoded_payload`)."""

    job_id: bytes
    op: Op
    request_id: str
    payload: bytes | memoryview
    blocks: list


def job_frames(
    job_id: bytes, op: Op, request_id: str, payload: Message | msgspec.Raw, blocks: list
) -> list:
    body = payload if isinstance(payload, msgspec.Raw) else encode(payload)
    return [W_JOB, job_id, encode(JobHeader(op.value, request_id)), body, *blocks]


def decode_job(frames: list) -> Job:
    """[job_id, header, payload, *blocks] after the W_JOB command frame; ProtocolError if
    malformed (with the job id, when it could be read, as `request_id`)."""
    if not frames:
        raise ProtocolError("a job without a job id")
    job_id = bytes(frames[0])
    if len(frames) < 3:
        raise ProtocolError("a job without its header and payload", job_id.hex())
    try:
        header = _JOB_HEADER.decode(frames[1])
        op = Op(header.op)
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
        raise ProtocolError("a job header is not [op, request_id]", job_id.hex()) from None
    return Job(job_id, op, header.request_id, frames[2], list(frames[3:]))


def result_frames(job_id: bytes, answer: Answer, blocks: list | None = None) -> list:
    return [W_RESULT, job_id, OK, encode(answer), *(blocks or [])]


def error_result_frames(job_id: bytes, error: ServiceError) -> list:
    return [W_RESULT, job_id, ERROR, encode(error_body(error, with_status=True))]


# ------------------------------------------------------------------------------ vectors
def vectors_frames(worker_id: str, seq: int, version: str, values: np.ndarray) -> list:
    """One batch of full vectors a worker computed online."""
    blocks: list = []
    ref = put_array(blocks, values)
    return [TOPIC_VECTORS, encode(Vectors(worker_id, seq, version, ref)), *blocks]


def decode_vectors(frames: list, widths: dict[str, int]) -> tuple[str, int, str, np.ndarray]:
    """(worker id, seq, version, values) of a vector message; ProtocolError unless it is
    well formed: a known version and a 2-D float64 block of that version's width."""
    if len(frames) < 2:
        raise ProtocolError("a vector message without its header")
    header = _decoded(_VECTORS, frames[1], "a vector header")
    if header.seq < 0:
        raise ProtocolError("a vector message's seq must be a non-negative integer")
    if header.version not in widths:
        raise ProtocolError(f"vectors of an unknown version {header.version!r}")
    values = get_array(list(frames[2:]), header.values)
    width = widths[header.version]
    if values.dtype != np.float64 or values.ndim != 2 or values.shape[1] != width:
        raise ProtocolError(
            f"{header.version} vectors must be a float64 block of {width} columns, "
            f"got {values.dtype} {values.shape}"
        )
    return header.worker_id, header.seq, header.version, values
