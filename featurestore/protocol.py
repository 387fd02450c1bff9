"""The ZeroMQ wire protocol: every frame of every message, in one module (see PROTOCOL.md).

Client <-> broker (DEALER -> ROUTER front end):
    request  = [header, *blocks]  header = msgpack [VERSION, request_id, op, payload]
    reply    = [header, *blocks]  header = msgpack [VERSION, request_id, "ok" | "error", body]
Broker <-> worker or drift process (DEALER -> ROUTER back end):
    READY     [W_READY, msgpack {service, worker_id, pid}]
    HEARTBEAT [W_HEARTBEAT, msgpack {figures}]        (both ways; broker sends an empty map)
    JOB       [W_JOB, job_id, msgpack [op, payload], *blocks]
    RESULT    [W_RESULT, job_id, reply header, *blocks]
    DISCONNECT[W_DISCONNECT]                           (broker -> worker: register again)
Bulk numbers travel as blocks: raw little-endian buffers referenced from the payload or body by
{"block": i, "dtype": "<f8", "shape": [m, k]} - never one map per entity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack
import numpy as np
import zmq

from featurestore.errors import Code, ServiceError

PROTOCOL_VERSION = 1
STATUS_OK = "ok"
STATUS_ERROR = "error"
MAX_REQUEST_ID_BYTES = 128

# Plain ints: IntFlag arithmetic costs microseconds on the hot path.
POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)
NOBLOCK = int(zmq.NOBLOCK)
ZERO_COPY_MIN_BYTES = 65_536  # below this, copying a frame is cheaper than zero-copy


RCVMORE = int(zmq.RCVMORE)


class TooManyFrames(Exception):
    """A message with more frames than a receiver accepts (ZMQ_MAX_FRAMES); it was read to its
    end and dropped, so the socket is ready for the next one."""

    def __init__(self, count: int, limit: int, kept: list) -> None:
        super().__init__(f"a message of {count} frames; at most ZMQ_MAX_FRAMES ({limit})")
        self.count = count
        self.kept = kept  # the first frames, enough to name the sender (ROUTER identity)


def recv_frames(socket: zmq.Socket, max_frames: int, copy: bool = False) -> list:
    """The next message of `socket`, checking its frame count before any other work: past
    `max_frames` the rest is read without being kept (no list of millions of frames, about
    0.5 µs per frame) and TooManyFrames is raised."""
    recv = socket.recv
    frames = [recv(0, copy)]
    getsockopt = socket.getsockopt
    while getsockopt(RCVMORE):
        if len(frames) >= max_frames:
            raise TooManyFrames(len(frames) + _discard_rest(socket), max_frames, frames[:2])
        frames.append(recv(0, copy))
    return frames


def _discard_rest(socket: zmq.Socket) -> int:
    """Read the remaining frames of the current message; how many."""
    recv = socket.recv
    frame = recv(0, False)
    count = 1
    while frame.more:
        frame = recv(0, False)
        count += 1
    return count


def copy_small(frames: list) -> bool:
    """The `copy` argument for send_multipart: copy unless a frame is large."""
    return all(len(f) < ZERO_COPY_MIN_BYTES for f in frames)


# Service names (the broker routes by these).
SERVICE_FEATURES = "features"
SERVICE_DRIFT = "drift"
SERVICE_BROKER = "broker"

# Back-end commands (first frame of every broker <-> worker message).
W_READY = b"\x01"
W_HEARTBEAT = b"\x02"
W_JOB = b"\x03"
W_RESULT = b"\x04"
W_DISCONNECT = b"\x05"
WORKER_COMMANDS = (W_READY, W_HEARTBEAT, W_JOB, W_RESULT, W_DISCONNECT)


class Op(StrEnum):
    GET = "get"
    BATCH = "batch"
    HISTORICAL = "historical"
    INGEST = "ingest"
    DELETE = "delete"
    STATS = "stats"
    CLEAR = "clear"
    HEALTH = "health"
    DEFINITIONS = "definitions"
    DRIFT_REPORT = "drift_report"
    DRIFT_BASELINE = "drift_baseline"
    # Internal operations: the broker sends these to compute workers only.
    COMPUTE = "compute"
    HISTORICAL_CHUNK = "historical_chunk"


CLIENT_OPS = frozenset(
    {
        Op.GET,
        Op.BATCH,
        Op.HISTORICAL,
        Op.INGEST,
        Op.DELETE,
        Op.STATS,
        Op.CLEAR,
        Op.HEALTH,
        Op.DEFINITIONS,
        Op.DRIFT_REPORT,
        Op.DRIFT_BASELINE,
    }
)
SERVICE_OF: dict[Op, str] = {
    Op.GET: SERVICE_FEATURES,
    Op.BATCH: SERVICE_FEATURES,
    Op.HISTORICAL: SERVICE_FEATURES,
    Op.INGEST: SERVICE_FEATURES,
    Op.DELETE: SERVICE_FEATURES,
    Op.COMPUTE: SERVICE_FEATURES,
    Op.HISTORICAL_CHUNK: SERVICE_FEATURES,
    Op.STATS: SERVICE_BROKER,
    Op.CLEAR: SERVICE_BROKER,
    Op.HEALTH: SERVICE_BROKER,
    Op.DEFINITIONS: SERVICE_BROKER,
    Op.DRIFT_REPORT: SERVICE_DRIFT,
    Op.DRIFT_BASELINE: SERVICE_DRIFT,
}


class ProtocolError(ServiceError):
    """A message that cannot be decoded; carries the request id when it could be read."""

    def __init__(self, message: str, request_id: str = "", code: Code = Code.INVALID_REQUEST):
        super().__init__(code, message)
        self.request_id = request_id


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# ----------------------------------------------------------------------------- arrays
def put_array(blocks: list, array: np.ndarray) -> dict[str, Any]:
    """Append `array` as a raw block; the reference to put in a payload or body."""
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    blocks.append(memoryview(contiguous).cast("B") if contiguous.size else b"")
    return {"block": len(blocks) - 1, "dtype": contiguous.dtype.str, "shape": list(array.shape)}


_ALLOWED_DTYPES = frozenset({"<f8", "<i8", "<i4", "|b1", "|u1", "<u8"})


def get_array(blocks: list, ref: Any) -> np.ndarray:
    """The array a reference points to (zero-copy, read-only); ProtocolError if malformed."""
    try:
        dtype = np.dtype(ref["dtype"])
        shape = tuple(int(n) for n in ref["shape"])
        block = blocks[int(ref["block"])]
    except (KeyError, TypeError, ValueError, IndexError):
        raise ProtocolError("malformed array reference") from None
    if ref["dtype"] not in _ALLOWED_DTYPES or any(n < 0 for n in shape):
        raise ProtocolError(f"unsupported array {ref['dtype']!r} {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if len(block) != count * dtype.itemsize:
        raise ProtocolError("array block size does not match its shape")
    return np.frombuffer(block, dtype=dtype, count=count).reshape(shape)


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True)
class Request:
    request_id: str
    op: Op
    payload: dict[str, Any]
    blocks: list = field(default_factory=list)

    def encode(self) -> list:
        return [
            pack([PROTOCOL_VERSION, self.request_id, self.op.value, self.payload]),
            *self.blocks,
        ]

    @classmethod
    def decode(cls, frames: list) -> Request:
        """Parse a client request; ProtocolError (with the request id if readable) otherwise."""
        if not frames:
            raise ProtocolError("empty message")
        try:
            header = unpack(frames[0])
        except (ValueError, msgpack.UnpackException, TypeError) as exc:
            raise ProtocolError(f"header is not msgpack ({type(exc).__name__})") from None
        if not isinstance(header, list) or len(header) != 4:
            raise ProtocolError("header must be [version, request_id, op, payload]")
        version, request_id, op, payload = header
        if (
            not isinstance(request_id, str)
            or not request_id
            or len(request_id.encode("utf-8", "replace")) > MAX_REQUEST_ID_BYTES
        ):
            raise ProtocolError(f"request_id must be a string of 1-{MAX_REQUEST_ID_BYTES} bytes")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})",
                request_id,
            )
        try:
            operation = Op(op)
        except ValueError:
            raise ProtocolError(f"unknown operation {op!r}", request_id) from None
        if operation not in CLIENT_OPS:
            raise ProtocolError(f"unknown operation {op!r}", request_id)
        if not isinstance(payload, dict):
            raise ProtocolError("payload must be a map", request_id)
        return cls(request_id, operation, payload, list(frames[1:]))


@dataclass(frozen=True)
class Reply:
    request_id: str
    body: dict[str, Any]
    ok: bool = True
    blocks: list = field(default_factory=list)

    @classmethod
    def error(cls, request_id: str, error: ServiceError) -> Reply:
        return cls(request_id, {"status": error.http_status, **error.body()}, ok=False)

    def encode(self) -> list:
        status = STATUS_OK if self.ok else STATUS_ERROR
        return [pack([PROTOCOL_VERSION, self.request_id, status, self.body]), *self.blocks]

    @classmethod
    def decode(cls, frames: list) -> Reply:
        try:
            version, request_id, status, body = unpack(frames[0])
        except (ValueError, TypeError, msgpack.UnpackException, IndexError):
            raise ProtocolError("reply header is not [version, request_id, status, body]") from None
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"reply protocol version {version!r}", request_id)
        return cls(request_id, body, status == STATUS_OK, list(frames[1:]))

    def raise_for_error(self) -> None:
        """Turn an error reply into the ServiceError it carries."""
        if not self.ok:
            extra = {k: v for k, v in self.body.items() if k not in ("error", "message", "status")}
            try:
                code = Code(self.body.get("error"))
            except ValueError:
                code = Code.INTERNAL
            raise ServiceError(code, str(self.body.get("message", "")), **extra)


# ------------------------------------------------------------------ back end (workers)
def job_frames(job_id: bytes, op: Op, payload: dict[str, Any], blocks: list) -> list:
    return [W_JOB, job_id, pack([op.value, payload]), *blocks]


def decode_job(frames: list) -> tuple[bytes, Op, dict[str, Any], list]:
    """[job_id, header, *blocks] after the W_JOB command frame; ProtocolError if malformed
    (with the job id, when it could be read, as `request_id`)."""
    if not frames:
        raise ProtocolError("a job without a job id")
    job_id = bytes(frames[0])
    try:
        op, payload = unpack(frames[1])
        operation = Op(op)
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        raise ProtocolError("a job header is not [op, payload]", job_id.hex()) from None
    if not isinstance(payload, dict):
        raise ProtocolError("a job payload must be a map", job_id.hex())
    return job_id, operation, payload, list(frames[2:])


def result_frames(job_id: bytes, reply: Reply) -> list:
    return [W_RESULT, job_id, *reply.encode()]


def ready_frames(service: str, worker_id: str, pid: int) -> list:
    return [W_READY, pack({"service": service, "worker_id": worker_id, "pid": pid})]


def heartbeat_frames(figures: dict[str, Any] | None = None) -> list:
    return [W_HEARTBEAT, pack(figures or {})]


# ------------------------------------------------------------ computed vectors (PUB/SUB)
TOPIC_VECTORS = b"vectors"


def vectors_frames(worker_id: str, seq: int, version: str, values: np.ndarray) -> list:
    """[TOPIC_VECTORS, header, block]: one batch of full vectors a worker computed online."""
    blocks: list = []
    ref = put_array(blocks, values)
    header = pack({"worker_id": worker_id, "seq": seq, "version": version, "values": ref})
    return [TOPIC_VECTORS, header, *blocks]


def decode_vectors(frames: list, widths: dict[str, int]) -> tuple[str, int, str, np.ndarray]:
    """(worker id, seq, version, values) of a vector message; ProtocolError unless it is
    well formed: a known version and a 2-D float64 block of that version's width."""
    if len(frames) < 2:
        raise ProtocolError("a vector message without its header")
    try:
        header = unpack(frames[1])
        worker_id, seq, version = header["worker_id"], header["seq"], header["version"]
        ref = header["values"]
    except (ValueError, TypeError, KeyError, msgpack.UnpackException):
        raise ProtocolError("a vector header is not {worker_id, seq, version, values}") from None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ProtocolError("a vector message's seq must be a non-negative integer")
    if not isinstance(version, str) or version not in widths:
        raise ProtocolError(f"vectors of an unknown version {version!r}")
    values = get_array(list(frames[2:]), ref)
    if values.dtype != np.float64 or values.ndim != 2 or values.shape[1] != widths[version]:
        raise ProtocolError(
            f"{version} vectors must be a float64 block of {widths[version]} columns, "
            f"got {values.dtype} {values.shape}"
        )
    return str(worker_id), seq, version, values
