"""The broker's decisions without processes or sockets (SPEC §13): `BrokerCore` driven through a
stub transport that records what it would send, as dramatiq's StubBroker. The cache is a
real shared-memory segment; the "workers" are registered peers whose results the tests feed
back: routing, chunking across idle workers, folding results in request order, retries,
re-dispatch, timeouts and the broker's own answers."""

from __future__ import annotations

import time
from uuid import uuid4

import msgspec
import numpy as np
import pytest

from broker.core import BrokerCore
from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.timestamps import now_ms
from featurestore.wire.backend import (
    JobHeader,
    error_result_frames,
    heartbeat_frames,
    ready_frames,
    result_frames,
)
from featurestore.wire.envelope import decode_reply, request_frames
from featurestore.wire.frames import (
    SERVICE_FEATURES,
    W_JOB,
    Op,
    get_array,
    put_array,
)
from featurestore.wire.messages import (
    ComputeAnswer,
    ComputeRequest,
    HistoricalRows,
    IngestAnswer,
    decode_answer,
    decode_error,
)
from shm import FeatureCache, drop

CLIENT = b"client-1"
WIDTH = CACHE_WIDTH


class StubTransport:
    """Records every message the core sends; a worker can be made unreachable."""

    def __init__(self) -> None:
        self.to_clients: list[tuple[bytes, list]] = []
        self.to_workers: list[tuple[bytes, list]] = []
        self.unreachable: set[bytes] = set()

    def to_client(self, client: bytes, frames: list) -> None:
        self.to_clients.append((client, frames))

    def to_worker(self, identity: bytes, frames: list) -> bool:
        if identity in self.unreachable:
            return False
        self.to_workers.append((identity, frames))
        return True

    def jobs(self) -> list[tuple[bytes, bytes, str, bytes, list]]:
        """(worker, job id, op, payload, blocks) of every job sent, in order."""
        out = []
        for identity, frames in self.to_workers:
            if frames[0] == W_JOB:
                header = msgspec.msgpack.decode(frames[2], type=JobHeader)
                out.append((identity, frames[1], header.op, frames[3], list(frames[4:])))
        return out


@pytest.fixture
def cache():
    name = f"fst_{uuid4().hex[:10]}"
    opened = FeatureCache.open(name, 256, 600_000, CACHE_WIDTH, CACHE_VERSIONS)
    yield opened
    opened.close()
    drop(name)


@pytest.fixture
def core(cache):
    settings = Settings.from_env(
        {"BATCH_SIZE": "300", "MAX_REDISPATCH": "1", "REQUEST_TIMEOUT_MS": "5000"}
    )
    return BrokerCore(settings, cache, StubTransport())


def register(core: BrokerCore, *names: str) -> None:
    for name in names:
        core.on_worker(name.encode(), ready_frames(SERVICE_FEATURES, name, 1))


def ask(core: BrokerCore, correlation_id: int, op: Op, payload, blocks=None) -> None:
    core.on_client(
        CLIENT, request_frames(correlation_id, f"rid-{correlation_id}", op, payload, blocks)
    )
    core.dispatch()


def last_reply(core: BrokerCore):
    client, frames = core.transport.to_clients[-1]
    assert client == CLIENT
    return decode_reply(frames)


def answer_compute(core: BrokerCore, worker: bytes, job_id: bytes, ids: list[str], found=None):
    """Feed back a worker's ComputeAnswer: row i = i + 1000 * position of the id."""
    values = np.array([[float(hash(e) % 997)] * WIDTH for e in ids])
    found = np.ones(len(ids), dtype=bool) if found is None else np.asarray(found)
    blocks: list = []
    answer = ComputeAnswer(put_array(blocks, values), put_array(blocks, found), 1, len(ids), 1.0)
    core.on_worker(worker, result_frames(job_id, answer, blocks))
    return values


def vector_of(entity_id: str) -> np.ndarray:
    return np.full(WIDTH, float(hash(entity_id) % 997))


# ------------------------------------------------------------------- broker's own answers
def test_stats_health_and_definitions_need_no_worker(core: BrokerCore) -> None:
    for correlation_id, op in enumerate((Op.STATS, Op.HEALTH, Op.DEFINITIONS), start=1):
        ask(core, correlation_id, op, {})
        reply = last_reply(core)
        assert reply.ok and reply.correlation_id == correlation_id
        decode_answer(op, reply.body)  # the typed answer of the operation
    assert decode_answer(Op.HEALTH, last_reply_body(core, 1)).status == "down"
    assert core.transport.jobs() == []


def last_reply_body(core: BrokerCore, index: int):
    return decode_reply(core.transport.to_clients[index][1]).body


def test_an_operation_of_the_broker_with_fields_is_refused(core: BrokerCore) -> None:
    ask(core, 1, Op.STATS, {"x": 1})
    reply = last_reply(core)
    assert not reply.ok and "unknown field" in decode_error(reply.body).message


# ----------------------------------------------------------------------------- routing
def test_a_cache_hit_is_answered_without_a_job(core: BrokerCore, cache: FeatureCache) -> None:
    cache.put("v1", "e1", np.full(WIDTH, 3.0), 123, cache.generation("e1"))
    ask(core, 1, Op.GET, {"entity_id": "e1"})
    answer = decode_answer(Op.GET, last_reply(core).body)
    assert (answer.cached, answer.timestamp, answer.features["value_mean"]) == (True, 123, 3.0)
    assert core.transport.jobs() == []


def test_a_miss_is_one_compute_job_and_its_result_the_answer(core: BrokerCore) -> None:
    register(core, "w1")
    ask(core, 7, Op.GET, {"entity_id": "e2"})
    [(worker, job_id, op, payload, _)] = core.transport.jobs()
    job = msgspec.msgpack.decode(payload, type=ComputeRequest)
    assert (worker, op, job.entity_ids, job.online) == (b"w1", "compute", ["e2"], True)
    answer_compute(core, worker, job_id, ["e2"])
    answer = decode_answer(Op.GET, last_reply(core).body)
    assert answer.cached is False and answer.timestamp == job.t_ms
    assert answer.features["value_mean"] == vector_of("e2")[0]


def test_a_miss_of_an_entity_without_events_is_entity_not_found(core: BrokerCore) -> None:
    register(core, "w1")
    ask(core, 1, Op.GET, {"entity_id": "ghost"})
    [(worker, job_id, *_)] = core.transport.jobs()
    answer_compute(core, worker, job_id, ["ghost"], found=[False])
    error = decode_error(last_reply(core).body)
    assert (error.error, error.entity_id) == (Code.ENTITY_NOT_FOUND, "ghost")


def test_a_batch_computes_distinct_misses_in_chunks_over_idle_workers(
    core: BrokerCore, cache: FeatureCache
) -> None:
    # Given 3 idle workers and a batch of 1,000 rows: 900 distinct misses, one hit, duplicates
    register(core, "w1", "w2", "w3")
    cache.put("v1", "hit", np.full(WIDTH, 1.0), 5, cache.generation("hit"))
    ids = [f"e{i % 900}" for i in range(999)] + ["hit"]
    ask(core, 1, Op.BATCH, {"entity_ids": ids})
    # Then only the distinct misses travel, in chunks of at most BATCH_SIZE (300), one per worker
    jobs = core.transport.jobs()
    assert sorted(w for w, *_ in jobs) == [b"w1", b"w2", b"w3"]
    chunks = [msgspec.msgpack.decode(p, type=ComputeRequest).entity_ids for _, _, _, p, _ in jobs]
    assert [len(c) for c in chunks] == [300, 300, 300]
    assert sorted(e for c in chunks for e in c) == sorted({f"e{i}" for i in range(900)})
    # When the results come back in any order
    for worker, job_id, _, _, _ in reversed(jobs):
        chunk = chunks[[j for _, j, *_ in jobs].index(job_id)]
        answer_compute(core, worker, job_id, chunk)
    # Then the answer has every row in request order, the hit from the cache
    answer = decode_answer(Op.BATCH, last_reply(core).body)
    blocks = decode_reply(core.transport.to_clients[-1][1]).blocks
    values = get_array(blocks, answer.values)
    cached = get_array(blocks, answer.cached)
    assert answer.count == 1000 and cached.tolist() == [False] * 999 + [True]
    assert values[-1][0] == 1.0
    for row, entity_id in enumerate(ids[:-1]):
        assert values[row][0] == vector_of(entity_id)[0], row


def test_compute_from_the_gateway_reads_no_cache(core: BrokerCore, cache: FeatureCache) -> None:
    register(core, "w1")
    before = cache.stats()
    ask(core, 3, Op.COMPUTE, ComputeRequest("v1", ["a", "b"], now_ms(), True))
    assert cache.stats()["hits"] == before["hits"] and cache.stats()["misses"] == before["misses"]
    [(worker, job_id, _, _, _)] = core.transport.jobs()
    answer_compute(core, worker, job_id, ["a", "b"])
    reply = last_reply(core)
    answer = decode_answer(Op.COMPUTE, reply.body)
    assert get_array(reply.blocks, answer.values).shape == (2, WIDTH)


def test_an_online_compute_far_from_now_is_refused(core: BrokerCore) -> None:
    ask(core, 1, Op.COMPUTE, ComputeRequest("v1", ["a"], now_ms() - 86_400_000, True))
    assert "must be now" in decode_error(last_reply(core).body).message


def test_historical_rows_travel_with_their_timestamps_in_chunks(core: BrokerCore) -> None:
    register(core, "w1", "w2")
    stamps = np.arange(600, dtype=np.int64)
    blocks: list = []
    rows = HistoricalRows("v1", [f"r{i}" for i in range(600)], put_array(blocks, stamps))
    ask(core, 1, Op.HISTORICAL_ROWS, rows, blocks)
    jobs = core.transport.jobs()
    assert [op for _, _, op, _, _ in jobs] == ["historical_chunk"] * 2
    got = []
    for _, _, _, payload, job_blocks in jobs:
        chunk = msgspec.msgpack.decode(payload, type=HistoricalRows)
        got += get_array(job_blocks, chunk.timestamps).tolist()
    assert got == stamps.tolist()


def test_ingest_travels_undecoded_and_its_answer_back_as_it_came(core: BrokerCore) -> None:
    register(core, "w1")
    events = [{"entity_id": "e", "timestamp": 1, "value": 2.0}]
    ask(core, 5, Op.INGEST, {"events": events})
    [(worker, job_id, op, payload, _)] = core.transport.jobs()
    assert op == "ingest" and msgspec.msgpack.decode(payload) == {"events": events}
    core.on_worker(worker, result_frames(job_id, IngestAnswer(1, 0)))
    assert decode_answer(Op.INGEST, last_reply(core).body) == IngestAnswer(1, 0)


def test_an_error_result_reaches_the_client(core: BrokerCore) -> None:
    register(core, "w1")
    ask(core, 5, Op.DELETE, {"entity_id": "e"})
    [(worker, job_id, *_)] = core.transport.jobs()
    error = ServiceError(Code.STORE_UNAVAILABLE, "full", retry_after_s=5)
    core.on_worker(worker, error_result_frames(job_id, error))
    body = decode_error(last_reply(core).body)
    assert (body.error, body.retry_after_s, body.status) == (Code.STORE_UNAVAILABLE, 5, 503)


# ------------------------------------------------------------------------ reliability
def test_a_retry_in_progress_is_not_sent_twice(core: BrokerCore) -> None:
    register(core, "w1")
    ask(core, 9, Op.GET, {"entity_id": "e"})
    ask(core, 9, Op.GET, {"entity_id": "e"})  # the same correlation id: a resend
    assert len(core.transport.jobs()) == 1


def test_a_lost_workers_job_is_redispatched_then_given_up(core: BrokerCore) -> None:
    register(core, "w1", "w2", "w3")
    ask(core, 1, Op.GET, {"entity_id": "poison"})
    for dispatches in (1, 2):
        worker, *_ = core.transport.jobs()[-1]
        core.worker_lost(core.registry.workers[worker], "killed")
        core.dispatch()
        if dispatches < 2:
            assert len(core.transport.jobs()) == dispatches + 1
    error = decode_error(last_reply(core).body)
    assert error.error == Code.INTERNAL and "2 workers" in error.message


def test_a_request_past_its_deadline_is_a_timeout(core: BrokerCore) -> None:
    register(core, "w1")
    ask(core, 1, Op.GET, {"entity_id": "slow"})
    for pending in core.pending.values():
        pending.deadline = time.monotonic() - 1
    core.expire_requests()
    assert decode_error(last_reply(core).body).error == Code.TIMEOUT
    assert core.pending == {}


def test_no_worker_alive_is_no_workers_after_the_grace(core: BrokerCore) -> None:
    ask(core, 1, Op.GET, {"entity_id": "e"})
    for job in core.queue:
        job.queued_at -= core.liveness_s + 1
    core.expire_requests()
    error = decode_error(last_reply(core).body)
    assert error.error == Code.NO_WORKERS and error.retry_after_s == 1


def test_idle_workers_are_taken_least_recently_used_first(core: BrokerCore) -> None:
    register(core, "w1", "w2")
    for correlation_id in (1, 2, 3):
        ask(core, correlation_id, Op.GET, {"entity_id": f"e{correlation_id}"})
        worker, job_id, *_ = core.transport.jobs()[-1]
        answer_compute(core, worker, job_id, [f"e{correlation_id}"])
    assert [w for w, *_ in core.transport.jobs()] == [b"w1", b"w2", b"w1"]


def test_malformed_back_end_messages_are_counted(core: BrokerCore) -> None:
    core.on_worker(b"x", [])
    core.on_worker(b"x", heartbeat_frames()[:1])
    core.on_worker(b"x", [b"\x01", b"\xc1"])
    assert core.malformed["backend"] == 3
