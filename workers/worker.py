"""A compute worker: one DEALER connection to the broker's back end, one job at a time.

Majordomo-style: READY on connect, heartbeats both ways, and a fresh connection (READY again)
when the broker has been silent for HEARTBEAT_LIVENESS intervals or says DISCONNECT, so a
restarted broker gets its workers back by itself.
"""

from __future__ import annotations

import logging
import os
import signal
import time

import zmq

from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.logs import rid
from featurestore.protocol import (
    SERVICE_FEATURES,
    W_DISCONNECT,
    W_HEARTBEAT,
    W_JOB,
    Reply,
    decode_job,
    heartbeat_frames,
    ready_frames,
    result_frames,
)
from featurestore.store.sqlite import open_store
from shm import FeatureCache
from workers.handlers import Handlers
from workers.publisher import VectorPublisher

log = logging.getLogger("worker")


class Worker:
    def __init__(self, settings: Settings, worker_id: str) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.context = zmq.Context()
        self.store = open_store(settings.data_dir)
        self.cache = FeatureCache.from_settings(settings)
        self.publisher = VectorPublisher(
            self.context,
            settings.drift_features_endpoint,
            worker_id,
            settings.enable_drift_monitoring,
        )
        self.handlers = Handlers(settings, self.store, self.cache, self.publisher)
        self.socket: zmq.Socket | None = None
        self.interval_s = settings.heartbeat_interval_ms / 1000
        self.broker_expiry = 0.0
        self.next_heartbeat = 0.0
        self.stopping = False

    def connect(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(
            zmq.IDENTITY, f"w-{self.worker_id}-{os.getpid()}-{time.monotonic_ns()}".encode()
        )
        for endpoint in self.settings.broker_backend.split(","):
            self.socket.connect(endpoint.strip())
        self.socket.send_multipart(ready_frames(SERVICE_FEATURES, self.worker_id, os.getpid()))
        self.broker_expiry = time.monotonic() + self.interval_s * self.settings.heartbeat_liveness
        self.next_heartbeat = time.monotonic() + self.interval_s

    def request_stop(self, *_: object) -> None:
        """SIGTERM: finish the job in hand, then leave."""
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        self.connect()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        log.info("worker %s ready (backend %s)", self.worker_id, self.settings.broker_backend)
        while not self.stopping:
            timeout_ms = max(0, int((self.next_heartbeat - time.monotonic()) * 1000))
            if poller.poll(timeout_ms):
                self.process(self.socket.recv_multipart(copy=False))
            now = time.monotonic()
            if now >= self.broker_expiry:
                log.warning(
                    "broker silent for %.1f s: reconnecting",
                    self.interval_s * self.settings.heartbeat_liveness,
                )
                poller.unregister(self.socket)
                self.connect()
                poller.register(self.socket, zmq.POLLIN)
            if now >= self.next_heartbeat:
                self.send_heartbeat()
        self.close()

    def send_heartbeat(self) -> None:
        figures = self.handlers.figures.as_dict()
        figures.update(pid=os.getpid(), worker_id=self.worker_id, service=SERVICE_FEATURES)
        self.socket.send_multipart(heartbeat_frames(figures))
        self.next_heartbeat = time.monotonic() + self.interval_s

    def process(self, frames: list) -> None:
        self.broker_expiry = time.monotonic() + self.interval_s * self.settings.heartbeat_liveness
        command = frames[0].bytes
        if command == W_JOB:
            self.run_job([f.buffer for f in frames[1:]])
        elif command == W_DISCONNECT:
            self.broker_expiry = 0.0  # reconnect and register again
        elif command != W_HEARTBEAT:
            log.warning("unknown command %r from the broker", command)

    def run_job(self, frames: list) -> None:
        job_id, op, payload, blocks = decode_job(frames)
        request_id = payload.pop("request_id", "")
        try:
            reply = self.handlers.handle(op, payload, blocks, request_id)
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed", rid(request_id), op.value)
            self.handlers.figures.errors += 1
            reply = Reply.error(request_id, ServiceError(Code.INTERNAL, f"worker error: {exc}"))
        self.socket.send_multipart(result_frames(job_id, reply), copy=False)
        if time.monotonic() >= self.next_heartbeat:
            self.send_heartbeat()

    def close(self) -> None:
        log.info("worker %s stopping", self.worker_id)
        if self.socket is not None:
            self.socket.close(linger=0)
        self.publisher.close()
        self.cache.close()
        self.store.close()
        self.context.term()
