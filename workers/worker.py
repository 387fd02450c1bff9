"""A compute worker: one connection to the broker's back end, one job at a time."""

from __future__ import annotations

import logging
import signal
import time

import zmq

from featurestore.brokerlink import BrokerLink
from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.logs import rid
from featurestore.protocol import SERVICE_FEATURES, Reply
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
        self.link = BrokerLink(
            self.context, settings, SERVICE_FEATURES, worker_id, self.handlers.figures.as_dict
        )
        self.stopping = False

    def request_stop(self, *_: object) -> None:
        """SIGTERM: finish the job in hand, then leave."""
        self.stopping = True

    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        poller = zmq.Poller()
        poller.register(self.link.connect(), zmq.POLLIN)
        log.info("worker %s ready (backend %s)", self.worker_id, self.settings.broker_backend)
        while not self.stopping:
            if poller.poll(self.link.timeout_ms()):
                job = self.link.receive()
                if job is not None:
                    self.run_job(job)
            socket = self.link.socket
            if self.link.tick():
                poller.unregister(socket)
                poller.register(self.link.socket, zmq.POLLIN)
        self.close()

    def run_job(self, job: tuple) -> None:
        job_id, op, payload, blocks = job
        request_id = payload.pop("request_id", "")
        try:
            reply = self.handlers.handle(op, payload, blocks, request_id)
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed", rid(request_id), op.value)
            self.handlers.figures.errors += 1
            reply = Reply.error(request_id, ServiceError(Code.INTERNAL, f"worker error: {exc}"))
        self.link.send_result(job_id, reply)
        # The broker's heartbeats queued unread while the job ran: time spent computing is not
        # broker silence. Without this, a job longer than the liveness window made the link
        # reconnect at once, and closing the old socket (linger 0) dropped the result just sent.
        self.link.broker_expiry = max(
            self.link.broker_expiry, time.monotonic() + self.link.liveness_s
        )

    def close(self) -> None:
        log.info("worker %s stopping", self.worker_id)
        self.link.close()
        self.publisher.close()
        self.cache.close()
        self.store.close()
        self.context.term()
