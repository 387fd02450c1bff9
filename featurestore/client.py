"""The Python client of the ZeroMQ API, synchronous and asyncio.

    from featurestore.client import Client
    with Client("tcp://127.0.0.1:5555") as fs:
        print(fs.get("user_00042")["features"]["value_mean"])

With CURVE on the server (ZMQ_CURVE_KEYS_DIR), pass the client's keys explicitly; the client
reads no key setting of the server's:

    from featurestore.curve import load_client_keys
    Client("tcp://10.0.0.5:5555", curve=load_client_keys("/etc/featurestore/keys", "model-a"))

Every call has a deadline (never hangs) and is re-sent with the SAME request id while no answer
has come (a restarted broker, a lost message): the broker ignores a duplicate of a request in
progress and the store ignores a repeated ingest, so retries are safe. Errors raise
`ServiceError` with the code of the API (`err.code`, `err.body()`). Many requests may be in
flight on one connection (`submit`/`collect`, or concurrent awaits with `AsyncClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import zmq
import zmq.asyncio

from featurestore.config import Settings
from featurestore.curve import CurveClient, secure_client
from featurestore.errors import Code, ServiceError
from featurestore.protocol import EVENTS, POLLIN, Op, ProtocolError, Reply, Request, copy_small
from featurestore.results import FeatureBatch
from featurestore.timestamps import parse_timestamp

DEFAULT_RETRY_MS = 1000
TIMEOUT_SLACK_MS = 1000  # wait a bit longer than the broker, so its `timeout` answer arrives


_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    """Unique across processes (random prefix per process) and cheap (a counter)."""
    return f"{_ID_PREFIX}-{next(_id_counter)}"


def _first_endpoint(endpoint: str | None) -> str:
    if endpoint is None:
        endpoint = Settings.from_env().broker_frontend
    return endpoint.split(",")[0].strip()


def _default_timeout_ms(timeout_ms: int | None) -> int:
    if timeout_ms is not None:
        return timeout_ms
    return Settings.from_env().request_timeout_ms + TIMEOUT_SLACK_MS


def _query(features, version, as_of) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if features:
        body["features"] = list(features)
    if version is not None:
        body["version"] = version
    if as_of is not None:
        body["as_of"] = as_of
    return body


def _rows_payload(rows) -> tuple[list[str], list]:
    """Historical rows from a DataFrame (entity_id, timestamp) or [{"entity_id", "timestamp"}]."""
    if isinstance(rows, pd.DataFrame):
        ids = rows["entity_id"].astype(str).tolist()
        stamps = rows["timestamp"]
        if pd.api.types.is_datetime64_any_dtype(stamps):
            stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps
            # any resolution (pandas 3 defaults to us): floor to ms, then epoch integers
            values = stamps.dt.floor("ms").dt.as_unit("ms").astype("int64").tolist()
        else:
            values = stamps.tolist()
        return ids, values
    ids = [r["entity_id"] for r in rows]
    return ids, [r["timestamp"] for r in rows]


class _Calls:
    """The operations, shared by both clients: build a request, interpret its reply."""

    def _call(self, op: Op, payload: dict, request_id: str | None = None) -> Any:
        raise NotImplementedError

    @staticmethod
    def _batch_result(
        ids: list[str], reply: Reply, as_frame: bool, arrays: bool, stamps: list | None = None
    ):
        reply.raise_for_error()
        timestamps = None
        if stamps is not None:
            timestamps = np.array([parse_timestamp(t) for t in stamps], dtype=np.int64)
        batch = FeatureBatch.from_reply(ids, reply.body, reply.blocks, timestamps)
        if arrays:
            return batch
        return batch.to_frame() if as_frame else batch.items()


class Client(_Calls):
    """Synchronous client: one DEALER socket, for one thread."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout_ms: int | None = None,
        retry_ms: int = DEFAULT_RETRY_MS,
        context: zmq.Context | None = None,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = _first_endpoint(endpoint)
        self.timeout_ms = _default_timeout_ms(timeout_ms)
        self.retry_ms = retry_ms
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        secure_client(self.socket, curve)
        self.socket.connect(self.endpoint)
        self._sent: dict[str, tuple[list, float]] = {}  # request id -> (frames, next resend)
        self._replies: dict[str, Reply] = {}

    # -- plumbing
    def submit(
        self, op: Op, payload: dict, request_id: str | None = None, blocks: list | None = None
    ) -> str:
        """Send a request without waiting; `collect` its reply later."""
        request_id = request_id or new_request_id()
        frames = Request(request_id, Op(op), payload, blocks or []).encode()
        self._send(frames, 0)  # without a connection: sent again when its resend is due
        self._sent[request_id] = (frames, time.monotonic() + self.retry_ms / 1000)
        return request_id

    def collect(self, request_ids: Iterable[str], timeout_ms: int | None = None) -> list[Reply]:
        """The replies of submitted requests, in the order asked; ServiceError(timeout) if the
        deadline passes first."""
        wanted = list(request_ids)
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000
        while any(r not in self._replies for r in wanted):
            now = time.monotonic()
            if now >= deadline:
                for r in wanted:
                    self._sent.pop(r, None)
                raise ServiceError(Code.TIMEOUT, f"no answer from {self.endpoint} in time")
            self._resend_due(now, deadline, wanted)
            wait = min(deadline, *(self._sent[r][1] for r in wanted if r in self._sent)) - now
            if self.socket.poll(max(1, int(wait * 1000)), POLLIN):
                self._receive()
        return [self._take(r) for r in wanted]

    def _take(self, request_id: str) -> Reply:
        self._sent.pop(request_id, None)
        return self._replies.pop(request_id)

    def _resend_due(self, now: float, deadline: float, wanted: list[str]) -> None:
        for request_id in wanted:
            entry = self._sent.get(request_id)
            if entry is not None and now >= entry[1] and request_id not in self._replies:
                self._send(entry[0], min(self.retry_ms, int((deadline - now) * 1000)))
                self._sent[request_id] = (entry[0], now + self.retry_ms / 1000)

    def _send(self, frames: list, wait_ms: int) -> None:
        """Send, waiting at most `wait_ms` for room. A DEALER with no connection blocks on
        send forever (a server that refused this client's CURVE handshake; a full queue): the
        request then waits for its resend instead, so no call outlives its deadline."""
        copy = copy_small(frames)
        try:
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)
        except zmq.Again:
            if self.socket.poll(max(0, wait_ms), zmq.POLLOUT):
                with contextlib.suppress(zmq.Again):
                    self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=copy)

    def _receive(self) -> None:
        """Take every reply waiting on the socket (after a poll said one is there)."""
        while True:
            frames = self.socket.recv_multipart(copy=False)
            try:
                reply = Reply.decode([f.buffer for f in frames])
            except ProtocolError:
                reply = None
            if reply is not None and reply.request_id in self._sent:
                self._replies[reply.request_id] = reply
            if not self.socket.getsockopt(EVENTS) & POLLIN:
                return

    def request(
        self, op: Op, payload: dict, request_id: str | None = None, blocks: list | None = None
    ) -> Reply:
        started = time.monotonic()
        request_id = self.submit(op, payload, request_id, blocks)
        # Fast path: the answer usually comes before a resend is due.
        if self.socket.poll(min(self.retry_ms, self.timeout_ms), POLLIN):
            self._receive()
            if request_id in self._replies:
                return self._take(request_id)
        left_ms = self.timeout_ms - (time.monotonic() - started) * 1000  # one deadline in all
        return self.collect([request_id], max(1, int(left_ms)))[0]

    def _call(self, op: Op, payload: dict, request_id: str | None = None) -> Any:
        reply = self.request(op, payload, request_id)
        reply.raise_for_error()
        return reply.body

    # -- operations
    def get(
        self,
        entity_id: str,
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
    ) -> dict:
        return self._call(Op.GET, {"entity_id": entity_id, **_query(features, version, as_of)})

    def batch(
        self,
        entity_ids: Sequence[str],
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ):
        ids = list(entity_ids)
        reply = self.request(Op.BATCH, {"entity_ids": ids, **_query(features, version, as_of)})
        return self._batch_result(ids, reply, as_frame, arrays)

    def historical(
        self,
        rows,
        features: Sequence[str] | None = None,
        version: str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ):
        ids, stamps = _rows_payload(rows)
        reply = self.request(
            Op.HISTORICAL,
            {"entity_ids": ids, "timestamps": stamps, **_query(features, version, None)},
        )
        return self._batch_result(ids, reply, as_frame, arrays, stamps)

    def ingest(self, events: list[dict], request_id: str | None = None) -> dict:
        return self._call(Op.INGEST, {"events": events}, request_id)

    def delete(self, entity_id: str) -> dict:
        return self._call(Op.DELETE, {"entity_id": entity_id})

    def stats(self) -> dict:
        return self._call(Op.STATS, {})

    def health(self) -> dict:
        return self._call(Op.HEALTH, {})

    def definitions(self) -> dict:
        return self._call(Op.DEFINITIONS, {})

    def clear(self) -> dict:
        return self._call(Op.CLEAR, {})

    def drift_report(self) -> dict:
        return self._call(Op.DRIFT_REPORT, {})

    def drift_baseline(self, **body: Any) -> dict:
        return self._call(Op.DRIFT_BASELINE, body)

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self.context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Calls):
    """asyncio client: one DEALER socket, any number of concurrent requests.

    Call `await client.start()` (or use `async with`) inside the event loop that uses it.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        timeout_ms: int | None = None,
        retry_ms: int = DEFAULT_RETRY_MS,
        curve: CurveClient | None = None,
    ) -> None:
        self.endpoint = _first_endpoint(endpoint)
        self.timeout_ms = _default_timeout_ms(timeout_ms)
        self.retry_ms = retry_ms
        self.context = zmq.asyncio.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        secure_client(self.socket, curve)
        self.socket.connect(self.endpoint)
        self._waiting: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def start(self) -> AsyncClient:
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read_loop())
        return self

    async def _read_loop(self) -> None:
        while True:
            frames = await self.socket.recv_multipart(copy=False)
            try:
                reply = Reply.decode([f.buffer for f in frames])
            except ProtocolError:
                continue
            future = self._waiting.get(reply.request_id)
            if future is not None and not future.done():
                future.set_result(reply)

    async def request(
        self,
        op: Op,
        payload: dict,
        request_id: str | None = None,
        blocks: list | None = None,
        timeout_ms: int | None = None,
    ) -> Reply:
        await self.start()
        request_id = request_id or new_request_id()
        deadline = time.monotonic() + (timeout_ms or self.timeout_ms) / 1000
        shared = self._waiting.get(request_id)
        if shared is not None:  # the same request id is in flight: its answer is this one's
            try:
                return await asyncio.wait_for(asyncio.shield(shared), deadline - time.monotonic())
            except TimeoutError:
                raise ServiceError(
                    Code.TIMEOUT, f"no answer from {self.endpoint} in time"
                ) from None
        frames = Request(request_id, Op(op), payload, blocks or []).encode()
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            while True:
                await self._send(frames, min(self.retry_ms / 1000, deadline - time.monotonic()))
                wait = min(self.retry_ms / 1000, deadline - time.monotonic())
                if wait <= 0:
                    raise ServiceError(Code.TIMEOUT, f"no answer from {self.endpoint} in time")
                done, _ = await asyncio.wait({future}, timeout=wait)
                if done:
                    return future.result()
        finally:
            self._waiting.pop(request_id, None)

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

    async def _call(self, op: Op, payload: dict, request_id: str | None = None) -> Any:
        reply = await self.request(op, payload, request_id)
        reply.raise_for_error()
        return reply.body

    async def get(
        self,
        entity_id: str,
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
    ) -> dict:
        return await self._call(
            Op.GET, {"entity_id": entity_id, **_query(features, version, as_of)}
        )

    async def batch(
        self,
        entity_ids: Sequence[str],
        features: Sequence[str] | None = None,
        version: str | None = None,
        as_of: int | str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ):
        ids = list(entity_ids)
        reply = await self.request(
            Op.BATCH, {"entity_ids": ids, **_query(features, version, as_of)}
        )
        return self._batch_result(ids, reply, as_frame, arrays)

    async def historical(
        self,
        rows,
        features: Sequence[str] | None = None,
        version: str | None = None,
        *,
        as_frame: bool = False,
        arrays: bool = False,
    ):
        ids, stamps = _rows_payload(rows)
        reply = await self.request(
            Op.HISTORICAL,
            {"entity_ids": ids, "timestamps": stamps, **_query(features, version, None)},
        )
        return self._batch_result(ids, reply, as_frame, arrays, stamps)

    async def ingest(self, events: list[dict], request_id: str | None = None) -> dict:
        return await self._call(Op.INGEST, {"events": events}, request_id)

    async def delete(self, entity_id: str) -> dict:
        return await self._call(Op.DELETE, {"entity_id": entity_id})

    async def stats(self) -> dict:
        return await self._call(Op.STATS, {})

    async def health(self) -> dict:
        return await self._call(Op.HEALTH, {})

    async def definitions(self) -> dict:
        return await self._call(Op.DEFINITIONS, {})

    async def clear(self) -> dict:
        return await self._call(Op.CLEAR, {})

    async def drift_report(self) -> dict:
        return await self._call(Op.DRIFT_REPORT, {})

    async def drift_baseline(self, **body: Any) -> dict:
        return await self._call(Op.DRIFT_BASELINE, body)

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
