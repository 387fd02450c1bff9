"""Client request and reply envelopes on the broker's front end (PROTOCOL.md).

    request: [header, *blocks]  header = msgpack [2, correlation_id, request_id, op, payload]
    reply:   [header, *blocks]  header = msgpack [2, correlation_id, "ok" | "error", body]

`correlation_id` is the client's own (an integer private to its connection) and matches a
reply to its request; `request_id` is the caller's: the idempotency key of an ingest and the
`rid=` of every log line. A retry re-sends the same correlation id and request id. The payload
stays undecoded (`msgspec.Raw`) until whoever serves the operation decodes it once into its
type (`messages.PAYLOAD_TYPES`); the broker forwards what it does not serve as it came.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from featurestore.errors import Code, ServiceError
from featurestore.wire.frames import (
    FRONTEND_OPS,
    MAX_REQUEST_ID_BYTES,
    PROTOCOL_VERSION,
    STATUS_ERROR,
    STATUS_OK,
    Op,
    ProtocolError,
)
from featurestore.wire.messages import Answer, ErrorBody, decode_error

EMPTY_MAP = msgspec.Raw(b"\x80")
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """A request id unique across processes (a random prefix per process) and cheap."""
    return f"{_ID_PREFIX}-{next(_id_counter)}"


class _RequestOut(msgspec.Struct, array_like=True):
    version: int
    correlation_id: int
    request_id: str
    op: str
    payload: Any


class _RequestIn(msgspec.Struct, array_like=True):
    version: int
    correlation_id: int
    request_id: str
    op: str
    payload: msgspec.Raw


class _ReplyOut(msgspec.Struct, array_like=True):
    version: int
    correlation_id: int
    status: str
    body: Any


class _ReplyIn(msgspec.Struct, array_like=True):
    version: int
    correlation_id: int
    status: str
    body: msgspec.Raw


def _builtin(value: Any) -> Any:
    """What msgspec cannot encode itself but a caller may well pass: NumPy scalars (a value
    taken from a DataFrame). Called only for such values."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


_ENCODER = msgspec.msgpack.Encoder(enc_hook=_builtin)
_REQUEST_DECODER = msgspec.msgpack.Decoder(_RequestIn)
_REPLY_DECODER = msgspec.msgpack.Decoder(_ReplyIn)
encode = _ENCODER.encode


@dataclass(frozen=True)
class Request:
    """A client request as the broker read it: the header decoded, the payload not yet."""

    correlation_id: int
    request_id: str
    op: Op
    payload: msgspec.Raw
    blocks: list = field(default_factory=list)


def request_frames(
    correlation_id: int, request_id: str, op: Op, payload: Any, blocks: list | None = None
) -> list:
    """The frames of a request; `payload` a messages Struct, a dict or an encoded Raw."""
    header = encode(_RequestOut(PROTOCOL_VERSION, correlation_id, request_id, op.value, payload))
    return [header, *(blocks or [])]


def decode_request(frames: list) -> Request:
    """The envelope of a client request; ProtocolError (naming the correlation and request id
    when they could be read) otherwise."""
    if not frames:
        raise ProtocolError("empty message")
    try:
        header = _REQUEST_DECODER.decode(frames[0])
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise _unreadable(frames[0]) from None
    request_id = header.request_id
    if not request_id or len(request_id.encode("utf-8", "replace")) > MAX_REQUEST_ID_BYTES:
        raise ProtocolError(
            f"request_id must be a string of 1-{MAX_REQUEST_ID_BYTES} bytes",
            correlation_id=header.correlation_id,
        )
    if header.version != PROTOCOL_VERSION:
        raise _wrong_version(header.version, header.correlation_id, request_id)
    try:
        op = Op(header.op)
    except ValueError:
        op = None
    if op not in FRONTEND_OPS:
        raise ProtocolError(
            f"unknown operation {header.op!r}", request_id, correlation_id=header.correlation_id
        )
    return Request(header.correlation_id, request_id, op, header.payload, list(frames[1:]))


def _unreadable(frame: Any) -> ProtocolError:
    """Why a header is not [2, correlation_id, request_id, op, payload]; the ids if found."""
    try:
        header = msgspec.msgpack.decode(frame)
    except msgspec.DecodeError:
        return ProtocolError("header is not msgpack")
    if isinstance(header, list) and header and header[0] != PROTOCOL_VERSION:
        correlation = header[1] if len(header) > 1 and isinstance(header[1], int) else 0
        return _wrong_version(header[0], correlation, "")
    correlation = 0
    if isinstance(header, list) and len(header) > 1 and isinstance(header[1], int):
        correlation = header[1]
    return ProtocolError(
        "header must be [version, correlation_id, request_id, op, payload]",
        correlation_id=correlation if not isinstance(correlation, bool) else 0,
    )


def _wrong_version(version: Any, correlation_id: int, request_id: str) -> ProtocolError:
    return ProtocolError(
        f"protocol version {version!r} is not supported (expected {PROTOCOL_VERSION})",
        request_id,
        correlation_id=correlation_id,
    )


# ------------------------------------------------------------------------------ replies
@dataclass(frozen=True)
class Reply:
    """A reply as a client read it: `body` is still encoded (decode it by the op sent)."""

    correlation_id: int
    ok: bool
    body: msgspec.Raw
    blocks: list = field(default_factory=list)

    def error(self) -> ServiceError:
        """The ServiceError an error reply carries."""
        return error_of(self.body)


def reply_frames(
    correlation_id: int, body: Answer | ErrorBody | msgspec.Raw | dict, blocks: list | None = None
) -> list:
    status = STATUS_ERROR if isinstance(body, ErrorBody) else STATUS_OK
    return [encode(_ReplyOut(PROTOCOL_VERSION, correlation_id, status, body)), *(blocks or [])]


def error_frames(correlation_id: int, error: ServiceError) -> list:
    return reply_frames(correlation_id, error_body(error, with_status=True))


def raw_reply_frames(correlation_id: int, ok: bool, body: msgspec.Raw, blocks: list) -> list:
    """A reply whose body came encoded from a worker (forwarded as it is)."""
    status = STATUS_OK if ok else STATUS_ERROR
    return [encode(_ReplyOut(PROTOCOL_VERSION, correlation_id, status, body)), *blocks]


def decode_reply(frames: list) -> Reply:
    try:
        header = _REPLY_DECODER.decode(frames[0])
    except (msgspec.DecodeError, msgspec.ValidationError, IndexError):
        raise ProtocolError("reply header is not [version, correlation_id, status, body]") from None
    if header.version != PROTOCOL_VERSION:
        raise ProtocolError(f"reply protocol version {header.version!r}")
    return Reply(header.correlation_id, header.status == STATUS_OK, header.body, list(frames[1:]))


# ------------------------------------------------------------------------------- errors
def error_body(error: ServiceError, *, with_status: bool) -> ErrorBody:
    """The §5 error shape of a ServiceError (ZeroMQ replies also carry the HTTP status)."""
    extra = {k: v for k, v in error.extra.items() if k in _ERROR_EXTRAS}
    return msgspec.convert(
        {
            "error": error.code.value,
            "message": error.message,
            **({"status": error.http_status} if with_status else {}),
            **extra,
        },
        ErrorBody,
    )


_ERROR_EXTRAS = frozenset(ErrorBody.__struct_fields__) - {"error", "message", "status"}


def error_of(body: msgspec.Raw | bytes) -> ServiceError:
    """The ServiceError of an encoded error body."""
    try:
        decoded = decode_error(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ServiceError(Code.INTERNAL, "an error reply that is not an error body")
    try:
        code = Code(decoded.error)
    except ValueError:
        code = Code.INTERNAL
    extra = {name: value for name in _ERROR_EXTRAS if (value := getattr(decoded, name)) is not None}
    if "errors" in extra:
        extra["errors"] = [msgspec.structs.asdict(item) for item in extra["errors"]]
    return ServiceError(code, decoded.message, **extra)
