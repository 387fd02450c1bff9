"""The drift process: absorbs the vectors workers publish, answers report and baseline
requests as the broker's `drift` service, publishes reports and alerts.

Sockets: SUB bound at DRIFT_FEATURES_ENDPOINT (workers connect and may come and go), PUB bound
at DRIFT_PUB_ENDPOINT (topics `report` and `alert`), and a BrokerLink to the broker. Vectors
are drained in bulk and absorbed per version as one matrix. Before answering a request the
SUB queue is drained, so a report includes every vector received before it.
"""

from __future__ import annotations

import logging
import signal
import time
from collections import defaultdict

import msgspec
import numpy as np
import orjson
import zmq

from drift import baselines
from drift.baseline_requests import BaselineRequests
from drift.monitor import DriftMonitor
from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.ops.logs import rid
from featurestore.security.curve import Domain, ZapServer
from featurestore.validation.decoding import decoded_payload
from featurestore.wire.backend import (
    TOPIC_ALERT,
    TOPIC_REPORT,
    TOPIC_VECTORS,
    Job,
    decode_vectors,
    error_result_frames,
    result_frames,
)
from featurestore.wire.frames import SERVICE_DRIFT, Op, ProtocolError, TooManyFrames, recv_frames
from featurestore.wire.link import BrokerLink
from featurestore.wire.messages import DriftBaselineRequest

log = logging.getLogger("drift")
DRAIN_LIMIT = 5000  # messages absorbed per loop turn at most
SUB_HWM = 100_000


class DriftService:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = zmq.Context()
        self.monitor = DriftMonitor(settings)
        self.requests = BaselineRequests(settings, self.monitor)
        restored = baselines.load(self.monitor, settings.data_dir, self.epochs())
        log.info("drift: %d complete baselines restored", restored)
        self.zap = ZapServer.start(self.context, settings)
        self.sub = self.context.socket(zmq.SUB)
        self.zap.secure(self.sub, Domain.VECTORS)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, SUB_HWM)
        self.sub.setsockopt(zmq.SUBSCRIBE, TOPIC_VECTORS)
        for endpoint in settings.drift_features_endpoint.split(","):
            self.sub.bind(endpoint.strip())
        self.pub = self.context.socket(zmq.PUB)
        self.zap.secure(self.pub, Domain.REPORTS)
        self.pub.setsockopt(zmq.LINGER, 0)
        for endpoint in settings.drift_pub_endpoint.split(","):
            self.pub.bind(endpoint.strip())
        self.link = BrokerLink(self.context, settings, SERVICE_DRIFT, "drift", self.figures)
        self.received = 0
        self.malformed = 0
        self.widths = {
            v: len(settings.definitions.versions[v].features) for v in self.monitor.pairs
        }
        self.complete_pairs = self._complete_count()
        self.interval_s = settings.drift_check_interval_ms / 1000
        self.next_report = time.monotonic() + self.interval_s
        self.stopping = False

    def epochs(self) -> dict[str, int]:
        """Each served version's serving epoch (drift baselines belong to one)."""
        served = self.requests.store.served_versions()
        return {name: first for name, (_, first) in served.items()}

    def figures(self) -> dict:
        return {
            "received": self.received,
            "dropped": self.monitor.dropped,
            "malformed": self.malformed,
        }

    def _complete_count(self) -> int:
        return sum(p.complete for pairs in self.monitor.pairs.values() for p in pairs)

    def request_stop(self, *_: object) -> None:
        self.stopping = True

    # ------------------------------------------------------------------------ loop
    def run(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.link.connect(), zmq.POLLIN)
        log.info(
            "drift ready: vectors %s, reports %s",
            self.settings.drift_features_endpoint,
            self.settings.drift_pub_endpoint,
        )
        while not self.stopping:
            wait = min(
                self.link.timeout_ms(), max(0, int((self.next_report - time.monotonic()) * 1000))
            )
            events = dict(poller.poll(wait))
            if self.sub in events:
                self.drain()
            if self.link.socket in events:
                job = self.link.receive()
                if job is not None:
                    self.answer(job)
            socket = self.link.socket
            if self.link.tick():
                poller.unregister(socket)
                poller.register(self.link.socket, zmq.POLLIN)
            if time.monotonic() >= self.next_report:
                self.publish_report()
        self.close()

    def drain(self, limit: int = DRAIN_LIMIT) -> int:
        """Absorb every waiting vector message (up to `limit`), one matrix per version."""
        batches: dict[str, list[np.ndarray]] = defaultdict(list)
        taken = 0
        max_frames = self.settings.zmq_max_frames
        while taken < limit and self.sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            taken += 1
            try:
                frames = recv_frames(self.sub, max_frames)
                worker_id, seq, version, values = decode_vectors(
                    [f.buffer for f in frames], self.widths
                )
            except (TooManyFrames, ProtocolError) as exc:  # counted, dropped; never a crash
                self.malformed += 1
                log.warning("malformed vector message dropped: %s", exc)
                continue
            self.monitor.count_sequence(worker_id, seq)
            batches[version].append(values)
        for version, parts in batches.items():
            matrix = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self.received += matrix.shape[0]
            self.monitor.absorb(version, matrix)
        if self._complete_count() != self.complete_pairs:
            self.complete_pairs = self._complete_count()
            baselines.save(self.monitor, self.settings.data_dir, self.epochs())
        return taken

    def drain_all(self) -> None:
        while self.drain():
            pass

    def answer(self, job: Job) -> None:
        self.drain_all()
        try:
            payload = decoded_payload(job.op, job.payload)
            if job.op is Op.DRIFT_REPORT:
                frames = result_frames(job.job_id, self.monitor.report())
            elif isinstance(payload, DriftBaselineRequest):
                body = self.requests.handle(msgspec.to_builtins(payload))
                baselines.save(self.monitor, self.settings.data_dir, self.epochs())
                self.complete_pairs = self._complete_count()
                frames = result_frames(job.job_id, body)
            else:
                raise ServiceError(Code.INVALID_REQUEST, f"drift does not handle {job.op.value!r}")
        except ServiceError as error:
            frames = error_result_frames(job.job_id, error)
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed", rid(job.request_id), job.op.value)
            frames = error_result_frames(
                job.job_id, ServiceError(Code.INTERNAL, f"drift error: {exc}")
            )
        self.link.send_result(frames)

    def publish_report(self) -> None:
        self.drain_all()
        report = self.monitor.report()
        self.pub.send_multipart([TOPIC_REPORT, orjson.dumps(report)])
        for alert in self.monitor.alerts(report):
            self.pub.send_multipart([TOPIC_ALERT, orjson.dumps(alert)])
        self.next_report = time.monotonic() + self.interval_s

    def close(self) -> None:
        log.info("drift stopping")
        self.link.close()
        self.sub.close(linger=0)
        self.pub.close(linger=0)
        self.requests.close()
        self.zap.stop()
        self.context.term()
