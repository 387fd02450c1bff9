"""Requests in progress at the broker and the jobs they were split into.

A `Pending` request owns one or more `Job`s (chunks for workers). Each result is folded in as
it arrives; when the last one is in, `finish()` builds the reply in request order. Cache hits
found by the broker itself are already in place before any job is sent.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field

import numpy as np

from featurestore.errors import Code, ServiceError
from featurestore.protocol import Op, Reply, get_array, put_array
from featurestore.queries import BatchPlan, GetPlan, HistoricalPlan
from featurestore.results import single_body

_job_ids = itertools.count(1)


def new_job_id() -> bytes:
    return next(_job_ids).to_bytes(8, "little")


@dataclass
class Job:
    job_id: bytes
    parent: Pending
    service: str
    op: Op
    payload: dict
    blocks: list
    index: int = 0
    dispatches: int = 0
    worker: bytes | None = None
    queued_at: float = field(default_factory=time.monotonic)


class Pending:
    """A client request being served: where to answer, by when, which jobs are left."""

    def __init__(self, client: bytes, request_id: str, deadline: float) -> None:
        self.client = client
        self.request_id = request_id
        self.deadline = deadline
        self.started = time.monotonic()
        self.jobs: list[Job] = []
        self.left = 0
        self.done = False

    def add_job(self, service: str, op: Op, payload: dict, blocks: list | None = None) -> Job:
        job = Job(
            new_job_id(),
            self,
            service,
            op,
            {**payload, "request_id": self.request_id},
            blocks or [],
            index=len(self.jobs),
        )
        self.jobs.append(job)
        self.left += 1
        return job

    def absorb(self, job: Job, reply: Reply) -> Reply | None:
        """Fold in one job's reply; the final reply once every job is in (or on an error)."""
        if not reply.ok:
            return Reply(self.request_id, reply.body, ok=False)
        self.take(job, reply)
        self.left -= 1
        return self.finish() if self.left == 0 else None

    def take(self, job: Job, reply: Reply) -> None:
        self.result = reply

    def finish(self) -> Reply:
        return Reply(self.request_id, self.result.body, blocks=self.result.blocks)

    def failure(self, error: ServiceError) -> Reply:
        return Reply.error(self.request_id, error)


class PassThrough(Pending):
    """One job whose reply goes back unchanged (ingest, delete, drift operations)."""


class GetPending(Pending):
    def __init__(self, client: bytes, request_id: str, deadline: float, plan: GetPlan, t_ms: int):
        super().__init__(client, request_id, deadline)
        self.plan = plan
        self.t_ms = t_ms

    def finish(self) -> Reply:
        body, blocks = self.result.body, self.result.blocks
        if not bool(get_array(blocks, body["found"])[0]):
            return self.failure(
                ServiceError(
                    Code.ENTITY_NOT_FOUND,
                    f"no events for entity {self.plan.entity_id!r} at or before {self.t_ms}",
                    entity_id=self.plan.entity_id,
                )
            )
        vector = get_array(blocks, body["values"])[0]
        return Reply(self.request_id, single_body(self.plan, vector, False, self.t_ms))


class BatchPending(Pending):
    """A batch: cache hits in place, distinct missing entities computed in chunks."""

    def __init__(
        self,
        client: bytes,
        request_id: str,
        deadline: float,
        plan: BatchPlan,
        *,
        t_ms: int,
        values: np.ndarray,
        hit: np.ndarray,
        as_of: np.ndarray,
    ) -> None:
        super().__init__(client, request_id, deadline)
        self.plan = plan
        self.t_ms = t_ms
        self.values = values
        self.hit = hit
        self.timestamps = np.where(hit, as_of, t_ms).astype(np.int64)
        self.found = hit.copy()
        miss_rows = np.flatnonzero(~hit)
        position: dict[str, int] = {}
        ids = plan.entity_ids
        self.miss_rows = miss_rows
        self.miss_codes = np.fromiter(
            (position.setdefault(ids[r], len(position)) for r in miss_rows.tolist()),
            dtype=np.int64,
            count=miss_rows.size,
        )
        self.missing = list(position)
        self.unique_values = np.empty((len(self.missing), values.shape[1]))
        self.unique_found = np.zeros(len(self.missing), dtype=bool)
        self.chunk_starts: list[int] = []

    def chunks(self, size: int) -> list[list[str]]:
        out = []
        for start in range(0, len(self.missing), size):
            self.chunk_starts.append(start)
            out.append(self.missing[start : start + size])
        return out

    def take(self, job: Job, reply: Reply) -> None:
        start = self.chunk_starts[job.index]
        values = get_array(reply.blocks, reply.body["values"])
        found = get_array(reply.blocks, reply.body["found"])
        self.unique_values[start : start + values.shape[0]] = values
        self.unique_found[start : start + values.shape[0]] = found

    def finish(self) -> Reply:
        if self.miss_rows.size:
            self.values[self.miss_rows] = self.unique_values[self.miss_codes]
            self.found[self.miss_rows] = self.unique_found[self.miss_codes]
        return matrix_reply(
            self.request_id,
            self.plan.query.view,
            self.values,
            self.found,
            extra={"cached": self.hit, "timestamps": self.timestamps},
            scalars={"timestamp": int(self.t_ms)},
        )


class HistoricalPending(Pending):
    def __init__(
        self, client: bytes, request_id: str, deadline: float, plan: HistoricalPlan, width: int
    ) -> None:
        super().__init__(client, request_id, deadline)
        self.plan = plan
        rows = len(plan.entity_ids)
        self.values = np.empty((rows, width))
        self.found = np.zeros(rows, dtype=bool)
        self.chunk_starts: list[int] = []

    def chunks(self, size: int) -> list[tuple[list[str], np.ndarray]]:
        out = []
        for start in range(0, len(self.plan.entity_ids), size):
            self.chunk_starts.append(start)
            out.append(
                (
                    self.plan.entity_ids[start : start + size],
                    self.plan.timestamps[start : start + size],
                )
            )
        return out

    def take(self, job: Job, reply: Reply) -> None:
        start = self.chunk_starts[job.index]
        values = get_array(reply.blocks, reply.body["values"])
        self.values[start : start + values.shape[0]] = values
        self.found[start : start + values.shape[0]] = get_array(reply.blocks, reply.body["found"])

    def finish(self) -> Reply:
        return matrix_reply(self.request_id, self.plan.query.view, self.values, self.found)


def matrix_reply(
    request_id: str,
    view,
    values: np.ndarray,
    found: np.ndarray,
    *,
    extra: dict | None = None,
    scalars: dict | None = None,
) -> Reply:
    """A batch/historical result: selected columns as one float64 block plus per-row arrays."""
    blocks: list = []
    selected = (
        values[:, view.columns]
        if len(view.columns) != values.shape[1] or view.columns != list(range(values.shape[1]))
        else values
    )
    body = {
        "count": int(found.size),
        "version": view.version,
        "features": view.names,
        "values": put_array(blocks, selected),
        "found": put_array(blocks, found),
    }
    for name, array in (extra or {}).items():
        body[name] = put_array(blocks, array)
    body.update(scalars or {})
    return Reply(request_id, body, blocks=blocks)
