"""The broker process: `BrokerCore`'s decisions on two ROUTER sockets, in one poll loop.

The front end (clients) and the back end (workers, drift) are ROUTERs with ROUTER_MANDATORY,
so an unknown or vanished peer is an error here rather than a silent drop. Replies to
clients go through the ClientBook, which bounds what one client may cost (broker/clients.py).
"""

from __future__ import annotations

import logging
import signal
import time

import zmq

from broker.clients import FLUSH_INTERVAL_MS, FRONTEND_SNDHWM, ClientBook
from broker.core import BrokerCore
from broker.pending import Pending
from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.ops.runtime import give_back_free_memory
from featurestore.security.curve import Domain, ZapServer
from featurestore.wire.envelope import error_frames
from featurestore.wire.frames import (
    EVENTS,
    NOBLOCK,
    POLLIN,
    ProtocolError,
    TooManyFrames,
    peek_correlation,
    recv_frames,
)

log = logging.getLogger("broker")
FRONTEND_RCVHWM = 100  # requests ZeroMQ queues per client while the loop is busy (backpressure)
BACKEND_HWM = 100_000  # messages to and from the stack's own workers
HARD_SIZE_FACTOR = 4  # ZeroMQ itself drops a peer sending frames over 4x ZMQ_MAXMSGSIZE
DRAIN_LIMIT = 256  # messages handled per socket per loop turn


class Broker(BrokerCore):
    def __init__(self, settings: Settings) -> None:
        self.context = zmq.Context()
        self.zap = ZapServer.start(self.context, settings)
        self.frontend = self._router(
            settings, settings.broker_frontend, Domain.FRONTEND, FRONTEND_SNDHWM, FRONTEND_RCVHWM
        )
        self.backend = self._router(
            settings, settings.broker_backend, Domain.BACKEND, BACKEND_HWM, BACKEND_HWM
        )
        self.clients = ClientBook(
            self.frontend, settings.broker_client_max_pending, settings.broker_client_max_bytes
        )
        super().__init__(settings, open_cache(settings), self)
        self.next_heartbeat = time.monotonic() + self.interval_s
        self.trimmed_at = 0  # dropped replies when memory was last given back
        self.stopping = False
        self.stop_deadline = 0.0

    def _router(
        self, settings: Settings, endpoints: str, domain: Domain, sndhwm: int, rcvhwm: int
    ) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        self.zap.secure(socket, domain)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, sndhwm)
        socket.setsockopt(zmq.RCVHWM, rcvhwm)
        socket.setsockopt(zmq.MAXMSGSIZE, settings.zmq_maxmsgsize * HARD_SIZE_FACTOR)
        for endpoint in endpoints.split(","):
            socket.bind(endpoint.strip())
        return socket

    # ------------------------------------------------------------------- transport
    def to_client(self, client: bytes, frames: list) -> None:
        """Send (or queue, bounded) a reply; a client whose replies pile up loses them and
        its requests in progress (ClientBook)."""
        if not self.clients.send(client, frames):
            self.cancel_client(client)

    def to_worker(self, identity: bytes, frames: list) -> bool:
        try:
            self.backend.send_multipart([identity, *frames], flags=NOBLOCK, copy=False)
        except zmq.ZMQError:  # gone (ROUTER_MANDATORY) or stuck
            return False
        return True

    # ------------------------------------------------------- per-client accounting
    def has_room(self, client: bytes) -> bool:
        return self.clients.has_room(client)

    def started(self, pending: Pending) -> None:
        self.clients.started(pending.client)

    def finished(self, pending: Pending) -> None:
        self.clients.finished(pending.client)

    def cancel_client(self, client: bytes) -> None:
        """Drop every request in progress of a client that stopped reading (their jobs are
        skipped when they come up in the queue; late results are ignored)."""
        for pending in [p for (c, _), p in self.pending.items() if c == client]:
            self.forget(pending)

    def message_figures(self) -> dict:
        return {**super().message_figures(), **self.clients.figures()}

    # ------------------------------------------------------------------------ loop
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        poller = zmq.Poller()
        poller.register(self.frontend, zmq.POLLIN)
        poller.register(self.backend, zmq.POLLIN)
        log.info(
            "broker ready: frontend %s backend %s",
            self.settings.broker_frontend,
            self.settings.broker_backend,
        )
        while not self.stopped():
            timeout = max(0, int((self.next_heartbeat - time.monotonic()) * 1000))
            if self.clients.backlogged:
                timeout = min(timeout, FLUSH_INTERVAL_MS)
            events = dict(poller.poll(timeout))
            if self.backend in events:
                self._drain(self.backend, self.on_worker, "backend")
            if self.frontend in events:
                self._drain(self.frontend, self.on_client, "frontend", copy=True)
            self.dispatch()
            if self.clients.backlogged:
                self.clients.flush()
            if time.monotonic() >= self.next_heartbeat:
                self.tick()
        self.close()

    def tick(self) -> None:
        """Every HEARTBEAT_INTERVAL_MS: check the cache segment, give memory back after a
        stalled client, heartbeats, purge silent workers, expire requests."""
        self.cache.verify()
        self.give_back_memory()
        self.send_heartbeats()
        self.next_heartbeat = time.monotonic() + self.interval_s
        self.purge_workers()
        self.expire_requests()
        self.dispatch()

    def _drain(self, socket: zmq.Socket, handler, side: str, copy: bool = False) -> None:
        """Handle the waiting messages (at most DRAIN_LIMIT) without blocking; a message of
        too many frames is counted and dropped before any work (the front end answers it)."""
        max_frames = self.settings.zmq_max_frames
        for _ in range(DRAIN_LIMIT):
            try:  # a ROUTER's messages start with the peer's identity: one frame more
                frames = recv_frames(socket, max_frames + 1, copy)
            except TooManyFrames as refused:
                self.malformed[side] += 1
                self._refuse(side, refused, max_frames)
            else:
                handler(bytes(frames[0]), frames[1:])
            if not socket.getsockopt(EVENTS) & POLLIN:
                return

    def _refuse(self, side: str, refused: TooManyFrames, max_frames: int) -> None:
        count = refused.count - 1
        log.warning("%s message of %d frames dropped", side, count)
        if side == "frontend":
            error = ProtocolError(
                f"a message of {count} frames; at most ZMQ_MAX_FRAMES ({max_frames})",
                correlation_id=peek_correlation([bytes(f) for f in refused.kept[1:]]),
            )
            self.reply(bytes(refused.kept[0]), error_frames(error.correlation_id, error))

    def give_back_memory(self) -> None:
        """Once replies were dropped (a client that stopped reading, or left) and nothing is
        backlogged any more, return the freed memory to the kernel, at most once a heartbeat:
        the broker's RSS goes back to its baseline."""
        dropped = self.clients.dropped_replies
        if dropped != self.trimmed_at and not self.clients.backlogged:
            self.trimmed_at = dropped
            give_back_free_memory()

    def request_stop(self, *_: object) -> None:
        """SIGTERM: answer what is in progress (until REQUEST_TIMEOUT_MS), then leave."""
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.settings.request_timeout_ms / 1000

    def stopped(self) -> bool:
        return self.stopping and (not self.pending or time.monotonic() >= self.stop_deadline)

    def close(self) -> None:
        log.info("broker stopping")
        self.frontend.close(linger=0)
        self.backend.close(linger=0)
        self.cache.close()
        self.zap.stop()
        self.context.term()
