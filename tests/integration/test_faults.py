"""Faults made real (SPEC §11): a worker SIGKILLed under load, a request that kills every
worker it reaches, a broker restarted with requests in flight, and overload (one worker, a
tiny queue, requests slow by real work). Each test breaks its own private stack.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from integration_support import (
    DAY_MS,
    DEMO_END_MS,
    batch_of,
    entity,
    event_count,
    expected_matrix,
    full_vector,
    identical,
    start_peer,
    wait_alive,
)
from peer_worker import EXIT_POISONED

from featurestore.errors import Code, ServiceError
from featurestore.ops.launcher import Stack, wait_for
from featurestore.wire.client import AsyncClient
from featurestore.wire.client import Response as Reply
from featurestore.wire.frames import Op

StackFactory = Callable[..., Stack]


class Workload:
    """Requests whose expected answers are known: as_of gets, as_of batches and historical
    chunks (never cached, so every one reaches a worker), checked bit for bit."""

    def __init__(self) -> None:
        self.requests: list[tuple[Op, dict]] = []
        self.spans: list[tuple[int, int]] = []  # rows of the flat (entity, T) list
        self.ids: list[str] = []
        self.stamps: list[int] = []

    def _add(self, op: Op, payload: dict, ids: list[str], stamps: list[int]) -> None:
        self.requests.append((op, payload))
        self.spans.append((len(self.ids), len(self.ids) + len(ids)))
        self.ids += ids
        self.stamps += stamps

    def get(self, eid: str, as_of: int) -> None:
        self._add(Op.GET, {"entity_id": eid, "as_of": as_of}, [eid], [as_of])

    def batch(self, ids: list[str], as_of: int) -> None:
        self._add(Op.BATCH, {"entity_ids": ids, "as_of": as_of}, ids, [as_of] * len(ids))

    def historical(self, ids: list[str], stamps: list[int]) -> None:
        self._add(Op.HISTORICAL, {"entity_ids": ids, "timestamps": stamps}, ids, stamps)

    def check(self, replies: list[Reply], demo_dir: Path) -> None:
        """Every reply is a success with exactly the engine's numbers."""
        expected, _ = expected_matrix(demo_dir, self.ids, self.stamps)
        assert len(replies) == len(self.requests)
        for (op, payload), (start, stop), reply in zip(
            self.requests, self.spans, replies, strict=True
        ):
            assert reply.ok, reply.body
            if op is Op.GET:
                assert reply.body["timestamp"] == payload["as_of"]
                got = full_vector(reply.body["features"])[None, :]
            else:
                ids = self.ids[start:stop]
                got = batch_of(ids, reply).values
            assert identical(got, expected[start:stop]), (op, payload)


def mixed_workload(size: int, rows_per_chunk: int) -> Workload:
    work = Workload()
    for i in range(size):
        as_of = DEMO_END_MS - (i % 20) * DAY_MS - i * 1009
        kind = i % 3
        if kind == 0:
            work.get(entity(i % 300), as_of)
        elif kind == 1:
            work.batch([entity((i + k * 7) % 300) for k in range(40)], as_of)
        else:
            ids = [entity((i + k) % 300) for k in range(rows_per_chunk)]
            work.historical(ids, [as_of - (k % 48) * 3_600_000 for k in range(rows_per_chunk)])
    return work


def worker_busy(stack: Stack, worker_id: str) -> bool:
    with stack.client(timeout_ms=2000) as fs:
        workers = {w["id"]: w for w in fs.stats()["workers"]}
    return worker_id in workers and workers[worker_id]["busy"] and workers[worker_id]["jobs"] > 0


# -------------------------------------------------------------------- SIGKILL a worker
def test_sigkilled_worker_under_load_costs_no_caller_an_error(
    make_stack: StackFactory, demo_dir: Path
) -> None:
    stack = make_stack(workers=2)
    work = mixed_workload(300, rows_per_chunk=400)
    online = [entity(200 + i) for i in range(30)]  # cold: computed, then written to the cache
    with stack.client(timeout_ms=30_000) as fs:
        # Given a few hundred requests in flight on one connection
        request_ids = [fs.submit(op, payload) for op, payload in work.requests]
        online_ids = [fs.submit(Op.GET, {"entity_id": e}) for e in online]
        # When worker 0 is SIGKILLed while it has a job in hand
        wait_for(lambda: worker_busy(stack, "0"), 10, "worker 0 busy")
        killed = stack.kill("worker-0", signal.SIGKILL)
        # Then every request succeeds with the right numbers
        work.check(fs.collect(request_ids), demo_dir)
        for eid, reply in zip(online, fs.collect(online_ids), strict=True):
            assert reply.ok, reply.body
            expected, _ = expected_matrix(demo_dir, [eid], reply.body["timestamp"])
            assert identical(full_vector(reply.body["features"]), expected[0])
        # And the pool recovers: worker 0 restarted (new pid), both alive, both serving
        wait_for(lambda: stack.restart_count("worker-0") == 1, 10, "worker 0 restarted")
        assert stack.pid("worker-0") != killed
        wait_alive(stack, 2)
        assert stack.restart_count("broker") == 0
        assert stack.restart_count("worker-1") == 0
        assert sorted(w["id"] for w in fs.stats()["workers"]) == ["0", "1"]
        again = mixed_workload(12, rows_per_chunk=50)
        work_ids = [fs.submit(op, payload) for op, payload in again.requests]
        again.check(fs.collect(work_ids), demo_dir)
        # The cache written before the kill still serves
        cached = fs.get(online[0])
        assert cached["cached"] is True


# ------------------------------------------------------------------- poison request
def test_a_request_that_kills_every_worker_is_answered_internal(
    make_stack: StackFactory, demo_dir: Path
) -> None:
    max_redispatch = 2
    stack = make_stack(
        workers=0,
        env={"MAX_REDISPATCH": str(max_redispatch), "HEARTBEAT_INTERVAL_MS": "100"},
    )
    peers = [start_peer(stack, f"poison-{i}", "poison", f"p{i}") for i in range(4)]
    wait_alive(stack, len(peers))
    with stack.client() as fs:
        # When a request reaches a worker that dies of it, again and again
        with pytest.raises(ServiceError) as failed:
            fs.get(entity(1))
        # Then it is answered `internal` after 1 + MAX_REDISPATCH dispatches, not a timeout
        assert failed.value.code is Code.INTERNAL
        assert failed.value.http_status == 500

        def exited() -> list[int]:
            return [p.process.poll() for p in peers if p.process.poll() is not None]

        wait_for(lambda: len(exited()) == 1 + max_redispatch, 5, "the poisoned peers' exits")
        assert exited() == [EXIT_POISONED] * (1 + max_redispatch)
        survivor = next(p for p in peers if p.process.poll() is None)
        # And the broker keeps serving: the survivor is still registered, nothing restarted
        assert fs.health()["workers"]["alive"] == 1
        assert stack.restart_count("broker") == 0
        stack.kill(survivor.name)
        wait_alive(stack, 0)
        with pytest.raises(ServiceError) as nobody:
            fs.get(entity(1))
        assert nobody.value.code is Code.NO_WORKERS
        # A healthy worker that joins serves the next request
        stack.add("worker-x", [sys.executable, "-m", "workers", "--id", "9"])
        wait_alive(stack, 1)
        served = fs.get(entity(1), as_of=DEMO_END_MS)
        expected, _ = expected_matrix(demo_dir, [entity(1)], DEMO_END_MS)
        assert identical(full_vector(served["features"]), expected[0])
        assert [w["id"] for w in fs.stats()["workers"]] == ["9"]


# ------------------------------------------------------------------- broker restart
def test_broker_restart_clients_and_workers_reconnect_by_themselves(
    make_stack: StackFactory, demo_dir: Path
) -> None:
    stack = make_stack(workers=2)
    workers = {name: stack.pid(name) for name in ("worker-0", "worker-1")}
    work = mixed_workload(60, rows_per_chunk=400)
    events = [
        {"entity_id": "restart_entity", "timestamp": DEMO_END_MS - i * 60_000, "value": float(i)}
        for i in range(5)
    ]
    with stack.client(timeout_ms=30_000) as fs:
        assert fs.health()["workers"]["alive"] == 2  # connected through the first broker
        # Given requests in flight, an ingest among them
        ingest_id = fs.submit(Op.INGEST, {"events": events})
        request_ids = [fs.submit(op, payload) for op, payload in work.requests]
        # When the broker is SIGKILLed (the launcher restarts it, like supervisord)
        old_broker = stack.kill("broker")
        # Then the same client gets every answer: its requests are retried by themselves
        ingest, *replies = fs.collect([ingest_id, *request_ids])
        work.check(replies, demo_dir)
        assert ingest.ok, ingest.body
        assert ingest.body == {"accepted": 5, "duplicates": 0}
        assert event_count(stack.data_dir, "restart_entity") == 5  # stored once, retries or not
        # And the workers registered with the new broker by themselves, not restarted
        assert stack.restart_count("broker") == 1
        assert stack.pid("broker") != old_broker
        assert {name: stack.pid(name) for name in workers} == workers
        assert all(stack.restart_count(name) == 0 for name in workers)
        assert fs.health()["workers"] == {"alive": 2, "expected": 2}
        # The new broker counts only what its workers computed for it: the retried requests
        assert fs.stats()["total_computes"] > 0


# --------------------------------------------------------------------------- overload
def test_overload_is_answered_quickly_not_queued(make_stack: StackFactory, demo_dir: Path) -> None:
    timeout_ms = 5000
    stack = make_stack(
        workers=1,
        env={
            "BROKER_QUEUE_MAX": "2",
            "BATCH_SIZE": "100000",  # one job per request
            "REQUEST_TIMEOUT_MS": str(timeout_ms),
        },
    )
    rows = 30_000  # real work: about a third of a second per request on one worker
    ids = [entity(k % 300) for k in range(rows)]
    stamps = [DEMO_END_MS - (k % 720) * 3_600_000 for k in range(rows)]
    payload = {"entity_ids": ids, "timestamps": stamps}
    concurrent = 8

    async def flood() -> list[tuple[float, Reply]]:
        async with AsyncClient(stack.frontend, timeout_ms=30_000) as fs:

            async def one() -> tuple[float, Reply]:
                sent = time.monotonic()
                reply = await fs.request(Op.HISTORICAL, payload)
                return time.monotonic() - sent, reply

            return await asyncio.gather(*(one() for _ in range(concurrent)))

    answers = asyncio.run(flood())  # (seconds from sending to the answer, reply)
    ok = [(t, r) for t, r in answers if r.ok]
    overloaded = [(t, r) for t, r in answers if not r.ok]
    assert all(r.body["error"] == Code.OVERLOADED.value for _, r in overloaded), answers
    assert len(overloaded) >= concurrent // 2
    assert len(ok) >= 2  # the queue held two, the worker took one of them
    for _, reply in overloaded:
        assert (reply.body["status"], reply.body["retry_after_s"]) == (503, 1)
    # Overload is answered at once: each refusal came back faster than any accepted request
    # could be served, and far from the request timeout.
    assert max(t for t, _ in overloaded) < min(t for t, _ in ok)
    assert max(t for t, _ in overloaded) < timeout_ms / 1000 / 2
    expected, found = expected_matrix(demo_dir, ids, stamps)
    for _, reply in ok:
        batch = batch_of(ids, reply)
        assert np.array_equal(batch.found, found)
        assert identical(batch.values, expected)
    # And the stack keeps serving once the queue drains
    with stack.client() as fs:
        assert fs.get(entity(3), as_of=DEMO_END_MS)["timestamp"] == DEMO_END_MS
    assert stack.restart_count("broker") == 0


# ------------------------------------------------------------- a long compute is no death
def test_a_compute_longer_than_the_liveness_window_is_answered(
    make_stack: StackFactory, demo_dir: Path
) -> None:
    # SPEC §11: HEARTBEAT_INTERVAL_MS x HEARTBEAT_LIVENESS *plus* the longest compute stays
    # below REQUEST_TIMEOUT_MS. Here: 0.1 s of liveness, one compute several times longer.
    interval_ms, liveness = 50, 2
    stack = make_stack(
        workers=1,
        env={
            "HEARTBEAT_INTERVAL_MS": str(interval_ms),
            "HEARTBEAT_LIVENESS": str(liveness),
            "REQUEST_TIMEOUT_MS": "20000",
            "BATCH_SIZE": "100000",  # the whole request is one job
        },
    )
    rows = 40_000
    ids = [entity(k % 300) for k in range(rows)]
    stamps = [DEMO_END_MS - (k % 720) * 3_600_000 for k in range(rows)]
    with stack.client() as fs:
        result = fs.historical(
            [{"entity_id": e, "timestamp": t} for e, t in zip(ids, stamps, strict=True)],
            arrays=True,
        )
        expected, found = expected_matrix(demo_dir, ids, stamps)
        assert np.array_equal(result.found, found)
        assert identical(result.values, expected)
        stats = fs.stats()
        assert stats["total_computes"] == int(found.sum())  # computed once, not re-dispatched
        compute_ms = stats["avg_compute_latency_ms"] * stats["total_computes"]
        assert compute_ms > interval_ms * liveness  # the compute did outlast the window
        assert stack.restart_count("worker-0") == 0
        assert fs.health()["workers"]["alive"] == 1
