"""Hundreds of concurrent HTTP requests against a real stack (broker, two workers, the gateway
with two processes): every answer complete, for the request it answers (its own X-Request-Id
and entity), with values bit-identical to the engine's; hits served by the gateway equal the
broker's answers over ZeroMQ; read-your-writes over HTTP, also while other clients keep reading
the same entity.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from http_support import (
    REQUEST_ID,
    RawHttp,
    as_vector,
    check_feature_types,
    gateway_stack,
    http_client,
    ok_json,
)
from integration_support import DEMO_END_MS, entity, expected_matrix, identical

from featurestore.features.registry import feature_set
from featurestore.ops.launcher import Stack
from featurestore.timestamps import now_ms
from featurestore.wire.client import AsyncClient

V1 = feature_set("v1").names
MISSING = "user_missing_1"
CONNECTIONS = 64
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def stack(demo_dir: Path) -> Iterator[Stack]:
    with gateway_stack(demo_dir, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as client:
        yield client


async def post_all(stack: Stack, path: str, bodies: list[dict]) -> list[tuple[str, dict]]:
    """POST every body at once (each with its own X-Request-Id); (request id, 200 body) each."""
    async with RawHttp(stack.http_url, CONNECTIONS) as client:

        async def one(body: dict) -> tuple[str, dict]:
            rid = f"conc-{uuid.uuid4().hex}"
            response = await client.request("POST", path, body, {REQUEST_ID: rid})
            assert response.headers[REQUEST_ID] == rid
            return rid, ok_json(response)

        return await asyncio.gather(*(one(body) for body in bodies))


def stats(api: httpx.Client) -> dict:
    return ok_json(api.get("/features/stats"))


def test_hundreds_of_concurrent_gets_are_complete_and_correct(
    api: httpx.Client, stack: Stack, demo_dir: Path
) -> None:
    # Given 200 entities nobody asked for, each asked twice, in random order, all at once
    ids = [entity(i) for i in range(200)] * 2
    random.Random(5).shuffle(ids)
    before = stats(api)
    answers = asyncio.run(post_all(stack, "/features", [{"entity_id": e} for e in ids]))
    after = stats(api)
    # Then each answer is complete and about its own entity
    bodies = [body for _, body in answers]
    assert [b["entity_id"] for b in bodies] == ids
    for body in bodies:
        assert set(body) == {
            "entity_id",
            "features",
            "version",
            "cached",
            "latency_ms",
            "timestamp",
        }
        assert list(body["features"]) == V1
        check_feature_types(body["features"])
    # with the engine's values as of each answer's T
    expected, found = expected_matrix(demo_dir, ids, [b["timestamp"] for b in bodies])
    assert found.all()
    assert identical(np.array([as_vector(b["features"]) for b in bodies]), expected)
    # two answers of one entity with one T are one computation or its cached copy
    by_key: dict[tuple[str, int], dict] = {}
    for body in bodies:
        assert (
            by_key.setdefault((body["entity_id"], body["timestamp"]), body)["features"]
            == (body["features"])
        )
    # and every lookup is counted once: a hit, or a miss that a worker computed
    hits = after["cache_hits"] - before["cache_hits"]
    misses = after["cache_misses"] - before["cache_misses"]
    assert hits + misses == len(ids)
    assert after["total_computes"] - before["total_computes"] == misses
    assert hits == sum(b["cached"] for b in bodies)
    assert misses >= 200


async def _gateway_and_broker_answers(
    stack: Stack, ids: list[str]
) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """Concurrently: HTTP single gets and batches (hits answered by the gateway) and the same
    questions over ZeroMQ (hits answered by the broker)."""
    async with (
        RawHttp(stack.http_url, CONNECTIONS) as http,
        AsyncClient(stack.frontend) as zmq_client,
    ):
        http_gets = [http.request("POST", "/features", {"entity_id": e}) for e in ids]
        http_batches = [
            http.request("POST", "/features/batch", {"entity_ids": ids[k::10]}) for k in range(10)
        ]
        zmq_gets = [zmq_client.get(e) for e in ids]
        zmq_batches = [zmq_client.batch(ids[k::10]) for k in range(10)]
        results = await asyncio.gather(*http_gets, *http_batches, *zmq_gets, *zmq_batches)
    n = len(ids)
    gets = [ok_json(r) for r in results[:n]]
    batches = [ok_json(r)["features"] for r in results[n : n + 10]]
    return gets, batches, results[n + 10 : 2 * n + 10], results[2 * n + 10 :]


def test_hits_served_by_the_gateway_equal_the_brokers_answers(
    api: httpx.Client, stack: Stack
) -> None:
    # Given 100 cached entities
    ids = [entity(i) for i in range(200, 300)]
    warm = ok_json(api.post("/features/batch", json={"entity_ids": ids}))
    assert [i["status"] for i in warm["features"]] == ["ok"] * len(ids)
    # When the same vectors are asked, all at once, over HTTP and over ZeroMQ
    gets, batches, zmq_gets, zmq_batches = asyncio.run(_gateway_and_broker_answers(stack, ids * 3))
    # Then the HTTP answers (less latency_ms) are the broker's, bit for bit, with the T of the
    # one computation
    for http_body, zmq_body in zip(gets, zmq_gets, strict=True):
        assert http_body["cached"] is True
        http_body.pop("latency_ms")
        assert http_body == zmq_body
    for http_items, zmq_items in zip(batches, zmq_batches, strict=True):
        assert http_items == zmq_items
        assert all(i["cached"] for i in http_items)
    computed = {i["entity_id"]: (i["timestamp"], i["features"]) for i in warm["features"]}
    assert all((b["timestamp"], b["features"]) == computed[b["entity_id"]] for b in gets)


def test_concurrent_batches_are_complete_and_in_request_order(stack: Stack, demo_dir: Path) -> None:
    rng = random.Random(11)
    names = ["value_max", "day_of_week", "z_score"]
    requests = []
    for k in range(60):
        ids = [entity(rng.randrange(200, 300)) for _ in range(24)] + [MISSING]
        rng.shuffle(ids)
        body: dict = {"entity_ids": ids}
        if k % 3 == 0:
            body["features"] = names
        requests.append(body)
    answers = asyncio.run(post_all(stack, "/features/batch", requests))
    rows_ids, rows_t, rows_values = [], [], []
    for request, (_, body) in zip(requests, answers, strict=True):
        assert body["count"] == len(request["entity_ids"])
        items = body["features"]
        assert [i["entity_id"] for i in items] == request["entity_ids"]
        for item in items:
            assert item["status"] == ("not_found" if item["entity_id"] == MISSING else "ok")
            if item["features"] is None:
                continue
            assert list(item["features"]) == request.get("features", V1)
            check_feature_types(item["features"])
            rows_ids.append(item["entity_id"])
            rows_t.append(item["timestamp"])
            rows_values.append(item["features"])
    expected, found = expected_matrix(demo_dir, rows_ids, rows_t)
    assert found.all()
    columns = {n: i for i, n in enumerate(V1)}
    for features, row in zip(rows_values, expected, strict=True):
        picked = row[[columns[n] for n in features]]
        assert identical(as_vector(features), picked)


# ------------------------------------------------------- one X-Request-Id, many requests
async def _sharing_one_request_id(stack: Stack, bodies: list[dict], rid: str) -> list:
    async with RawHttp(stack.http_url, CONNECTIONS) as client:
        requests = [client.request("POST", "/features", b, {REQUEST_ID: rid}) for b in bodies]
        return await asyncio.gather(*requests)


def test_requests_sharing_one_request_id_get_their_own_answers(
    stack: Stack, demo_dir: Path
) -> None:
    # Given 60 different questions sent at once under ONE caller-chosen X-Request-Id
    ids = [entity(i) for i in range(60)]
    stamps = [DEMO_END_MS - k * 60_000 for k in range(60)]
    bodies = [{"entity_id": e, "as_of": t} for e, t in zip(ids, stamps, strict=True)]
    responses = asyncio.run(_sharing_one_request_id(stack, bodies, "shared-rid"))
    # Then each gets the answer to its own question (none waits for another's, none times out)
    answers = [ok_json(r) for r in responses]
    assert all(r.headers[REQUEST_ID] == "shared-rid" for r in responses)
    assert [(a["entity_id"], a["timestamp"]) for a in answers] == list(
        zip(ids, stamps, strict=True)
    )
    expected, _ = expected_matrix(demo_dir, ids, stamps)
    assert identical(np.array([as_vector(a["features"]) for a in answers]), expected)


async def _retries_of_one_ingest(stack: Stack, events: list[dict], rid: str) -> list:
    async with RawHttp(stack.http_url, 20, keep_alive=False) as client:  # both gateway processes
        body = {"events": events}
        requests = [client.request("POST", "/events", body, {REQUEST_ID: rid}) for _ in range(20)]
        return await asyncio.gather(*requests)


def test_concurrent_retries_of_one_post_events_store_it_once(
    api: httpx.Client, stack: Stack
) -> None:
    eid = "http-conc-retries"
    events = [{"entity_id": eid, "timestamp": now_ms() - k, "value": float(k)} for k in range(3)]
    responses = asyncio.run(_retries_of_one_ingest(stack, events, f"retry-{uuid.uuid4()}"))
    assert [ok_json(r) for r in responses] == [{"accepted": 3, "duplicates": 0}] * 20
    assert ok_json(api.delete(f"/entities/{eid}")) == {"deleted_events": 3}


# ------------------------------------------------------------------ read your writes
def test_read_your_writes_over_http(api: httpx.Client) -> None:
    eid = "http-conc-ryw-seq"
    start = now_ms() - 48 * HOUR_MS
    for round_ in range(1, 6):
        value = 100.0 * round_
        events = [
            {"entity_id": eid, "timestamp": start + round_ * HOUR_MS + k, "value": value - k}
            for k in range(3)
        ]
        assert ok_json(api.post("/events", json={"events": events})) == {
            "accepted": 3,
            "duplicates": 0,
        }
        for version in ("v1", "v2"):
            body = ok_json(api.post("/features", json={"entity_id": eid, "version": version}))
            assert body["cached"] is False
            assert body["features"]["value_max"] == value
            assert body["features"]["value_min"] == 98.0
        batch = ok_json(api.post("/features/batch", json={"entity_ids": [eid, entity(7)]}))
        assert batch["features"][0]["cached"] is True
        assert batch["features"][0]["features"]["value_max"] == value
    assert ok_json(api.delete(f"/entities/{eid}")) == {"deleted_events": 15}


async def _write_while_reading(stack: Stack, eid: str) -> tuple[list, list]:
    """Readers GET `eid` in a loop while a writer posts ever larger values; (reads, acks)."""
    reads: list[tuple[float, float]] = []  # (monotonic start of the read, value_max)
    acks: list[tuple[float, float]] = []  # (monotonic time of the acknowledgement, new max)
    done = asyncio.Event()
    async with RawHttp(stack.http_url, CONNECTIONS) as client:

        async def reader() -> None:
            for _ in range(5000):  # bounded; ends with one read after the writer is done
                last = done.is_set()
                started = time.monotonic()
                response = await client.request("POST", "/features", {"entity_id": eid})
                reads.append((started, ok_json(response)["features"]["value_max"]))
                if last:
                    return

        async def writer() -> None:
            base = now_ms() - 24 * HOUR_MS
            for round_ in range(1, 11):
                value = 1000.0 * round_
                event = {"entity_id": eid, "timestamp": base + round_, "value": value}
                response = await client.request("POST", "/events", {"events": [event]})
                assert ok_json(response) == {"accepted": 1, "duplicates": 0}
                acks.append((time.monotonic(), value))
                mine = await client.request("POST", "/features", {"entity_id": eid})
                assert ok_json(mine)["features"]["value_max"] == value
            done.set()

        await asyncio.gather(writer(), *(reader() for _ in range(16)))
    return reads, acks


def test_read_your_writes_while_others_read_the_same_entity(
    api: httpx.Client, stack: Stack
) -> None:
    # Given an entity with a few events, read by 16 clients in a loop
    eid = "http-conc-ryw"
    seed = [{"entity_id": eid, "timestamp": now_ms() - 30 * HOUR_MS, "value": 1.0}]
    ok_json(api.post("/events", json={"events": seed}))
    # When a writer adds ever larger values, one event per request
    reads, acks = asyncio.run(_write_while_reading(stack, eid))
    # Then every read that started after an acknowledgement reflects that write (or a later
    # one), and no read sees a value that was never written
    assert len(acks) == 10
    assert sum(1 for started, _ in reads if started > acks[-1][0]) >= 16
    written = {1.0} | {value for _, value in acks}
    for started, value_max in reads:
        assert value_max in written
        acknowledged = [value for at, value in acks if at < started]
        if acknowledged:
            assert value_max >= acknowledged[-1], (started, value_max, acknowledged[-1])
    final = ok_json(api.post("/features", json={"entity_id": eid}))
    assert final["features"]["value_max"] == acks[-1][1]
    assert ok_json(api.delete(f"/entities/{eid}")) == {"deleted_events": 11}
