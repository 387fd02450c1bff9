"""Requests in progress at the broker and the jobs they were split into.

A `Pending` request owns one or more `Job`s (chunks for workers). Each result is folded in as
it arrives; when the last one is in, `finish()` builds the reply frames in request order.
Cache hits the broker found itself are in place before any job is sent. Results are decoded
only where they are folded; a pass-through reply is forwarded as it came.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import msgspec
import numpy as np

from featurestore.errors import Code, ServiceError
from featurestore.validation.requests import BatchPlan, GetPlan, HistoricalPlan
from featurestore.wire.envelope import error_frames, raw_reply_frames, reply_frames
from featurestore.wire.frames import Op, ProtocolError, get_array, put_array
from featurestore.wire.messages import ComputeAnswer, ComputeRequest, Message, decode_answer
from featurestore.wire.results import distinct, matrix_answer, single_answer

_job_ids = itertools.count(1)


def new_job_id() -> bytes:
    return next(_job_ids).to_bytes(8, "little")


@dataclass
class Job:
    job_id: bytes
    parent: Pending
    service: str
    op: Op
    payload: Message | msgspec.Raw
    blocks: list
    index: int = 0
    dispatches: int = 0
    worker: bytes | None = None
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class Outcome:
    """A worker's result, its body still encoded."""

    ok: bool
    body: msgspec.Raw | bytes | memoryview
    blocks: list

    def computed(self) -> tuple[np.ndarray, np.ndarray, ComputeAnswer]:
        """(values, found, answer) of a ComputeAnswer body."""
        try:
            answer = decode_answer(Op.COMPUTE, self.body)
            return (
                get_array(self.blocks, answer.values),
                get_array(self.blocks, answer.found),
                answer,
            )
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ProtocolError(f"a worker's result is not a compute answer: {exc}") from None


@dataclass(frozen=True)
class Origin:
    """Where a request came from and by when it must be answered."""

    client: bytes
    correlation_id: int
    request_id: str
    deadline: float


class Pending:
    """A client request being served: where to answer, by when, which jobs are left."""

    def __init__(self, origin: Origin) -> None:
        self.client = origin.client
        self.correlation_id = origin.correlation_id
        self.request_id = origin.request_id
        self.deadline = origin.deadline
        self.started = time.monotonic()
        self.jobs: list[Job] = []
        self.left = 0
        self.done = False

    @property
    def key(self) -> tuple[bytes, int]:
        return (self.client, self.correlation_id)

    def add_job(
        self, service: str, op: Op, payload: Message | msgspec.Raw, blocks: list | None = None
    ) -> Job:
        job = Job(new_job_id(), self, service, op, payload, blocks or [], index=len(self.jobs))
        self.jobs.append(job)
        self.left += 1
        return job

    def absorb(self, job: Job, outcome: Outcome) -> list | None:
        """Fold in one job's result; the reply frames once every job is in (or on an error)."""
        if not outcome.ok:
            return raw_reply_frames(self.correlation_id, False, outcome.body, [])
        self.take(job, outcome)
        self.left -= 1
        return self.finish() if self.left == 0 else None

    def take(self, job: Job, outcome: Outcome) -> None:
        self.outcome = outcome

    def finish(self) -> list:
        return raw_reply_frames(self.correlation_id, True, self.outcome.body, self.outcome.blocks)

    def failure(self, error: ServiceError) -> list:
        return error_frames(self.correlation_id, error)


class PassThrough(Pending):
    """One job whose result goes back unchanged (ingest, delete, drift operations)."""


class GetPending(Pending):
    """A client's single get that missed the cache: one entity computed."""

    def __init__(self, origin: Origin, plan: GetPlan, t_ms: int) -> None:
        super().__init__(origin)
        self.plan = plan
        self.t_ms = t_ms

    def finish(self) -> list:
        values, found, _ = self.outcome.computed()
        if not bool(found[0]):
            return self.failure(
                ServiceError(
                    Code.ENTITY_NOT_FOUND,
                    f"no events for entity {self.plan.entity_id!r} at or before {self.t_ms}",
                    entity_id=self.plan.entity_id,
                )
            )
        return reply_frames(
            self.correlation_id, single_answer(self.plan, values[0], False, self.t_ms)
        )


class Chunked(Pending):
    """Rows computed in chunks, each folded into one matrix at its offset."""

    def __init__(self, origin: Origin, rows: int, width: int) -> None:
        super().__init__(origin)
        self.values = np.empty((rows, width))
        self.found = np.zeros(rows, dtype=bool)
        self.chunk_starts: list[int] = []

    def take(self, job: Job, outcome: Outcome) -> None:
        values, found, _ = outcome.computed()
        start = self.chunk_starts[job.index]
        if values.shape[0] != found.shape[0] or values.shape[1] != self.values.shape[1]:
            raise ProtocolError("a worker's result has another shape than its job")
        self.values[start : start + values.shape[0]] = values
        self.found[start : start + values.shape[0]] = found

    def spans(self, count: int, size: int) -> list[slice]:
        out = []
        for start in range(0, count, size):
            self.chunk_starts.append(start)
            out.append(slice(start, start + size))
        return out


class ComputePending(Chunked):
    """A ComputeRequest (distinct entities at one T): full vectors in the order asked."""

    def __init__(self, origin: Origin, request: ComputeRequest, width: int) -> None:
        super().__init__(origin, len(request.entity_ids), width)
        self.t_ms = request.t_ms

    def finish(self) -> list:
        return compute_reply(self.correlation_id, self.values, self.found, self.t_ms)


class HistoricalPending(Chunked):
    """Historical rows: the selected features (a client's request) or full vectors (the
    gateway's HistoricalRows)."""

    def __init__(self, origin: Origin, plan: HistoricalPlan, width: int, *, full: bool) -> None:
        super().__init__(origin, len(plan.entity_ids), width)
        self.plan = plan
        self.full = full

    def finish(self) -> list:
        if self.full:
            return compute_reply(self.correlation_id, self.values, self.found, None)
        answer, blocks = matrix_answer(self.plan.query.view, self.values, self.found)
        return reply_frames(self.correlation_id, answer, blocks)


class BatchPending(Pending):
    """A client's batch: cache hits in place, distinct missing entities computed in chunks."""

    def __init__(
        self,
        origin: Origin,
        plan: BatchPlan,
        *,
        t_ms: int,
        values: np.ndarray,
        hit: np.ndarray,
        as_of: np.ndarray,
    ) -> None:
        super().__init__(origin)
        self.plan = plan
        self.t_ms = t_ms
        self.values = values
        self.hit = hit
        self.timestamps = np.where(hit, as_of, t_ms).astype(np.int64)
        self.found = hit.copy()
        miss_rows = np.flatnonzero(~hit)
        ids = plan.entity_ids
        self.miss_rows = miss_rows
        self.miss_codes, self.missing = distinct([ids[r] for r in miss_rows.tolist()])
        self.unique_values = np.empty((len(self.missing), values.shape[1]))
        self.unique_found = np.zeros(len(self.missing), dtype=bool)
        self.chunk_starts: list[int] = []

    def chunks(self, size: int) -> list[list[str]]:
        out = []
        for start in range(0, len(self.missing), size):
            self.chunk_starts.append(start)
            out.append(self.missing[start : start + size])
        return out

    def take(self, job: Job, outcome: Outcome) -> None:
        values, found, _ = outcome.computed()
        start = self.chunk_starts[job.index]
        self.unique_values[start : start + values.shape[0]] = values
        self.unique_found[start : start + values.shape[0]] = found

    def finish(self) -> list:
        if self.miss_rows.size:
            self.values[self.miss_rows] = self.unique_values[self.miss_codes]
            self.found[self.miss_rows] = self.unique_found[self.miss_codes]
        answer, blocks = matrix_answer(
            self.plan.query.view,
            self.values,
            self.found,
            cached=self.hit,
            timestamps=self.timestamps,
            timestamp=int(self.t_ms),
        )
        return reply_frames(self.correlation_id, answer, blocks)


def compute_reply(correlation_id: int, values: np.ndarray, found: np.ndarray, t_ms) -> list:
    blocks: list = []
    answer = ComputeAnswer(put_array(blocks, values), put_array(blocks, found), t_ms)
    return reply_frames(correlation_id, answer, blocks)
