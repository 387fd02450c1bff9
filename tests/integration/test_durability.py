"""Durability (SPEC §7, §11): acknowledged ingests and complete drift baselines survive a
SIGKILL of every process of the service (supervisord and all it started, while ingests are in
flight) and a restart from the same DATA_DIR.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised_support import demo_ids, private_settings, supervised, write_demo_store

from featurestore.config import Settings
from featurestore.ops.launcher import wait_for
from featurestore.store.sqlite import open_store
from featurestore.timestamps import now_ms
from featurestore.wire.client import Client
from shm import segment

BASELINE_SIZE = 50
EVENTS_PER_REQUEST = 5
FIXED_ENTITIES = 5
MAX_VALUE = 1e6
STREAM_ACKS_BEFORE_KILL = 5
STREAM_TIMEOUT_MS = 3000
WAIT_S = 30.0


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with private_settings(
        tmp_path / "data",
        DRIFT_BASELINE_SIZE=str(BASELINE_SIZE),
        DRIFT_WINDOW_SIZE="50",
        DRIFT_MIN_CURRENT="20",
    ) as private:
        write_demo_store(private)
        yield private


def events(entity_id: str, first_value: float, stamp_ms: int) -> list[dict]:
    """EVENTS_PER_REQUEST events of a new entity, values first_value + 0..4 (mean + 2); every
    other one carries an event id."""
    out = []
    for j in range(EVENTS_PER_REQUEST):
        event = {
            "entity_id": entity_id,
            "timestamp": stamp_ms - j * 1000,
            "value": first_value + j,
            "category": "durable",
        }
        if j % 2 == 0:
            event["event_id"] = f"{entity_id}-{j}"
        out.append(event)
    return out


class Ingester(threading.Thread):
    """Ingests one new entity per request until a request fails (the service was killed);
    remembers which were acknowledged and which one was in flight."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="ingester", daemon=True)
        self.settings = settings
        self.acknowledged: list[str] = []
        self.in_flight: str | None = None
        self.failure: Exception | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        stamp = now_ms()
        with Client(self.settings.broker_frontend, timeout_ms=STREAM_TIMEOUT_MS) as fs:
            index = 0
            while not self.stopping.is_set():
                self.in_flight = f"stream_{index:05d}"
                try:
                    reply = fs.ingest(events(self.in_flight, float(index), stamp))
                except Exception as exc:  # expected once everything is killed
                    self.failure = exc
                    return
                if reply != {"accepted": EVENTS_PER_REQUEST, "duplicates": 0}:
                    self.failure = AssertionError(f"unexpected ingest reply {reply}")
                    return
                self.acknowledged.append(self.in_flight)
                self.in_flight = None
                index += 1


def complete_baselines(report: dict) -> dict[tuple[str, str], dict]:
    return {
        (d["version"], d["feature"]): d["baseline"]
        for d in report["drift_details"]
        if d["baseline"]["count"] == BASELINE_SIZE
    }


def summary(found: dict, wanted: dict) -> dict[tuple[str, str], tuple | None]:
    """(count, mean, stdDev, null fraction) of each wanted pair found in `found`."""
    return {
        key: (b["count"], b["mean"], b["stdDev"], b["null_fraction"])
        if (b := found.get(key))
        else None
        for key in wanted
    }


def stored_lengths(settings: Settings, entity_ids: list[str]) -> dict[str, int]:
    store = open_store(settings.data_dir)
    try:
        return dict(zip(entity_ids, store.read(entity_ids).lengths.tolist(), strict=True))
    finally:
        store.close()


def store_counts(settings: Settings) -> dict[str, int]:
    store = open_store(settings.data_dir)
    try:
        return store.counts()
    finally:
        store.close()


def test_acknowledged_ingests_and_complete_baselines_survive_sigkill_of_everything(
    settings: Settings,
) -> None:
    demo = store_counts(settings)
    fixed = [f"durable_{k}" for k in range(FIXED_ENTITIES)]
    ingester = Ingester(settings)
    with supervised(settings) as first, Client(settings.broker_frontend) as fs:
        # Given complete drift baselines from the online vectors of every demo entity
        ids = demo_ids(settings)
        assert len(ids) >= BASELINE_SIZE
        fs.batch(ids)
        before = wait_for(
            lambda: (r := fs.drift_report())["total_tracked"] >= len(ids) and r,
            WAIT_S,
            "the drift process to absorb every vector of the batch",
        )
        baselines = complete_baselines(before)
        assert ("v1", "value_mean") in baselines, before["drift_details"][:2]

        # ... and acknowledged ingests: new entities, and a new maximum for a demo entity
        stamp = now_ms()
        for k, entity_id in enumerate(fixed):
            reply = fs.ingest(events(entity_id, 10.0 * k, stamp))
            assert reply == {"accepted": EVENTS_PER_REQUEST, "duplicates": 0}
        max_event = {"entity_id": ids[0], "timestamp": stamp, "value": MAX_VALUE}
        assert fs.ingest([{**max_event, "event_id": "durable-max"}])["accepted"] == 1

        # When every process is SIGKILLed while ingests keep coming
        try:
            ingester.start()
            wait_for(
                lambda: (
                    len(ingester.acknowledged) >= STREAM_ACKS_BEFORE_KILL or not ingester.is_alive()
                ),
                WAIT_S,
                "acknowledged ingests of the ingester",
            )
            assert ingester.is_alive(), f"ingest failed before the kill: {ingester.failure!r}"
            killed = first.kill_everything()
        finally:
            ingester.stopping.set()
            ingester.join(timeout=STREAM_TIMEOUT_MS / 1000 + 10)
    assert not ingester.is_alive()
    assert len(ingester.acknowledged) >= STREAM_ACKS_BEFORE_KILL
    assert len(killed) >= 6, killed  # supervisord, broker, drift, 2 workers, gateway

    # Then every acknowledged event is on disk; the one in flight is all there or not at all
    assert segment.exists(settings.cache_name), "no process may unlink the segment on death"
    acked = fixed + ingester.acknowledged
    lengths = stored_lengths(settings, [*acked, ingester.in_flight or "none"])
    in_flight = lengths.pop(ingester.in_flight or "none")
    assert lengths == dict.fromkeys(acked, EVENTS_PER_REQUEST)
    assert in_flight in (0, EVENTS_PER_REQUEST)
    on_disk = store_counts(settings)
    assert on_disk["events"] == (demo["events"] + EVENTS_PER_REQUEST * len(acked) + 1 + in_flight)
    assert on_disk["entities"] == demo["entities"] + len(acked) + (in_flight > 0)

    # When the service starts again from the same DATA_DIR (and the same cache segment)
    with supervised(settings) as second, Client(settings.broker_frontend) as fs:
        # Then the complete baselines are the same ...
        after = complete_baselines(fs.drift_report())
        assert summary(after, baselines) == summary(baselines, baselines)
        # ... the features reflect the acknowledged events ...
        for k, entity_id in enumerate(fixed):
            assert fs.get(entity_id)["features"]["value_mean"] == pytest.approx(10.0 * k + 2)
        for index, entity_id in enumerate(ingester.acknowledged):  # values index + 0..4
            assert fs.get(entity_id)["features"]["value_mean"] == pytest.approx(index + 2)
        assert fs.get(ids[0])["features"]["value_max"] == MAX_VALUE
        # ... and the store holds what was on disk after the kill
        assert store_counts(settings) == on_disk
        assert second.stop() == 0, second.log_tail()
