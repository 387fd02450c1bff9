"""The broker: one poll loop routing client requests to services by name (Majordomo style).

Verbs: `process_client` (decode, answer cache hits and broker operations, split the rest into
jobs), `process_worker` (READY, HEARTBEAT, RESULT), `dispatch` (queued jobs to the least
recently used idle worker), `send_heartbeats`, `purge_workers` (re-dispatch the jobs of the
silent ones) and `expire_requests` (timeouts, no_workers).
"""

from __future__ import annotations

import logging
import signal
import time
from collections import deque

import msgpack
import numpy as np
import zmq

from broker.clients import FLUSH_INTERVAL_MS, FRONTEND_SNDHWM, ClientBook
from broker.pending import (
    BatchPending,
    GetPending,
    HistoricalPending,
    Job,
    PassThrough,
    Pending,
    single_body,
)
from broker.registry import Registry, WorkerState
from broker.status import BrokerStatus
from featurestore.config import Settings
from featurestore.curve import Domain, ZapServer
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import definitions
from featurestore.logs import rid
from featurestore.protocol import (
    EVENTS,
    POLLIN,
    SERVICE_BROKER,
    SERVICE_DRIFT,
    SERVICE_FEATURES,
    SERVICE_OF,
    W_HEARTBEAT,
    W_READY,
    W_RESULT,
    Op,
    ProtocolError,
    Reply,
    Request,
    TooManyFrames,
    heartbeat_frames,
    job_frames,
    put_array,
    recv_frames,
    unpack,
)
from featurestore.queries import parse_batch, parse_get, parse_historical, require_object
from featurestore.runtime import give_back_free_memory
from featurestore.timestamps import now_ms
from shm import FeatureCache

log = logging.getLogger("broker")
TRIM_AFTER_BYTES = 16 << 20  # backlog let go before the broker gives memory back
FRONTEND_RCVHWM = 100  # requests ZeroMQ queues per client while the loop is busy (backpressure)
BACKEND_HWM = 100_000  # messages to and from the stack's own workers
HARD_SIZE_FACTOR = 4  # ZeroMQ itself drops a peer sending frames over 4x ZMQ_MAXMSGSIZE
RETRY_AFTER_S = 1
MIN_SPLIT_CHUNK = 250


class Broker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = zmq.Context()
        self.zap = ZapServer.start(self.context, settings)
        self.frontend = self._router(
            settings.broker_frontend,
            settings.zmq_maxmsgsize,
            Domain.FRONTEND,
            FRONTEND_SNDHWM,
            FRONTEND_RCVHWM,
        )
        self.backend = self._router(
            settings.broker_backend,
            settings.zmq_maxmsgsize,
            Domain.BACKEND,
            BACKEND_HWM,
            BACKEND_HWM,
        )
        self.clients = ClientBook(
            self.frontend, settings.broker_client_max_pending, settings.broker_client_max_bytes
        )
        self.malformed = {"frontend": 0, "backend": 0}
        self.cache = FeatureCache.from_settings(settings)
        self.interval_s = settings.heartbeat_interval_ms / 1000
        self.liveness_s = self.interval_s * settings.heartbeat_liveness
        self.registry = Registry(self.liveness_s)
        self.queue: deque[Job] = deque()
        self.jobs: dict[bytes, Job] = {}
        self.pending: dict[tuple[bytes, str], Pending] = {}
        self.status = BrokerStatus(settings, self.registry, self.cache, self.message_figures)
        self.next_heartbeat = time.monotonic() + self.interval_s
        self.stopping = False
        self.stop_deadline = 0.0

    def _router(
        self, endpoints: str, max_bytes: int, domain: Domain, sndhwm: int, rcvhwm: int
    ) -> zmq.Socket:
        socket = self.context.socket(zmq.ROUTER)
        self.zap.secure(socket, domain)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        socket.setsockopt(zmq.SNDHWM, sndhwm)
        socket.setsockopt(zmq.RCVHWM, rcvhwm)
        socket.setsockopt(zmq.MAXMSGSIZE, max_bytes * HARD_SIZE_FACTOR)
        for endpoint in endpoints.split(","):
            socket.bind(endpoint.strip())
        return socket

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
                self._drain(self.backend, self.process_worker, "backend")
            if self.frontend in events:
                self._drain(self.frontend, self.process_client, "frontend", copy=True)
            self.dispatch()
            if self.clients.backlogged:
                self.clients.flush()
            if time.monotonic() >= self.next_heartbeat:
                self.cache.verify()
                self.give_back_memory()
                self.send_heartbeats()
                self.purge_workers()
                self.expire_requests()
                self.dispatch()
        self.close()

    def _drain(
        self, socket: zmq.Socket, handler, side: str, limit: int = 256, copy: bool = False
    ) -> None:
        """Handle up to `limit` waiting messages without blocking; a message of too many
        frames is counted and dropped before any work (the front end answers it)."""
        max_frames = self.settings.zmq_max_frames
        for _ in range(limit):
            try:  # a ROUTER's messages start with the peer's identity: one frame more
                frames = recv_frames(socket, max_frames + 1, copy)
            except TooManyFrames as refused:
                self.malformed[side] += 1
                count = refused.count - 1
                log.warning("%s message of %d frames dropped", side, count)
                if side == "frontend":
                    error = ProtocolError(
                        f"a message of {count} frames; at most ZMQ_MAX_FRAMES ({max_frames})",
                        _peek_request_id([bytes(f) for f in refused.kept[1:]]),
                    )
                    self.reply(bytes(refused.kept[0]), Reply.error(error.request_id, error))
            else:
                handler(frames)
            if not socket.getsockopt(EVENTS) & POLLIN:
                return

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

    # ---------------------------------------------------------------------- clients
    def process_client(self, frames: list[bytes]) -> None:
        client = frames[0]
        parts = frames[1:]
        size = sum(len(p) for p in parts)
        try:
            if size > self.settings.zmq_maxmsgsize:
                request_id = _peek_request_id(parts)
                raise ProtocolError(
                    f"message of {size} bytes exceeds ZMQ_MAXMSGSIZE "
                    f"({self.settings.zmq_maxmsgsize})",
                    request_id,
                    Code.BODY_TOO_LARGE,
                )
            request = Request.decode(parts)
        except ProtocolError as error:
            self.malformed["frontend"] += 1
            self.reply(client, Reply.error(error.request_id, error))
            return
        key = (client, request.request_id)
        if key in self.pending:
            return  # a retry of a request in progress: its answer is on the way
        if not self.clients.has_room(client):
            limit = self.settings.broker_client_max_pending
            self.reply(
                client,
                Reply.error(
                    request.request_id,
                    ServiceError(
                        Code.OVERLOADED,
                        f"this connection has {limit} requests in progress "
                        "(BROKER_CLIENT_MAX_PENDING); retry shortly",
                        retry_after_s=RETRY_AFTER_S,
                    ),
                ),
            )
            return
        try:
            self.route(client, request)
        except ServiceError as error:
            self.reply(client, Reply.error(request.request_id, error))
        except Exception as exc:  # a bug: answer `internal`, keep serving
            log.exception("%s %s failed in the broker", rid(request.request_id), request.op)
            self.reply(
                client,
                Reply.error(
                    request.request_id, ServiceError(Code.INTERNAL, f"broker error: {exc}")
                ),
            )

    def route(self, client: bytes, request: Request) -> None:
        op, payload = request.op, request.payload
        service = SERVICE_OF[op]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s -> %s", rid(request.request_id), op.value, service)
        if service == SERVICE_BROKER:
            self.reply(client, Reply(request.request_id, self.broker_answer(op, payload)))
            return
        deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
        if op is Op.GET:
            self.start_get(client, request, deadline)
        elif op is Op.BATCH:
            self.start_batch(client, request, deadline)
        elif op is Op.HISTORICAL:
            self.start_historical(client, request, deadline)
        else:
            if service == SERVICE_DRIFT and not self.settings.enable_drift_monitoring:
                self.reply(client, Reply(request.request_id, self.status.drift_disabled(op)))
                return
            pending = PassThrough(client, request.request_id, deadline)
            job = pending.add_job(service, op, payload, request.blocks)
            self.enqueue(pending, [job])

    def broker_answer(self, op: Op, payload: dict) -> dict:
        require_object(payload)
        if op is Op.STATS:
            return self.status.stats()
        if op is Op.HEALTH:
            return self.status.health()
        if op is Op.DEFINITIONS:
            return definitions(self.settings.versions)
        if op is Op.CLEAR:
            return {"cleared": self.cache.clear()}
        raise ServiceError(Code.INVALID_REQUEST, f"unknown operation {op.value!r}")

    def start_get(self, client: bytes, request: Request, deadline: float) -> None:
        plan = parse_get(request.payload, self.settings)
        query = plan.query
        if query.as_of_ms is None:
            hit = self.cache.get(query.version, plan.entity_id)
            if hit is not None:
                vector, as_of = hit
                self.reply(
                    client, Reply(request.request_id, single_body(plan, vector, True, as_of))
                )
                return
        t_ms = query.as_of_ms if query.as_of_ms is not None else now_ms()
        pending = GetPending(client, request.request_id, deadline, plan, t_ms)
        job = pending.add_job(
            SERVICE_FEATURES,
            Op.COMPUTE,
            {
                "version": query.version,
                "entity_ids": [plan.entity_id],
                "T": t_ms,
                "online": query.as_of_ms is None,
            },
        )
        self.enqueue(pending, [job])

    def start_batch(self, client: bytes, request: Request, deadline: float) -> None:
        plan = parse_batch(request.payload, self.settings)
        query = plan.query
        t_ms = query.as_of_ms if query.as_of_ms is not None else now_ms()
        count = len(plan.entity_ids)
        if query.as_of_ms is None:
            values, as_of, hit = self.cache.get_many(query.version, plan.entity_ids)
            values = np.array(values, dtype=np.float64)
        else:
            values = np.empty((count, self.cache.width))
            as_of = np.zeros(count, dtype=np.int64)
            hit = np.zeros(count, dtype=bool)
        pending = BatchPending(
            client,
            request.request_id,
            deadline,
            plan,
            t_ms=t_ms,
            values=values,
            hit=np.asarray(hit, dtype=bool),
            as_of=np.asarray(as_of),
        )
        jobs = [
            pending.add_job(
                SERVICE_FEATURES,
                Op.COMPUTE,
                {
                    "version": query.version,
                    "entity_ids": ids,
                    "T": t_ms,
                    "online": query.as_of_ms is None,
                },
            )
            for ids in pending.chunks(self.chunk_size(len(pending.missing)))
        ]
        if not jobs:
            self.reply(client, pending.finish())
            return
        self.enqueue(pending, jobs)

    def start_historical(self, client: bytes, request: Request, deadline: float) -> None:
        plan = parse_historical(request.payload, self.settings)
        pending = HistoricalPending(client, request.request_id, deadline, plan, self.cache.width)
        jobs = []
        for ids, stamps in pending.chunks(self.chunk_size(len(plan.entity_ids))):
            blocks: list = []
            ref = put_array(blocks, stamps)
            jobs.append(
                pending.add_job(
                    SERVICE_FEATURES,
                    Op.HISTORICAL_CHUNK,
                    {"version": plan.query.version, "entity_ids": ids, "timestamps": ref},
                    blocks,
                )
            )
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
        self.pending[(pending.client, pending.request_id)] = pending
        self.clients.started(pending.client)
        self.queue.extend(jobs)

    def reply(self, client: bytes, reply: Reply) -> None:
        """Send (or queue, bounded) a reply; a client whose replies pile up loses them and
        its requests in progress (ClientBook)."""
        if not self.clients.send(client, reply.encode()):
            self.cancel_client(client)

    def complete(self, pending: Pending, reply: Reply) -> None:
        if pending.done:
            return
        self.forget(pending)
        self.reply(pending.client, reply)

    def give_back_memory(self) -> None:
        """Once clients that stopped reading have been let go of and nothing is backlogged,
        return the freed memory to the kernel (the broker's RSS goes back to its baseline)."""
        if self.clients.released_bytes >= TRIM_AFTER_BYTES and not self.clients.backlogged:
            self.clients.take_released()
            give_back_free_memory()

    def message_figures(self) -> dict:
        return {"malformed": sum(self.malformed.values()), **self.clients.figures()}

    def forget(self, pending: Pending) -> None:
        pending.done = True
        if self.pending.pop((pending.client, pending.request_id), None) is not None:
            self.clients.finished(pending.client)

    def cancel_client(self, client: bytes) -> None:
        """Drop every request in progress of a client that stopped reading (their jobs are
        skipped when they come up in the queue; late results are ignored)."""
        for pending in [p for (c, _), p in self.pending.items() if c == client]:
            self.forget(pending)

    # ---------------------------------------------------------------------- workers
    def process_worker(self, frames: list) -> None:
        """READY, HEARTBEAT or RESULT of a back-end peer; a malformed message is dropped (and
        logged), never a crash: the back end is a socket anyone on the host may connect to."""
        if len(frames) < 2:
            self.malformed["backend"] += 1
            log.warning("back-end message of %d frame(s) dropped", len(frames))
            return
        try:
            self._process_worker(frames[0].bytes, frames[1].bytes, frames)
        except ProtocolError as error:
            self.malformed["backend"] += 1
            log.warning("malformed back-end message dropped: %s", error.message)

    def _process_worker(self, identity: bytes, command: bytes, frames: list) -> None:
        state = self.registry.touch(identity)
        if command == W_RESULT and state is not None:
            if len(frames) < 3:
                raise ProtocolError("RESULT without a job id")
            self.take_result(state, frames[2].bytes, [f.buffer for f in frames[3:]])
        elif command == W_HEARTBEAT:
            figures = _peer_map(frames[2]) if len(frames) > 2 else {}
            if state is None and figures.get("service"):
                state = self.registry.register(identity, *_peer_identity(figures))
            if state is not None:
                state.figures = figures
        elif command == W_READY:
            if len(frames) < 3:
                raise ProtocolError("READY without its map")
            service, worker_id, pid = _peer_identity(_peer_map(frames[2]))
            if state is not None:
                self.worker_lost(state, "registered again")
            self.registry.register(identity, service, worker_id, pid)
            log.info("%s worker %s (pid %s) ready", service, worker_id, pid)

    def take_result(self, state: WorkerState, job_id: bytes, parts: list) -> None:
        job = self.jobs.pop(job_id, None)
        if state.job is not None and state.job.job_id == job_id:
            self.registry.release(state)
        if job is None or job.parent.done:
            return  # late answer of a request already answered (timeout) or re-dispatched
        try:
            reply = Reply.decode(parts)
        except ProtocolError as error:
            reply = Reply.error(job.parent.request_id, ServiceError(Code.INTERNAL, error.message))
        state.jobs += 1
        body = reply.body
        if reply.ok and "computes" in body:
            state.computes += int(body.pop("computes"))
            state.compute_ms += float(body.pop("compute_ms", 0.0))
        final = job.parent.absorb(job, reply)
        if final is not None:
            self.complete(job.parent, final)

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
        try:
            self.backend.send_multipart(
                [worker.identity, *job_frames(job.job_id, job.op, job.payload, job.blocks)],
                flags=zmq.NOBLOCK,
                copy=False,
            )
        except zmq.ZMQError as exc:  # gone (ROUTER_MANDATORY) or stuck: drop it, keep the job
            log.warning("worker %s unreachable (%s)", worker.worker_id, exc)
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
            try:
                self.backend.send_multipart([identity, *frames], flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                state = self.registry.workers.get(identity)
                if state is not None:
                    self.worker_lost(state, "unreachable")
        self.next_heartbeat = time.monotonic() + self.interval_s

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
            self.complete(
                job.parent,
                job.parent.failure(
                    ServiceError(
                        Code.INTERNAL, f"the request failed on {job.dispatches} workers in turn"
                    )
                ),
            )
            return
        job.worker = None
        self.queue.appendleft(job)

    def expire_requests(self) -> None:
        now = time.monotonic()
        for pending in list(self.pending.values()):
            if now >= pending.deadline:
                self.complete(
                    pending,
                    pending.failure(
                        ServiceError(
                            Code.TIMEOUT, f"no answer within {self.settings.request_timeout_ms} ms"
                        )
                    ),
                )
        grace = self.liveness_s
        for job in self.queue:
            if job.parent.done or now - job.queued_at < grace:
                continue
            if not self.registry.alive(job.service):
                what = "compute worker" if job.service == SERVICE_FEATURES else "drift process"
                self.complete(
                    job.parent,
                    job.parent.failure(
                        ServiceError(
                            Code.NO_WORKERS, f"no {what} is alive", retry_after_s=RETRY_AFTER_S
                        )
                    ),
                )


def _peer_map(frame) -> dict:
    """The msgpack map of a READY or HEARTBEAT frame; ProtocolError when it is not one."""
    try:
        value = unpack(frame.buffer)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise ProtocolError("a back-end frame is not msgpack") from None
    if not isinstance(value, dict):
        raise ProtocolError("a back-end READY/HEARTBEAT frame must be a map")
    return value


def _peer_identity(info: dict) -> tuple[str, str, int]:
    """(service, worker id, pid) of a READY map (or of a heartbeat that carries them)."""
    service, pid = info.get("service"), info.get("pid", 0)
    if not isinstance(service, str) or not service:
        raise ProtocolError("a back-end peer must name its service")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise ProtocolError("a back-end peer's pid must be a non-negative integer")
    return service, str(info.get("worker_id", "?")), pid


def _peek_request_id(parts: list) -> str:
    try:
        header = unpack(parts[0])
        return header[1] if isinstance(header, list) and isinstance(header[1], str) else ""
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        return ""  # only a best effort to name the request
