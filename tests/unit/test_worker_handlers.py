"""A compute worker's handlers without processes (SPEC §13): typed jobs in, RESULT frames out,
on a real SQLite store, a real cache segment and a disabled publisher. Each job's payload is
decoded once into its type and dispatched on it; refusals are error results of the catalogue.
"""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import msgspec
import numpy as np
import pytest
import zmq

from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.errors import Code
from featurestore.features.engine import compute
from featurestore.store.sqlite import open_store
from featurestore.timestamps import now_ms
from featurestore.validation.events import validate_events
from featurestore.wire.backend import ERROR, OK, decode_job, job_frames
from featurestore.wire.envelope import error_of
from featurestore.wire.frames import Op, get_array, put_array
from featurestore.wire.messages import (
    ComputeRequest,
    DeleteRequest,
    HistoricalRows,
    IngestColumns,
    IngestRequest,
    decode_answer,
)
from shm import drop
from workers.handlers import Handlers
from workers.publisher import VectorPublisher

NOW = now_ms()
EVENTS = [
    {"entity_id": "a", "timestamp": NOW - 3000, "value": 1.0, "category": "x"},
    {"entity_id": "a", "timestamp": NOW - 2000, "value": 5.0, "category": "y"},
    {"entity_id": "b", "timestamp": NOW - 1000, "value": 2.5},
]


@pytest.fixture
def handlers(tmp_path: Path):
    name = f"fst_{uuid4().hex[:10]}"
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "CACHE_NAME": name})
    store = open_store(tmp_path)
    cache = open_cache(settings)
    context = zmq.Context()
    publisher = VectorPublisher(context, settings.drift_features_endpoint, "t", False)
    yield Handlers(settings, store, cache, publisher)
    cache.close()
    store.close()
    context.term()
    drop(name)


def run(handlers: Handlers, op: Op, payload, blocks=None, request_id: str = "r1") -> list:
    frames = job_frames(b"\x01" * 8, op, request_id, payload, blocks or [])
    return handlers.handle(decode_job(frames[1:]))


def answer_of(op: Op, frames: list):
    assert frames[2] == OK, error_of(frames[3]).message
    return decode_answer(op, frames[3]), list(frames[4:])


def test_ingest_of_event_objects_stores_them(handlers: Handlers) -> None:
    answer, _ = answer_of(Op.INGEST, run(handlers, Op.INGEST, IngestRequest(EVENTS)))
    assert (answer.accepted, answer.duplicates) == (3, 0)
    assert handlers.store.counts()["events"] == 3


def test_ingest_of_columns_stores_the_same(handlers: Handlers) -> None:
    columns = validate_events(EVENTS, 100, 300_000)
    blocks: list = []
    message = IngestColumns(
        columns.entity_id,
        put_array(blocks, columns.ts),
        columns.event_id,
        {"value": put_array(blocks, columns.value)},
        {"category": columns.category},
    )
    answer, _ = answer_of(Op.INGEST_COLUMNS, run(handlers, Op.INGEST_COLUMNS, message, blocks))
    assert answer.accepted == 3
    assert handlers.store.read(["a"]).value.tolist() == [1.0, 5.0]


def test_columns_that_break_the_rules_are_refused_as_a_whole(handlers: Handlers) -> None:
    blocks: list = []
    message = IngestColumns(
        ["ok", "bad\x01id"],
        put_array(blocks, np.array([NOW, NOW + 10**9], dtype=np.int64)),
        [None, None],
        {"value": put_array(blocks, np.array([1.0, np.inf]))},
        {"category": [None, ""]},
    )
    frames = run(handlers, Op.INGEST_COLUMNS, message, blocks)
    assert frames[2] == ERROR
    error = error_of(frames[3])
    assert error.code is Code.INVALID_REQUEST
    fields = {(e["index"], e["field"]) for e in error.extra["errors"]}
    assert fields == {(1, "timestamp"), (1, "value"), (1, "entity_id"), (1, "category")}
    assert handlers.store.counts()["events"] == 0


def test_a_replayed_ingest_returns_the_original_answer(handlers: Handlers) -> None:
    first, _ = answer_of(Op.INGEST, run(handlers, Op.INGEST, IngestRequest(EVENTS), "same"))
    again, _ = answer_of(Op.INGEST, run(handlers, Op.INGEST, IngestRequest(EVENTS), "same"))
    assert first == again and handlers.store.counts()["events"] == 3


def test_compute_is_the_engine_and_online_ones_are_cached(handlers: Handlers) -> None:
    run(handlers, Op.INGEST, IngestRequest(EVENTS))
    t_ms = now_ms()
    request = ComputeRequest("v1", ["a", "b", "nobody"], t_ms, True)
    answer, blocks = answer_of(Op.COMPUTE, run(handlers, Op.COMPUTE, request))
    values, found = get_array(blocks, answer.values), get_array(blocks, answer.found)
    batch = handlers.store.read(["a", "b", "nobody"])
    expected = compute(batch, np.arange(3), t_ms, "v1", handlers.store.category_names())
    assert np.array_equal(values, expected.values, equal_nan=True)
    assert found.tolist() == [True, True, False] and answer.computes == 2
    hit = handlers.cache.get("v1", "a")
    assert hit is not None and hit[1] == t_ms and np.array_equal(hit[0], values[0], equal_nan=True)


def test_historical_rows_each_at_their_own_time(handlers: Handlers) -> None:
    run(handlers, Op.INGEST, IngestRequest(EVENTS))
    stamps = np.array([NOW - 2500, NOW, NOW - 5000], dtype=np.int64)
    blocks: list = []
    rows = HistoricalRows("v2", ["a", "a", "b"], put_array(blocks, stamps))
    answer, out = answer_of(Op.HISTORICAL_CHUNK, run(handlers, Op.HISTORICAL_CHUNK, rows, blocks))
    values = get_array(out, answer.values)
    assert get_array(out, answer.found).tolist() == [True, True, False]
    assert values[0][0] == 1.0 and values[1][0] == 3.0  # value_mean, first feature of v2
    assert handlers.cache.get("v2", "a") is None  # historical rows are never cached


def test_delete_and_its_count(handlers: Handlers) -> None:
    run(handlers, Op.INGEST, IngestRequest(EVENTS))
    answer, _ = answer_of(Op.DELETE, run(handlers, Op.DELETE, DeleteRequest("a")))
    assert answer.deleted_events == 2


@pytest.mark.parametrize(
    ("op", "payload", "needle"),
    [
        (Op.INGEST, {"events": "nope"}, "'events' must be a list"),
        (Op.INGEST, {"events": [{"entity_id": "e"}]}, "invalid event field"),
        (Op.DELETE, {"entity_id": ""}, "1-256 UTF-8 bytes"),
        (Op.COMPUTE, {"version": "v1"}, "'entity_ids' is required"),
        (Op.STATS, {}, "workers do not handle"),
    ],
)
def test_a_payload_a_worker_cannot_use_is_an_error_result(
    handlers: Handlers, op: Op, payload, needle: str
) -> None:
    frames = run(handlers, op, msgspec.Raw(msgspec.msgpack.encode(payload)))
    assert frames[2] == ERROR and needle in error_of(frames[3]).message
