"""The broker's view of its workers: who is alive, who is idle (least recently used first),
what each is doing, and the figures each reported."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from featurestore.wire.frames import SERVICE_DRIFT, SERVICE_FEATURES
from featurestore.wire.messages import WorkerSummary


@dataclass
class WorkerState:
    identity: bytes
    service: str
    worker_id: str
    pid: int
    expiry: float
    job: object | None = None  # the Job in hand
    figures: dict = field(default_factory=dict)
    computes: int = 0
    compute_ms: float = 0.0
    jobs: int = 0

    def summary(self) -> WorkerSummary:
        avg = self.compute_ms / self.computes if self.computes else 0.0
        return WorkerSummary(
            id=self.worker_id,
            pid=self.pid,
            computes=self.computes,
            avg_compute_latency_ms=round(avg, 4),
            jobs=self.jobs,
            busy=self.job is not None,
            ingested=int(self.figures.get("ingested", 0)),
            errors=int(self.figures.get("errors", 0)),
        )


class Registry:
    def __init__(self, liveness_s: float) -> None:
        self.liveness_s = liveness_s
        self.workers: dict[bytes, WorkerState] = {}
        self.idle: dict[str, deque[bytes]] = {SERVICE_FEATURES: deque(), SERVICE_DRIFT: deque()}
        self.retired_computes = 0
        self.retired_compute_ms = 0.0
        self.retired_malformed = 0  # malformed jobs counted by workers that are gone

    def register(self, identity: bytes, service: str, worker_id: str, pid: int) -> WorkerState:
        state = WorkerState(identity, service, worker_id, pid, time.monotonic() + self.liveness_s)
        self.workers[identity] = state
        self.idle.setdefault(service, deque()).append(identity)
        return state

    def touch(self, identity: bytes) -> WorkerState | None:
        state = self.workers.get(identity)
        if state is not None:
            state.expiry = time.monotonic() + self.liveness_s
        return state

    def idle_count(self, service: str) -> int:
        return sum(1 for s in self.workers.values() if s.service == service and s.job is None)

    def next_idle(self, service: str) -> WorkerState | None:
        """The least recently used idle worker of `service` (removed from the idle queue)."""
        queue = self.idle.get(service)
        while queue:
            state = self.workers.get(queue.popleft())
            if state is not None and state.job is None:
                return state
        return None

    def release(self, state: WorkerState) -> None:
        state.job = None
        self.idle[state.service].append(state.identity)

    def remove(self, identity: bytes) -> WorkerState | None:
        state = self.workers.pop(identity, None)
        if state is not None:
            self.retired_computes += state.computes
            self.retired_compute_ms += state.compute_ms
            if state.service == SERVICE_FEATURES:
                self.retired_malformed += int(state.figures.get("malformed", 0))
            queue = self.idle.get(state.service)
            if queue is not None and identity in queue:
                queue.remove(identity)
        return state

    def expired(self) -> list[WorkerState]:
        """Workers silent for longer than the liveness window, except those computing a job
        whose request still waits: a worker cannot heartbeat while it computes (SPEC §11 adds
        the longest compute to the liveness window), and one that died is found unreachable at
        the broker's next heartbeat anyway. A hung one is dropped once its request expired."""
        now = time.monotonic()
        return [s for s in self.workers.values() if s.expiry < now and not _computing(s, now)]

    def alive(self, service: str) -> list[WorkerState]:
        return [s for s in self.workers.values() if s.service == service]

    def totals(self) -> tuple[int, float]:
        live = self.alive(SERVICE_FEATURES)
        computes = self.retired_computes + sum(s.computes for s in live)
        compute_ms = self.retired_compute_ms + sum(s.compute_ms for s in live)
        return computes, compute_ms


def _computing(state: WorkerState, now: float) -> bool:
    job = state.job
    return job is not None and not job.parent.done and now < job.parent.deadline
