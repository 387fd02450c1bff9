"""A compute worker: an I/O thread that talks to the broker and a compute thread.

The main thread owns the broker connection (READY, heartbeats both ways, reconnects) and never
computes, so a long job does not silence the heartbeats: the broker tells a busy worker from a
dead one. Jobs and results cross to the compute thread over an inproc PAIR socket as raw
frames. The compute thread owns everything a job touches (event store connection, cache
instance, drift publisher), one job at a time, and between jobs the store's upkeep (pruning
of expired request ids, recovery after a full disk: upkeep.py).

A store found corrupt (at start or later) stops the worker: the job in hand is answered
`store_unavailable`, the compute thread tells the main thread (FAILED), and `run` raises the
StoreCorrupt, which `run_role` turns into one line and `EXIT_DATA` (not restarted).
"""

from __future__ import annotations

import logging
import signal
import threading

import zmq

from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.ops.logs import rid
from featurestore.security.curve import CurveClient
from featurestore.store.errors import StoreCorrupt
from featurestore.store.factory import open_event_store
from featurestore.wire.backend import decode_job, error_result_frames
from featurestore.wire.frames import POLLIN, SERVICE_FEATURES, W_JOB, ProtocolError, copy_small
from featurestore.wire.link import BrokerLink
from workers.handlers import Figures, Handlers
from workers.publisher import CONNECT_WAIT_S, VectorPublisher
from workers.upkeep import StoreUpkeep

log = logging.getLogger("worker")
STOP = b"stop"
FAILED = b"failed"  # compute thread -> main thread: the store is corrupt, stop


class ComputeThread(threading.Thread):
    """Runs jobs received on the PAIR socket; answers with RESULT frames on it."""

    def __init__(
        self,
        context: zmq.Context,
        address: str,
        settings: Settings,
        worker_id: str,
        figures: Figures,
        *,
        curve: CurveClient | None = None,
    ) -> None:
        super().__init__(name=f"compute-{worker_id}", daemon=True)
        self.curve = curve
        self.context = context
        self.address = address
        self.settings = settings
        self.worker_id = worker_id
        self.figures = figures
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        pair = self.context.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(self.address)
        try:
            store = open_event_store(self.settings, role=f"worker-{self.worker_id}")
            definitions = self.settings.definitions
            store.record_versions(  # a changed served version stops the worker (EXIT_CONFIG)
                {v: definitions.versions[v].content_hash for v in self.settings.versions},
                definitions.source,
            )
            cache = open_cache(self.settings)
            publisher = VectorPublisher(
                self.context,
                self.settings.drift_features_endpoint,
                self.worker_id,
                self.settings.enable_drift_monitoring,
                self.curve,
            )
        except BaseException as exc:  # the main thread raises it (no thread traceback)
            self.failure = exc
            self.ready.set()
            pair.close(linger=0)
            return
        handlers = Handlers(self.settings, store, cache, publisher, self.figures)
        if not publisher.wait_connected(CONNECT_WAIT_S):
            log.warning(
                "drift process not reachable at %s yet: vectors are published as soon as it is",
                self.settings.drift_features_endpoint,
            )
        self.ready.set()
        try:
            self.serve(pair, handlers)
        finally:
            pair.close(linger=0)
            publisher.close()
            cache.close()
            store.close()

    def serve(self, pair: zmq.Socket, handlers: Handlers) -> None:
        """Jobs until STOP; the store's upkeep while none comes and after each reply."""
        upkeep = handlers.upkeep
        told = False
        while True:
            if self.failure is None and not pair.poll(upkeep.timeout_ms(), POLLIN):
                self.run_upkeep(upkeep)
            else:
                frames = pair.recv_multipart(copy=False)
                if frames[0].bytes == STOP:
                    break
                reply_frames = self.run_job(handlers, [f.buffer for f in frames])
                pair.send_multipart(reply_frames, copy=copy_small(reply_frames))
                self.run_upkeep(upkeep)
            if self.failure is not None and not told:
                pair.send(FAILED)
                told = True

    def run_upkeep(self, upkeep: StoreUpkeep) -> None:
        if self.failure is not None:
            return
        try:
            upkeep.run_due()
        except StoreCorrupt as exc:
            log.error("%s", exc)
            self.failure = exc

    def run_job(self, handlers: Handlers, frames: list) -> list:
        try:
            job = decode_job(frames)
        except ProtocolError as error:  # counted and answered, never a dead compute thread
            self.figures.malformed += 1
            log.warning("malformed job dropped: %s", error.message)
            return error_result_frames(bytes(frames[0]) if frames else b"", error)
        try:
            if self.failure is not None:
                raise self.failure
            return handlers.handle(job)
        except StoreCorrupt as exc:
            if self.failure is None:
                log.error("%s %s: %s", rid(job.request_id), job.op.value, exc)
                self.failure = exc
            refused = ServiceError(
                Code.STORE_UNAVAILABLE, f"the event store is corrupt: {exc.problem}"
            )
            return error_result_frames(job.job_id, refused)
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed", rid(job.request_id), job.op.value)
            self.figures.errors += 1
            return error_result_frames(
                job.job_id, ServiceError(Code.INTERNAL, f"worker error: {exc}")
            )


class Worker:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.context = zmq.Context()
        self.figures = Figures()
        self.link = BrokerLink(
            self.context, settings, SERVICE_FEATURES, worker_id, self.figures.as_dict
        )
        address = f"inproc://compute-{worker_id}"
        self.pair = self.context.socket(zmq.PAIR)
        self.pair.setsockopt(zmq.LINGER, 0)
        self.pair.bind(address)
        self.compute = ComputeThread(
            self.context, address, settings, worker_id, self.figures, curve=self.link.curve
        )
        self.busy = False
        self.stopping = False

    def request_stop(self, *_: object) -> None:
        """SIGTERM: finish the job in hand, then leave."""
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.compute.start()
        self.compute.ready.wait()
        if self.compute.failure is not None:
            raise self.compute.failure
        poller = zmq.Poller()
        poller.register(self.pair, POLLIN)
        poller.register(self.link.connect(), POLLIN)
        log.info("worker %s ready (backend %s)", self.worker_id, self.settings.broker_backend)
        while not (self.stopping and not self.busy):
            events = dict(poller.poll(self.link.timeout_ms()))
            if self.pair in events:
                self.forward_result()
            if self.link.socket in events:
                self.take_message()
            socket = self.link.socket
            if self.link.tick():
                poller.unregister(socket)
                poller.register(self.link.socket, POLLIN)
        self.close()
        if self.compute.failure is not None:
            raise self.compute.failure  # run_role: one line, EXIT_DATA

    def take_message(self) -> None:
        frames = self.link.receive_raw()
        if frames is None:
            return
        if frames[0].bytes != W_JOB:
            return
        if self.busy or self.stopping:  # the broker sends one job at a time; never here
            log.warning("job refused: %s", "stopping" if self.stopping else "busy")
            return
        self.busy = True
        self.pair.send_multipart(frames[1:], copy=False)

    def forward_result(self) -> None:
        frames = self.pair.recv_multipart(copy=False)
        if frames[0].bytes == FAILED:
            self.stopping = True
            return
        self.busy = False
        self.link.socket.send_multipart(frames, copy=False)

    def close(self) -> None:
        log.info("worker %s stopping", self.worker_id)
        self.pair.send(STOP)
        self.compute.join(timeout=10)
        self.pair.close(linger=0)
        self.link.close()
        self.context.term()
