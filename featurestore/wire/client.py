"""The Python client of the ZeroMQ API: one I/O-free core under thin sync and asyncio shells.

    from featurestore.wire.client import Client
    with Client("tcp://127.0.0.1:5555") as fs:
        print(fs.get("user_00042")["features"]["value_mean"])

With CURVE on the server (ZMQ_CURVE_KEYS_DIR), pass the client's keys explicitly:

    from featurestore.security.curve import load_client_keys
    Client("tcp://10.0.0.5:5555", curve=load_client_keys("/etc/featurestore/keys", "model-a"))

- `ClientCore` does everything but I/O: it numbers calls with a private correlation id,
  builds their frames, knows when each is due to be re-sent and when its deadline passes,
  matches replies to calls, and turns a reply into its result (or the ServiceError it
  carries). The caller's request id stays what it is: the idempotency key of an ingest.
- `Operations` defines every operation once (`get`, `batch`, ...): each prepares a `Call`
  and hands it to the shell's `_run`, which returns the result (Client) or an awaitable of
  it (AsyncClient).
- Every call has a deadline (never hangs) and is re-sent, with the same correlation id and
  request id, while no answer has come (a restarted broker, a lost message): the broker
  ignores a duplicate of a request in progress, the store a repeated ingest.
- The client reads no setting of the server's: its endpoint, keys and deadlines are its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import zmq
import zmq.asyncio

from featurestore.errors import Code, ServiceError
from featurestore.security.curve import CurveClient, secure_client
from featurestore.wire.envelope import Reply, decode_reply, new_request_id, request_frames
from featurestore.wire.frames import EVENTS, POLLIN, Op, ProtocolError, copy_small
from featurestore.wire.messages import (
    BatchRequest,
    DeleteRequest,
    EmptyRequest,
    GetRequest,
    HistoricalRequest,
    IngestRequest,
    MatrixAnswer,
    decode_answer,
)

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
DEFAULT_TIMEOUT_MS = 6000  # a little above the server's default REQUEST_TIMEOUT_MS (5 s)
DEFAULT_RETRY_MS = 1000


@dataclass
class Response:
    """A reply as a call sees it: `body` decoded as plain data, `raw` as it came."""

    request_id: str
    ok: bool
    raw: msgspec.Raw
    blocks: list
    _body: Any = None

    @property
    def body(self) -> Any:
        if self._body is None:
            self._body = msgspec.msgpack.decode(self.raw)
        return self._body

    def raise_for_error(self) -> None:
        if not self.ok:
            raise Reply(0, False, self.raw).error()


@dataclass
class Call:
    """One operation, prepared: what to send, and how its reply becomes the result."""

    op: Op
    payload: Any
    request_id: str = ""
    blocks: list = field(default_factory=list)
    interpret: Callable[[Response], Any] = lambda response: response
    timeout_ms: int | None = None


@dataclass
class InFlight:
    call: Call
    frames: list
    deadline: float
    resend_at: float
    response: Response | None = None


class ClientCore:
    """The client without I/O: calls by correlation id, their frames, resends, deadlines."""

    def __init__(self, timeout_ms: int, retry_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self.retry_ms = retry_ms
        self._ids = itertools.count(1)
        self.calls: dict[int, InFlight] = {}

    def start(self, call: Call, now: float) -> tuple[int, list]:
        """Register `call`; (its correlation id, the frames to send)."""
        correlation_id = next(self._ids)
        call.request_id = call.request_id or new_request_id()
        frames = request_frames(correlation_id, call.request_id, call.op, call.payload, call.blocks)
        timeout_s = (call.timeout_ms or self.timeout_ms) / 1000
        self.calls[correlation_id] = InFlight(
            call, frames, now + timeout_s, now + self.retry_ms / 1000
        )
        return correlation_id, frames

    def due(self, correlation_ids: Iterable[int], now: float) -> list[list]:
        """Frames of the calls whose resend is due (their next one is scheduled)."""
        out = []
        for correlation_id in correlation_ids:
            flight = self.calls.get(correlation_id)
            if flight is not None and flight.response is None and now >= flight.resend_at:
                flight.resend_at = now + self.retry_ms / 1000
                out.append(flight.frames)
        return out

    def wake_at(self, correlation_ids: Iterable[int]) -> float:
        """When the first of these calls needs attention (a resend or its deadline)."""
        times = [
            min(f.resend_at, f.deadline)
            for c in correlation_ids
            if (f := self.calls.get(c)) is not None and f.response is None
        ]
        return min(times, default=0.0)

    def received(self, frames: list) -> int | None:
        """File a reply; the correlation id it answers, or None (not ours, or unreadable)."""
        try:
            reply = decode_reply(frames)
        except ProtocolError:
            return None
        flight = self.calls.get(reply.correlation_id)
        if flight is None or flight.response is not None:
            return None
        flight.response = Response(flight.call.request_id, reply.ok, reply.body, reply.blocks)
        return reply.correlation_id

    def answered(self, correlation_id: int) -> bool:
        flight = self.calls.get(correlation_id)
        return flight is not None and flight.response is not None

    def expired(self, correlation_id: int, now: float) -> bool:
        flight = self.calls.get(correlation_id)
        return flight is None or (flight.response is None and now >= flight.deadline)

    def response(self, correlation_id: int, endpoint: str) -> Response:
        """The reply of a call (forgetting it); ServiceError(timeout) if none came in time."""
        flight = self.calls.pop(correlation_id, None)
        if flight is None or flight.response is None:
            raise ServiceError(Code.TIMEOUT, f"no answer from {endpoint} in time")
        return flight.response

    def result(self, correlation_id: int, endpoint: str) -> Any:
        """The call's result, or the ServiceError its reply carries."""
        flight = self.calls.get(correlation_id)
        response = self.response(correlation_id, endpoint)
        return flight.call.interpret(response)


# ------------------------------------------------------------------------- operations
def _plain(response: Response) -> Any:
    response.raise_for_error()
    return response.body


def _query(features, version, as_of) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if features:
        query["features"] = list(features)
    if version is not None:
        query["version"] = version
    if as_of is not None:
        query["as_of"] = as_of
    return query


def _matrix(
    op: Op, ids: list[str], as_frame: bool, arrays: bool, stamps: list | None = None
) -> Callable[[Response], Any]:
    def interpret(response: Response) -> Any:
        from featurestore.timestamps import parse_timestamp
        from featurestore.wire.results import FeatureBatch

        response.raise_for_error()
        answer = decode_answer(op, response.raw)
        assert isinstance(answer, MatrixAnswer)
        timestamps = None
        if stamps is not None:
            timestamps = np.array([parse_timestamp(t) for t in stamps], dtype=np.int64)
        batch = FeatureBatch.from_answer(ids, answer, response.blocks, timestamps)
        if arrays:
            return batch
        return batch.to_frame() if as_frame else batch.items()

    return interpret


def _rows_of(rows) -> tuple[list[str], list]:
    """Historical rows from a DataFrame (entity_id, timestamp) or [{"entity_id", "timestamp"}]."""
    if hasattr(rows, "columns"):  # a pandas DataFrame
        import pandas as pd

        ids = rows["entity_id"].astype(str).tolist()
        stamps = rows["timestamp"]
        if pd.api.types.is_datetime64_any_dtype(stamps):
            stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps
            # any resolution (pandas 3 defaults to us): floor to ms, then epoch integers
            return ids, stamps.dt.floor("ms").dt.as_unit("ms").astype("int64").tolist()
        return ids, stamps.tolist()
    return [r["entity_id"] for r in rows], [r["timestamp"] for r in rows]


class Operations:
    """Every operation of the API, once; the shells decide what `_run` does with a Call."""

    def _run(self, call: Call) -> Any:
        raise NotImplementedError

    def get(
        self,
        entity_id: str,
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
    ) -> Any:
        payload = GetRequest(entity_id, **_query(features, version, as_of))
        return self._run(Call(Op.GET, payload, interpret=_plain))

    def batch(
        self,
        entity_ids: Sequence[str],
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ) -> Any:
        ids = list(entity_ids)
        payload = BatchRequest(ids, **_query(features, version, as_of))
        return self._run(
            Call(Op.BATCH, payload, interpret=_matrix(Op.BATCH, ids, as_frame, arrays))
        )

    def historical(
        self,
        rows,
        features: Sequence[str] | None = None,
        version: str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ) -> Any:
        ids, stamps = _rows_of(rows)
        payload = HistoricalRequest(
            entity_ids=ids, timestamps=stamps, **_query(features, version, None)
        )
        interpret = _matrix(Op.HISTORICAL, ids, as_frame, arrays, stamps)
        return self._run(Call(Op.HISTORICAL, payload, interpret=interpret))

    def ingest(self, events: list[dict], request_id: str | None = None) -> Any:
        return self._run(Call(Op.INGEST, IngestRequest(events), request_id or "", interpret=_plain))

    def delete(self, entity_id: str) -> Any:
        return self._run(Call(Op.DELETE, DeleteRequest(entity_id), interpret=_plain))

    def stats(self) -> Any:
        return self._run(Call(Op.STATS, EmptyRequest(), interpret=_plain))

    def health(self) -> Any:
        return self._run(Call(Op.HEALTH, EmptyRequest(), interpret=_plain))

    def definitions(self) -> Any:
        return self._run(Call(Op.DEFINITIONS, EmptyRequest(), interpret=_plain))

    def clear(self) -> Any:
        return self._run(Call(Op.CLEAR, EmptyRequest(), interpret=_plain))

    def drift_report(self) -> Any:
        return self._run(Call(Op.DRIFT_REPORT, EmptyRequest(), interpret=_plain))

    def drift_baseline(self, **body: Any) -> Any:
        """POST /drift/baseline's body as keywords (the server checks them)."""
        return self._run(Call(Op.DRIFT_BASELINE, body, interpret=_plain))


def _dealer(context: zmq.Context, endpoint: str, curve: CurveClient | None) -> zmq.Socket:
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    secure_client(socket, curve)
    socket.connect(endpoint)
    return socket


# -------------------------------------------------------------------------- sync shell
class Client(Operations):
    """Synchronous client: one DEALER socket, for one thread. Many requests may be in
    flight at once: `submit` them, then `collect` their responses."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        retry_ms: int = DEFAULT_RETRY_MS,
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = endpoint.split(",", maxsplit=1)[0].strip()
        self.core = ClientCore(timeout_ms, retry_ms)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = _dealer(self.context, self.endpoint, curve)

    def _run(self, call: Call) -> Any:
        correlation_id = self._start(call)
        # Fast path: the answer usually comes before a resend is due.
        flight = self.core.calls[correlation_id]
        wait_ms = int((min(flight.resend_at, flight.deadline) - time.monotonic()) * 1000)
        if self.socket.poll(max(1, wait_ms), POLLIN):
            self._receive()
        if flight.response is None:
            self._wait([correlation_id])
        return self.core.result(correlation_id, self.endpoint)

    def _start(self, call: Call) -> int:
        correlation_id, frames = self.core.start(call, time.monotonic())
        self._send(frames, 0)  # without a connection: sent again when its resend is due
        return correlation_id

    def _wait(self, correlation_ids: list[int]) -> None:
        """Until every call is answered or past its deadline; resends as they fall due."""
        core = self.core
        while True:
            now = time.monotonic()
            open_ids = [c for c in correlation_ids if not core.answered(c)]
            if not open_ids or all(core.expired(c, now) for c in open_ids):
                return
            for frames in core.due(open_ids, now):
                self._send(frames, 0)
            wait_ms = max(1, int((core.wake_at(open_ids) - now) * 1000))
            if self.socket.poll(wait_ms, POLLIN):
                self._receive()

    def _receive(self) -> None:
        """File every reply waiting on the socket (after a poll said one is there)."""
        while True:
            frames = self.socket.recv_multipart(copy=False)
            self.core.received([f.buffer for f in frames])
            if not self.socket.getsockopt(EVENTS) & POLLIN:
                return

    def _send(self, frames: list, wait_ms: int) -> None:
        """Send, waiting at most `wait_ms` for room. A DEALER with no connection blocks on
        send forever (a server that refused this client's CURVE handshake; a full queue): the
        request then waits for its resend instead, so no call outlives its deadline."""
        copy = copy_small(frames)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            if wait_ms and self.socket.poll(wait_ms, zmq.POLLOUT):
                with contextlib.suppress(zmq.Again):
                    self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)

    # -- requests as frames and responses (for tools and tests)
    def submit(
        self,
        op: Op,
        payload: Any,
        request_id: str | None = None,
        blocks: list | None = None,
        timeout_ms: int | None = None,
    ) -> int:
        """Send a request without waiting; its handle, for `collect`."""
        return self._start(
            Call(Op(op), payload, request_id or "", blocks or [], timeout_ms=timeout_ms)
        )

    def collect(self, handles: Iterable[int]) -> list[Response]:
        """The responses of submitted requests, in the order asked; ServiceError(timeout) if
        a deadline passes first."""
        wanted = list(handles)
        self._wait(wanted)
        return [self.core.response(h, self.endpoint) for h in wanted]

    def request(
        self, op: Op, payload: Any, request_id: str | None = None, blocks: list | None = None
    ) -> Response:
        return self.collect([self.submit(op, payload, request_id, blocks)])[0]

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------- asyncio shell
class AsyncClient(Operations):
    """asyncio client: one DEALER socket, any number of concurrent requests. Every
    operation returns an awaitable. Use `async with`, or `await client.start()` inside the
    event loop that uses it."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        retry_ms: int = DEFAULT_RETRY_MS,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = endpoint.split(",", maxsplit=1)[0].strip()
        self.core = ClientCore(timeout_ms, retry_ms)
        self.context = zmq.asyncio.Context()
        self.socket = _dealer(self.context, self.endpoint, curve)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> AsyncClient:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def _read_loop(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            correlation_id = self.core.received([f.buffer for f in frames])
            future = self._waiting.get(correlation_id)
            if future is not None and not future.done():
                future.set_result(None)

    def _run(self, call: Call) -> Any:
        return self._call(call)

    async def _call(self, call: Call) -> Any:
        correlation_id = await self._exchange(call)
        return self.core.result(correlation_id, self.endpoint)

    async def _exchange(self, call: Call) -> int:
        """Send `call` (again while due) until its reply is filed or its deadline passes."""
        await self.start()
        core = self.core
        correlation_id, frames = core.start(call, time.monotonic())
        future = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = future
        try:
            await self._send(frames, 0)
            while not core.answered(correlation_id):
                now = time.monotonic()
                if core.expired(correlation_id, now):
                    break
                for due in core.due([correlation_id], now):
                    await self._send(
                        due, min(core.retry_ms / 1000, core.wake_at([correlation_id]) - now)
                    )
                wait = core.wake_at([correlation_id]) - time.monotonic()
                if wait > 0:
                    await asyncio.wait({future}, timeout=wait)
        finally:
            self._waiting.pop(correlation_id, None)
        return correlation_id

    async def request(
        self,
        op: Op,
        payload: Any,
        request_id: str | None = None,
        blocks: list | None = None,
        timeout_ms: int | None = None,
    ) -> Response:
        """Send one request; its response (ServiceError(timeout) when none came in time)."""
        call = Call(Op(op), payload, request_id or "", blocks or [], timeout_ms=timeout_ms)
        correlation_id = await self._exchange(call)
        return self.core.response(correlation_id, self.endpoint)

    async def _send(self, frames: list, wait_s: float) -> None:
        """Send, waiting at most `wait_s` for room (see Client._send)."""
        copy = copy_small(frames)
        try:
            await self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self.socket.send_multipart(frames, copy=copy), max(0.0, wait_s)
                )

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                await self._reader
        self.socket.close(linger=0)
        self.context.term()

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
