"""Frames of the ZeroMQ protocol (PROTOCOL.md): the protocol version, operations and
services, back-end command bytes, array blocks, and receiving a message with a bounded
number of frames. The messages themselves are typed in `messages`, `envelope` and `backend`.

Bulk numbers travel as blocks: raw little-endian buffers referenced from a message by an
`ArrayRef` {"block": i, "dtype": "<f8", "shape": [m, k]} - never one map per entity.
"""

from __future__ import annotations

from enum import StrEnum

import msgspec
import numpy as np
import zmq

from featurestore.errors import Code, ServiceError

PROTOCOL_VERSION = 2  # 2: a private correlation id beside the request id
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
    """Every operation name, defined once."""

    # The API (SPEC §6): what any client sends to the front end.
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
    # Already validated forms, which the gateway sends after its own decoding and cache
    # lookup, so the broker routes them without parsing a request again (any client may).
    COMPUTE = "compute"  # full vectors of distinct entities as of one T
    HISTORICAL_ROWS = "historical_rows"  # rows as columns: ids and an int64 block of T
    INGEST_COLUMNS = "ingest_columns"  # validated events as columns
    # Back end only: the broker's chunks of historical rows for one worker.
    HISTORICAL_CHUNK = "historical_chunk"


FRONTEND_OPS = frozenset(Op) - {Op.HISTORICAL_CHUNK}
SERVICE_OF: dict[Op, str] = {
    **dict.fromkeys(
        (
            Op.GET,
            Op.BATCH,
            Op.HISTORICAL,
            Op.INGEST,
            Op.DELETE,
            Op.COMPUTE,
            Op.HISTORICAL_ROWS,
            Op.INGEST_COLUMNS,
            Op.HISTORICAL_CHUNK,
        ),
        SERVICE_FEATURES,
    ),
    **dict.fromkeys((Op.STATS, Op.CLEAR, Op.HEALTH, Op.DEFINITIONS), SERVICE_BROKER),
    **dict.fromkeys((Op.DRIFT_REPORT, Op.DRIFT_BASELINE), SERVICE_DRIFT),
}


class ProtocolError(ServiceError):
    """A message that cannot be decoded; carries the correlation id and the request id when
    they could be read, so that the error reply reaches its caller."""

    def __init__(
        self,
        message: str,
        request_id: str = "",
        code: Code = Code.INVALID_REQUEST,
        *,
        correlation_id: int = 0,
    ) -> None:
        super().__init__(code, message)
        self.request_id = request_id
        self.correlation_id = correlation_id


# ----------------------------------------------------------------------------- arrays
class ArrayRef(msgspec.Struct, forbid_unknown_fields=True):
    """Where an array travels: raw block `block` of the message, of `dtype` and `shape`."""

    block: int
    dtype: str
    shape: list[int]


def put_array(blocks: list, array: np.ndarray) -> ArrayRef:
    """Append `array` as a raw block; the reference to put in a message."""
    contiguous = np.ascontiguousarray(array)
    if contiguous.dtype.byteorder == ">":
        contiguous = contiguous.astype(contiguous.dtype.newbyteorder("<"))
    blocks.append(memoryview(contiguous).cast("B") if contiguous.size else b"")
    return ArrayRef(len(blocks) - 1, contiguous.dtype.str, list(array.shape))


_ALLOWED_DTYPES = frozenset({"<f8", "<i8", "<i4", "|b1", "|u1", "<u8"})


def get_array(blocks: list, ref: ArrayRef) -> np.ndarray:
    """The array a reference points to (zero-copy, read-only); ProtocolError if malformed."""
    if ref.dtype not in _ALLOWED_DTYPES or any(n < 0 for n in ref.shape):
        raise ProtocolError(f"unsupported array {ref.dtype!r} {ref.shape}")
    if not 0 <= ref.block < len(blocks):
        raise ProtocolError("an array reference names a block that is not there")
    dtype = np.dtype(ref.dtype)
    count = int(np.prod(ref.shape, dtype=np.int64))
    block = blocks[ref.block]
    if len(block) != count * dtype.itemsize:
        raise ProtocolError("array block size does not match its shape")
    return np.frombuffer(block, dtype=dtype, count=count).reshape(ref.shape)


def peek_correlation(frames: list) -> int:
    """The correlation id of a request that will not be decoded (too large, too many
    frames), when its header can be read: so that the error reaches its caller."""
    try:
        header = msgspec.msgpack.decode(frames[0])
    except (msgspec.DecodeError, IndexError):
        return 0
    if isinstance(header, list) and len(header) > 1 and type(header[1]) is int:
        return header[1]
    return 0
