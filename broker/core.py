"""What the broker decides, without sockets: `BrokerCore` takes decoded frames and gives frames
to a `Transport`, so unit tests drive it with a stub transport and no processes (as
dramatiq's StubBroker), and `broker.broker.Broker` runs it on two ROUTER sockets.

Verbs (Majordomo style): `on_client` (decode the envelope, answer cache hits and broker
operations, split the rest into jobs), `on_worker` (READY, HEARTBEAT, RESULT), `dispatch`
(queued jobs to the least recently used idle worker), `send_heartbeats`, `purge_workers`
(re-dispatch the jobs of the silent ones) and `expire_requests` (timeouts, no_workers).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Protocol

import msgspec
import numpy as np
import zmq

from broker.pending import (
    BatchPending,
    ComputePending,
    GetPending,
    HistoricalPending,
    Job,
    Origin,
    Outcome,
    PassThrough,
    Pending,
)
from broker.registry import Registry, WorkerState
from broker.status import BrokerStatus
from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import definitions
from featurestore.ops.logs import rid
from featurestore.timestamps import now_ms
from featurestore.validation.decoding import decoded_payload
from featurestore.validation.requests import (
    check_batch,
    check_compute,
    check_get,
    check_historical,
    check_historical_rows,
)
from featurestore.wire.backend import (
    OK,
    decode_heartbeat,
    decode_ready,
    heartbeat_frames,
    job_frames,
)
from featurestore.wire.envelope import Request, decode_request, error_frames, reply_frames
from featurestore.wire.frames import (
    SERVICE_BROKER,
    SERVICE_DRIFT,
    SERVICE_FEATURES,
    SERVICE_OF,
    W_HEARTBEAT,
    W_READY,
    W_RESULT,
    Op,
    ProtocolError,
    peek_correlation,
    put_array,
)
from featurestore.wire.messages import Cleared, ComputeRequest, HistoricalRows
from featurestore.wire.results import single_answer

log = logging.getLogger("broker")
RETRY_AFTER_S = 1
MIN_SPLIT_CHUNK = 250


class Transport(Protocol):
    def to_client(self, client: bytes, frames: list) -> None: ...

    def to_worker(self, identity: bytes, frames: list) -> bool:
        """True if the frames were handed over; False if the worker is unreachable."""
        ...


class BrokerCore:
    def __init__(self, settings: Settings, cache, transport: Transport) -> None:
        self.settings = settings
        self.cache = cache
        self.transport = transport
        self.interval_s = settings.heartbeat_interval_ms / 1000
        self.liveness_s = self.interval_s * settings.heartbeat_liveness
        self.registry = Registry(self.liveness_s)
        self.queue: deque[Job] = deque()
        self.jobs: dict[bytes, Job] = {}
        self.pending: dict[tuple[bytes, int], Pending] = {}
        self.malformed = {"frontend": 0, "backend": 0}
        self.status = BrokerStatus(settings, self.registry, cache)
        self._width = cache.width
        self._serve = {
            Op.GET: self.start_get,
            Op.BATCH: self.start_batch,
            Op.HISTORICAL: self.start_historical,
            Op.COMPUTE: self.start_compute,
            Op.HISTORICAL_ROWS: self.start_historical_rows,
        }

    # ---------------------------------------------------------------------- clients
    def on_client(self, client: bytes, frames: list) -> None:
        """One client message (the frames after the ROUTER's identity)."""
        size = sum(len(f) for f in frames)
        try:
            if size > self.settings.zmq_maxmsgsize:
                raise ProtocolError(
                    f"message of {size} bytes exceeds ZMQ_MAXMSGSIZE "
                    f"({self.settings.zmq_maxmsgsize})",
                    code=Code.BODY_TOO_LARGE,
                    correlation_id=peek_correlation(frames),
                )
            request = decode_request(frames)
        except ProtocolError as error:
            self.malformed["frontend"] += 1
            self.reply(client, error_frames(error.correlation_id, error))
            return
        if (client, request.correlation_id) in self.pending:
            return  # a retry of a request in progress: its answer is on the way
        if not self.has_room(client):
            self.reply(client, error_frames(request.correlation_id, self.too_many(client)))
            return
        try:
            self.route(client, request)
        except ServiceError as error:
            self.reply(client, error_frames(request.correlation_id, error))
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed in the broker", rid(request.request_id), request.op)
            error = ServiceError(Code.INTERNAL, f"broker error: {exc}")
            self.reply(client, error_frames(request.correlation_id, error))

    def has_room(self, client: bytes) -> bool:
        """Hook for per-client bounds (broker.clients); the core alone has no limit."""
        return True

    def too_many(self, client: bytes) -> ServiceError:
        limit = self.settings.broker_client_max_pending
        return ServiceError(
            Code.OVERLOADED,
            f"this connection has {limit} requests in progress "
            "(BROKER_CLIENT_MAX_PENDING); retry shortly",
            retry_after_s=RETRY_AFTER_S,
        )

    def origin(self, client: bytes, request: Request) -> Origin:
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
        return Origin(client, request.correlation_id, request.request_id, deadline)

    def route(self, client: bytes, request: Request) -> None:
        op = request.op
        service = SERVICE_OF[op]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", rid(request.request_id), op.value, service)
        if service == SERVICE_BROKER:
            decoded_payload(op, request.payload)  # no fields: refuse what has some
            self.reply(client, reply_frames(request.correlation_id, self.broker_answer(op)))
            return
        origin = self.origin(client, request)
        serve = self._serve.get(op)
        if serve is not None:
            serve(origin, request)
            return
        if service == SERVICE_DRIFT and not self.settings.enable_drift_monitoring:
            body = self.status.drift_disabled(op)
            self.reply(client, reply_frames(request.correlation_id, body))
            return
        # ingest, ingest_columns, delete, drift: the worker or drift decodes the payload
        pending = PassThrough(origin)
        job = pending.add_job(service, op, request.payload, request.blocks)
        self.enqueue(pending, [job])

    def broker_answer(self, op: Op):
        if op is Op.STATS:
            return self.status.stats(self.message_figures())
        if op is Op.HEALTH:
            return self.status.health()
        if op is Op.DEFINITIONS:
            return definitions(self.settings.definitions, self.settings.versions)
        return Cleared(self.cache.clear())

    def message_figures(self) -> dict:
        return {"malformed": sum(self.malformed.values())}

    def _t(self, as_of_ms: int | None) -> int:
        return as_of_ms if as_of_ms is not None else now_ms()

    def start_get(self, origin: Origin, request: Request) -> None:
        plan = check_get(decoded_payload(Op.GET, request.payload), self.settings)
        query = plan.query
        if query.as_of_ms is None:
            hit = self.cache.get(query.version, plan.entity_id)
            if hit is not None:
                answer = single_answer(plan, hit[0], True, hit[1])
                self.reply(origin.client, reply_frames(request.correlation_id, answer))
                return
        t_ms = self._t(query.as_of_ms)
        pending = GetPending(origin, plan, t_ms)
        compute = ComputeRequest(query.version, [plan.entity_id], t_ms, query.as_of_ms is None)
        self.enqueue(pending, [pending.add_job(SERVICE_FEATURES, Op.COMPUTE, compute)])

    def start_batch(self, origin: Origin, request: Request) -> None:
        plan = check_batch(decoded_payload(Op.BATCH, request.payload), self.settings)
        query = plan.query
        t_ms = self._t(query.as_of_ms)
        count = len(plan.entity_ids)
        if query.as_of_ms is None:
            values, as_of, hit = self.cache.get_many(query.version, plan.entity_ids)
        else:
            values = np.empty((count, self._width))
            as_of = np.zeros(count, dtype=np.int64)
            hit = np.zeros(count, dtype=bool)
        pending = BatchPending(
            origin,
            plan,
            t_ms=t_ms,
            values=values,
            hit=np.asarray(hit, dtype=bool),
            as_of=np.asarray(as_of),
        )
        online = query.as_of_ms is None
        jobs = [
            pending.add_job(
                SERVICE_FEATURES, Op.COMPUTE, ComputeRequest(query.version, ids, t_ms, online)
            )
            for ids in pending.chunks(self.chunk_size(len(pending.missing)))
        ]
        if not jobs:
            self.reply(origin.client, pending.finish())
            return
        self.enqueue(pending, jobs)

    def start_compute(self, origin: Origin, request: Request) -> None:
        """The misses of a request the gateway decoded, checked and looked up itself: no
        cache read here, no re-parsing of the original request."""
        compute = check_compute(decoded_payload(Op.COMPUTE, request.payload), self.settings)
        pending = ComputePending(origin, compute, self._width)
        ids = compute.entity_ids
        jobs = [
            pending.add_job(
                SERVICE_FEATURES,
                Op.COMPUTE,
                ComputeRequest(compute.version, ids[span], compute.t_ms, compute.online),
            )
            for span in pending.spans(len(ids), self.chunk_size(len(ids)))
        ]
        self.enqueue(pending, jobs)

    def start_historical(self, origin: Origin, request: Request) -> None:
        payload = decoded_payload(Op.HISTORICAL, request.payload)
        self._historical(origin, check_historical(payload, self.settings), full=False)

    def start_historical_rows(self, origin: Origin, request: Request) -> None:
        payload = decoded_payload(Op.HISTORICAL_ROWS, request.payload)
        plan = check_historical_rows(payload, request.blocks, self.settings)
        self._historical(origin, plan, full=True)

    def _historical(self, origin: Origin, plan, *, full: bool) -> None:
        pending = HistoricalPending(origin, plan, self._width, full=full)
        version = plan.query.version
        jobs = []
        for span in pending.spans(len(plan.entity_ids), self.chunk_size(len(plan.entity_ids))):
            blocks: list = []
            ref = put_array(blocks, plan.timestamps[span])
            rows = HistoricalRows(version, plan.entity_ids[span], ref)
            jobs.append(pending.add_job(SERVICE_FEATURES, Op.HISTORICAL_CHUNK, rows, blocks))
        self.enqueue(pending, jobs)

    def chunk_size(self, count: int) -> int:
        """Entities or rows per job: at most BATCH_SIZE, and small enough that the idle
        workers share one request (never below MIN_SPLIT_CHUNK, where splitting costs more
        than it saves)."""
        idle = max(1, self.registry.idle_count(SERVICE_FEATURES))
        return min(self.settings.batch_size, max(MIN_SPLIT_CHUNK, -(-count // idle)))

    def enqueue(self, pending: Pending, jobs: list[Job]) -> None:
        if len(self.queue) + len(jobs) > self.settings.broker_queue_max:
            raise ServiceError(
                Code.OVERLOADED,
                f"the broker queue is full ({self.settings.broker_queue_max} jobs); retry shortly",
                retry_after_s=RETRY_AFTER_S,
            )
        self.pending[pending.key] = pending
        self.started(pending)
        self.queue.extend(jobs)

    def started(self, pending: Pending) -> None:
        """Hook: a request is now in progress (per-client accounting)."""

    def finished(self, pending: Pending) -> None:
        """Hook: a request is no longer in progress."""

    def reply(self, client: bytes, frames: list) -> None:
        self.transport.to_client(client, frames)

    def complete(self, pending: Pending, frames: list) -> None:
        if pending.done:
            return
        self.forget(pending)
        self.reply(pending.client, frames)

    def forget(self, pending: Pending) -> None:
        pending.done = True
        if self.pending.pop(pending.key, None) is not None:
            self.finished(pending)

    # ---------------------------------------------------------------------- workers
    def on_worker(self, identity: bytes, frames: list) -> None:
        """READY, HEARTBEAT or RESULT of a back-end peer (the frames after its identity); a
        malformed message is dropped (and counted), never a crash: the back end is a socket
        anyone allowed on it may connect to."""
        try:
            if not frames:
                raise ProtocolError("an empty back-end message")
            self._on_worker(identity, bytes(frames[0]), frames)
        except ProtocolError as error:
            self.malformed["backend"] += 1
            log.warning("malformed back-end message dropped: %s", error.message)

    def _on_worker(self, identity: bytes, command: bytes, frames: list) -> None:
        state = self.registry.touch(identity)
        if command == W_RESULT and state is not None:
            if len(frames) < 4:
                raise ProtocolError("a RESULT without job id, status and body")
            body = frames[3]
            raw = msgspec.Raw(body.buffer if isinstance(body, zmq.Frame) else body)
            outcome = Outcome(bytes(frames[2]) == OK, raw, list(frames[4:]))
            self.take_result(state, bytes(frames[1]), outcome)
        elif command == W_HEARTBEAT:
            if len(frames) < 2:
                raise ProtocolError("a HEARTBEAT without its body")
            heartbeat = decode_heartbeat(frames[1])
            if state is None and heartbeat.service:
                state = self.registry.register(
                    identity, heartbeat.service, heartbeat.worker_id or "?", heartbeat.pid or 0
                )
            if state is not None:
                state.figures = heartbeat.figures
        elif command == W_READY:
            if len(frames) < 2:
                raise ProtocolError("a READY without its body")
            ready = decode_ready(frames[1])
            if state is not None:
                self.worker_lost(state, "registered again")
            self.registry.register(identity, ready.service, ready.worker_id, ready.pid)
            log.info("%s worker %s (pid %s) ready", ready.service, ready.worker_id, ready.pid)
        elif state is not None or command != W_RESULT:
            raise ProtocolError(f"unknown back-end command {command!r}")

    def take_result(self, state: WorkerState, job_id: bytes, outcome: Outcome) -> None:
        job = self.jobs.pop(job_id, None)
        if state.job is not None and state.job.job_id == job_id:
            self.registry.release(state)
        if job is None or job.parent.done:
            return  # late answer of a request already answered (timeout) or re-dispatched
        state.jobs += 1
        if outcome.ok and job.op in (Op.COMPUTE, Op.HISTORICAL_CHUNK):
            self._count_computes(state, outcome)
        try:
            final = job.parent.absorb(job, outcome)
        except ProtocolError as error:
            final = job.parent.failure(ServiceError(Code.INTERNAL, error.message))
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s: a result could not be folded", rid(job.parent.request_id))
            final = job.parent.failure(ServiceError(Code.INTERNAL, f"broker error: {exc}"))
        if final is not None:
            self.complete(job.parent, final)

    @staticmethod
    def _count_computes(state: WorkerState, outcome: Outcome) -> None:
        try:
            _, _, answer = outcome.computed()
        except ProtocolError:
            return  # folded (and refused) by the pending request
        state.computes += answer.computes
        state.compute_ms += answer.compute_ms

    def dispatch(self) -> None:
        if not self.queue:
            return
        waiting: deque[Job] = deque()
        while self.queue:
            job = self.queue.popleft()
            if job.parent.done:
                continue
            worker = self.registry.next_idle(job.service)
            if worker is None:
                waiting.append(job)
                continue
            self.send_job(worker, job)
        self.queue = waiting

    def send_job(self, worker: WorkerState, job: Job) -> None:
        frames = job_frames(job.job_id, job.op, job.parent.request_id, job.payload, job.blocks)
        if not self.transport.to_worker(worker.identity, frames):
            log.warning("worker %s unreachable", worker.worker_id)
            self.registry.remove(worker.identity)
            self.queue.appendleft(job)
            return
        job.dispatches += 1
        job.worker = worker.identity
        worker.job = job
        self.jobs[job.job_id] = job

    def send_heartbeats(self) -> None:
        frames = heartbeat_frames()
        for identity in list(self.registry.workers):
            if not self.transport.to_worker(identity, frames):
                state = self.registry.workers.get(identity)
                if state is not None:
                    self.worker_lost(state, "unreachable")

    def purge_workers(self) -> None:
        for state in self.registry.expired():
            self.worker_lost(state, "silent")

    def worker_lost(self, state: WorkerState, why: str) -> None:
        """Forget a worker; its job goes back to the front of the queue, or fails after
        MAX_REDISPATCH re-dispatches (a request that kills every worker it reaches)."""
        self.registry.remove(state.identity)
        log.warning(
            "%s worker %s (pid %s) lost: %s", state.service, state.worker_id, state.pid, why
        )
        job = state.job
        if not isinstance(job, Job):
            return
        self.jobs.pop(job.job_id, None)
        if job.parent.done:
            return
        if job.dispatches > self.settings.max_redispatch:
            log.error("%s given up after %d dispatches", rid(job.parent.request_id), job.dispatches)
            error = ServiceError(
                Code.INTERNAL, f"the request failed on {job.dispatches} workers in turn"
            )
            self.complete(job.parent, job.parent.failure(error))
            return
        job.worker = None
        self.queue.appendleft(job)

    def expire_requests(self) -> None:
        now = time.monotonic()
        for pending in list(self.pending.values()):
            if now >= pending.deadline:
                error = ServiceError(
                    Code.TIMEOUT, f"no answer within {self.settings.request_timeout_ms} ms"
                )
                self.complete(pending, pending.failure(error))
        grace = self.liveness_s
        for job in self.queue:
            if job.parent.done or now - job.queued_at < grace:
                continue
            if not self.registry.alive(job.service):
                what = "compute worker" if job.service == SERVICE_FEATURES else "drift process"
                error = ServiceError(
                    Code.NO_WORKERS, f"no {what} is alive", retry_after_s=RETRY_AFTER_S
                )
                self.complete(job.parent, job.parent.failure(error))
