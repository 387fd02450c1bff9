"""Ingest request ids through the running service (SPEC §3, §5, §11): a repeat with the same
events, over HTTP or ZeroMQ, gets the original answer and stores nothing; a repeat with other
events is 409 `request_id_conflict` and stores nothing, also when both are sent at once; and
the workers prune expired ids themselves.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from http_support import HTTP_TIMEOUT_S, REQUEST_ID, gateway_stack

from featurestore.errors import Code, ServiceError
from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.sqlite import DB_FILENAME, open_store
from featurestore.timestamps import format_iso, now_ms

MINUTE_MS = 60_000
PRUNE_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with gateway_stack(tmp_path_factory.mktemp("idempotency") / "data", workers=2) as running:
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.http_url, timeout=HTTP_TIMEOUT_S) as client:
        yield client


def events_of(entity_id: str, values: list[float]) -> list[dict]:
    start = now_ms() - 10 * MINUTE_MS
    return [
        {"entity_id": entity_id, "timestamp": start + i * MINUTE_MS, "value": v}
        for i, v in enumerate(values)
    ]


def stored_values(stack: Stack, entity_id: str) -> list[float]:
    store = open_store(stack.data_dir)
    try:
        return store.read([entity_id]).value.tolist()
    finally:
        store.close()


def post(api: httpx.Client, events: list[dict], request_id: str) -> httpx.Response:
    return api.post("/events", json={"events": events}, headers={REQUEST_ID: request_id})


def test_a_zeromq_retry_of_an_http_ingest_gets_the_original_answer_and_stores_nothing(
    stack: Stack, api: httpx.Client
) -> None:
    # Given an ingest over HTTP with ISO-8601 timestamps
    events = events_of("idem-a", [1.0, 2.0, 3.0])
    spelled = [{**e, "timestamp": format_iso(e["timestamp"])} for e in events]
    first = post(api, spelled, "idem-1")
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 3, "duplicates": 0}

    # When the same events (as epoch ms) come again under its id, over ZeroMQ and HTTP
    with stack.client() as fs:
        again = fs.ingest(events, request_id="idem-1")
    third = post(api, events, "idem-1")

    # Then both get the original answer, and the events are stored once
    assert again == third.json() == {"accepted": 3, "duplicates": 0}
    assert stored_values(stack, "idem-a") == [1.0, 2.0, 3.0]


def test_another_body_under_a_used_request_id_is_a_409_and_stores_nothing(
    stack: Stack, api: httpx.Client
) -> None:
    # Given an ingest under request id idem-2
    assert post(api, events_of("idem-b", [1.0]), "idem-2").status_code == 200

    # When other events come under the same id, over HTTP and over ZeroMQ
    response = post(api, events_of("idem-c", [5.0, 6.0]), "idem-2")
    with stack.client() as fs, pytest.raises(ServiceError) as raised:
        fs.ingest(events_of("idem-c", [7.0]), request_id="idem-2")

    # Then: 409 request_id_conflict naming the id, and none of those events stored
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "request_id_conflict" and "'idem-2'" in body["message"]
    assert raised.value.code is Code.REQUEST_ID_CONFLICT
    assert stored_values(stack, "idem-c") == []
    assert stored_values(stack, "idem-b") == [1.0]


def test_two_bodies_sent_at_once_under_one_request_id_store_one_of_them(
    stack: Stack,
) -> None:
    # Given pairs of different bodies, each pair under one request id, sent at the same time
    pairs = 4
    barrier = threading.Barrier(2 * pairs)
    answers: dict[tuple[int, int], httpx.Response] = {}

    def send(pair: int, side: int) -> None:
        events = events_of(f"race-{pair}-{side}", [float(side)] * (side + 1))
        with httpx.Client(base_url=stack.http_url, timeout=HTTP_TIMEOUT_S) as client:
            barrier.wait(timeout=HTTP_TIMEOUT_S)
            answers[pair, side] = post(client, events, f"race-{pair}")

    threads = [
        threading.Thread(target=send, args=(pair, side)) for pair in range(pairs) for side in (0, 1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=2 * HTTP_TIMEOUT_S)

    # Then in each pair one body is stored and the other refused with 409, never both 200
    for pair in range(pairs):
        statuses = {side: answers[pair, side].status_code for side in (0, 1)}
        assert sorted(statuses.values()) == [200, 409], (pair, statuses)
        for side in (0, 1):
            stored = stored_values(stack, f"race-{pair}-{side}")
            assert stored == ([float(side)] * (side + 1) if statuses[side] == 200 else [])


def test_expired_request_ids_are_pruned_by_the_workers(stack: Stack, api: httpx.Client) -> None:
    # Given a request id that has outlived REQUEST_ID_RETENTION_MS (aged in the file)
    assert post(api, events_of("idem-old", [1.0]), "idem-old").status_code == 200
    path = Path(stack.data_dir) / DB_FILENAME

    def rows(query: str) -> list[tuple]:
        conn = sqlite3.connect(path, timeout=HTTP_TIMEOUT_S, isolation_level=None)
        try:
            return conn.execute(query, ("idem-old",)).fetchall()
        finally:
            conn.close()

    rows("UPDATE requests SET created_ms = 0 WHERE request_id = ?")

    # When a worker (re)starts, it prunes (then every PRUNE_INTERVAL_S)
    stack.kill("worker-0")
    wait_for(
        lambda: not rows("SELECT 1 FROM requests WHERE request_id = ?"),
        PRUNE_TIMEOUT_S,
        "the expired request id to be pruned",
    )

    # Then the id is free for new events
    assert post(api, events_of("idem-new", [2.0]), "idem-old").json() == {
        "accepted": 1,
        "duplicates": 0,
    }
