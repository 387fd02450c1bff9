"""Ingest consistency (SPEC §3): a retried or re-dispatched ingest stores each event once, with
and without event ids, and once an ingest is acknowledged every request that starts afterwards
reflects it (read your writes), also while other clients keep asking for the same entity.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from integration_support import (
    batch_of,
    entity,
    event_count,
    expected_matrix,
    full_vector,
    identical,
    start_peer,
    wait_alive,
)
from peer_worker import EXIT_AFTER_COMMIT

from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.sqlite import open_store
from featurestore.timestamps import now_ms
from featurestore.wire.client import Client
from featurestore.wire.client import Response as Reply
from featurestore.wire.frames import Op

MINUTE_MS = 60_000
BUSY_EVENTS = 40_000
INGESTS = 30
CLI = "import sys; from featurestore.cli import main; sys.exit(main())"


def new_events(entity_id: str, count: int, *, ids: bool, value: float = 1.0) -> list[dict]:
    start = now_ms() - 60 * MINUTE_MS
    events = [
        {"entity_id": entity_id, "timestamp": start + i * MINUTE_MS, "value": value + i}
        for i in range(count)
    ]
    if ids:
        for i, event in enumerate(events):
            event["event_id"] = f"{entity_id}-ev-{i}"
    return events


def stored_values(data_dir: Path, entity_id: str) -> list[float]:
    store = open_store(data_dir)
    try:
        return store.read([entity_id]).value.tolist()
    finally:
        store.close()


# ------------------------------------------------------------------------ retries
def test_a_retried_ingest_without_event_ids_stores_once(client: Client, demo_dir: Path) -> None:
    events = new_events("retry_no_ids", 3, ids=False)
    first = client.ingest(events, request_id="retry-no-ids-1")
    again = client.ingest(events, request_id="retry-no-ids-1")
    assert first == again == {"accepted": 3, "duplicates": 0}  # the original answer
    assert event_count(demo_dir, "retry_no_ids") == 3
    # Without event ids only the request id tells a retry from new events
    assert client.ingest(events, request_id="retry-no-ids-2") == {"accepted": 3, "duplicates": 0}
    assert event_count(demo_dir, "retry_no_ids") == 6


def test_a_retried_ingest_with_event_ids_stores_once(client: Client, demo_dir: Path) -> None:
    events = new_events("retry_ids", 3, ids=True)
    first = client.ingest(events, request_id="retry-ids-1")
    again = client.ingest(events, request_id="retry-ids-1")
    assert first == again == {"accepted": 3, "duplicates": 0}
    # The same events under a new request id are duplicates by event id
    assert client.ingest(events, request_id="retry-ids-2") == {"accepted": 0, "duplicates": 3}
    # Within one request the first of two equal event ids wins
    twins = new_events("retry_twins", 2, ids=False, value=7.0)
    for event in twins:
        event["event_id"] = "retry-twin"
    assert client.ingest(twins) == {"accepted": 1, "duplicates": 1}
    assert event_count(demo_dir, "retry_ids") == 3
    assert stored_values(demo_dir, "retry_twins") == [7.0]


@pytest.mark.parametrize("with_ids", [False, True], ids=["no-event-ids", "event-ids"])
def test_a_redispatched_ingest_stores_once(
    make_stack, demo_dir: Path, with_ids: bool, request: pytest.FixtureRequest
) -> None:
    # Given a worker that commits an ingest and dies before answering (first in line), and a
    # healthy worker behind it
    stack: Stack = make_stack(workers=0, env={"MAX_WORKERS": "2"})
    dier = start_peer(stack, "dier", "commit-then-die", "d")
    wait_alive(stack, 1)
    stack.add("worker-ok", [sys.executable, "-m", "workers", "--id", "1"])
    wait_alive(stack, 2)
    eid = f"redispatch_{request.node.callspec.id}"
    events = new_events(eid, 4, ids=with_ids)
    # When the ingest is sent once
    with stack.client() as fs:
        answer = fs.ingest(events)
    # Then the first worker did commit it and die, the broker re-dispatched it, and the second
    # worker answered with the original result: each event is stored once
    wait_for(lambda: dier.process.poll() is not None, 10, "the first worker's exit")
    assert dier.process.returncode == EXIT_AFTER_COMMIT
    assert "job ingest" in stack.log_tail("dier") and "ok=True" in stack.log_tail("dier")
    assert answer == {"accepted": 4, "duplicates": 0}
    assert event_count(stack.data_dir, eid) == 4


# ---------------------------------------------------------------- read your writes
def test_the_next_request_reflects_an_ingest(client: Client, demo_dir: Path) -> None:
    eid = entity(30)
    client.get(eid)
    client.get(eid, version="v2")
    assert client.get(eid)["cached"] is True
    assert client.batch([eid], version="v2")[0]["cached"] is True
    event = {"entity_id": eid, "timestamp": now_ms() - 1000, "value": 123456.5}

    client.ingest([event])
    acknowledged = now_ms()

    # Then every version is recomputed from the new events
    v1 = client.get(eid)
    assert v1["cached"] is False
    assert v1["timestamp"] >= acknowledged
    assert v1["features"]["value_max"] == 123456.5
    expected, _ = expected_matrix(demo_dir, [eid], v1["timestamp"])
    assert identical(full_vector(v1["features"]), expected[0])
    v2 = client.batch([eid], version="v2")[0]
    assert (v2["cached"], v2["features"]["value_mean"]) == (False, 123456.5)  # the 30-day window
    assert client.get(eid)["cached"] is True
    row = client.historical([{"entity_id": eid, "timestamp": acknowledged}])[0]
    assert row["features"]["value_max"] == 123456.5


class Hammer(threading.Thread):
    """Another client asking for one entity without pause (gets and batches, several in
    flight), checking that each request reflects every ingest acknowledged before it began."""

    IN_FLIGHT = 4

    def __init__(self, endpoint: str, entity_id: str) -> None:
        super().__init__(name="hammer", daemon=True)
        self.endpoint = endpoint
        self.entity_id = entity_id
        self.acked = -1  # index of the last acknowledged ingest (set by the test)
        self.stop = threading.Event()
        self.requests = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            self.hammer()
        except Exception as exc:  # reported by the test, not lost with the thread
            self.failures.append(f"{type(exc).__name__}: {exc}")

    def hammer(self) -> None:
        with Client(self.endpoint, timeout_ms=10_000) as fs:
            while not self.stop.is_set():
                floor = self.acked
                sent = [
                    fs.submit(Op.GET, {"entity_id": self.entity_id})
                    if k % 2
                    else fs.submit(Op.BATCH, {"entity_ids": [self.entity_id, entity(31)]})
                    for k in range(self.IN_FLIGHT)
                ]
                for reply in fs.collect(sent):
                    self.requests += 1
                    self.check(reply, floor)

    def check(self, reply: Reply, floor: int) -> None:
        if not reply.ok:
            self.failures.append(f"error {reply.body}")
            return
        if "values" in reply.body:  # a batch
            batch = batch_of([self.entity_id, entity(31)], reply)
            value_max = batch.items()[0]["features"]["value_max"]
        else:
            value_max = reply.body["features"]["value_max"]
        if floor >= 0 and value_max < 1000 + floor:
            self.failures.append(f"stale: value_max {value_max} after ingest {floor}")


def test_reads_reflect_each_ingest_under_concurrent_gets(
    stack: Stack, client: Client, demo_dir: Path
) -> None:
    # Given an entity with many events, so that computing it takes long enough for the
    # concurrent gets' computations to overlap the ingests (the stale-write race)
    eid = "rw_busy_entity"
    base = now_ms() - 10 * MINUTE_MS
    history = np.random.default_rng(7).uniform(0.0, 100.0, BUSY_EVENTS)
    for start in range(0, BUSY_EVENTS, 10_000):
        events = [
            {"entity_id": eid, "timestamp": base - 86_400_000 + k * 1000, "value": history[k]}
            for k in range(start, min(BUSY_EVENTS, start + 10_000))
        ]
        assert client.ingest(events)["accepted"] == len(events)
    hammer = Hammer(stack.frontend, eid)
    hammer.start()
    try:
        wait_for(lambda: hammer.requests >= 20, 10, "the concurrent gets to run")
        for i in range(INGESTS):
            # When an ingest is acknowledged while other gets of the entity are in flight
            event = {"entity_id": eid, "timestamp": base + i * 1000, "value": 1000.0 + i}
            assert client.ingest([event]) == {"accepted": 1, "duplicates": 0}
            hammer.acked = i
            # Then the next request sees it, bit for bit what the engine computes now
            reply = client.get(eid)
            assert reply["features"]["value_max"] == 1000.0 + i
            expected, _ = expected_matrix(demo_dir, [eid], reply["timestamp"])
            assert identical(full_vector(reply["features"]), expected[0])
        wait_for(lambda: hammer.requests >= 200, 20, "more concurrent gets")
    finally:
        hammer.stop.set()
        hammer.join(timeout=15)
    assert not hammer.is_alive()
    assert hammer.failures == []
    assert event_count(demo_dir, eid) == BUSY_EVENTS + INGESTS


def test_a_cli_ingest_into_a_running_service_invalidates(
    stack: Stack, client: Client, demo_dir: Path, tmp_path: Path
) -> None:
    eid = entity(33)
    client.get(eid)
    assert client.get(eid)["cached"] is True
    events = pd.DataFrame(new_events(eid, 1, ids=True, value=98765.25))
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    done = subprocess.run(
        [sys.executable, "-c", CLI, "ingest", str(path)],
        env=stack.environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    after = client.get(eid)
    assert after["features"]["value_max"] == 98765.25
    assert not np.isnan(after["features"]["value_mean"])
