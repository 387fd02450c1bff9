"""The change listener (listener/follower.py) in this process, on a real PostgreSQL server
and a real cache segment: what another host commits is invalidated here within
milliseconds; a cut connection is made again and caught up from the position; a log pruned
past the position, or a version forgotten, clears the cache; a stopped listener's lease
runs out by itself."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pg_support import Databases
from store_targets import Target

from featurestore.cache import open_cache
from featurestore.nearcache import (
    W_ADOPTED,
    W_CHANGES,
    W_CLEARS,
    W_POSITION,
    W_RECONNECTS,
    listener_health,
)
from featurestore.store import changes
from featurestore.validation.events import validate_events
from listener.follower import ChangeListener
from shm import FeatureCache, drop

T0 = 1_704_067_200_000
STALENESS_MS = 400
DEADLINE_S = 15.0
JOIN_TIMEOUT_S = 10.0


def ingest(store, entity_ids: list[str], value: float = 1.0) -> None:
    events = [{"entity_id": e, "timestamp": T0, "value": value} for e in entity_ids]
    store.ingest(validate_events(events, max_events=100_000, max_future_ms=300_000))


def wait_until(condition, what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.002)  # deadline-poll


def cached(cache: FeatureCache, entity_id: str) -> bool:
    """Store a vector for the entity now (as a worker would) and say whether it stuck."""
    vector = np.zeros(cache.width)
    return cache.put("v1", entity_id, vector, T0, cache.generation(entity_id))


def present(cache: FeatureCache, entity_id: str) -> bool:
    return cache.get("v1", entity_id, count=False) is not None


class Running:
    """A ChangeListener on its own thread."""

    def __init__(self, target: Target) -> None:
        self.listener = ChangeListener.start(target.settings)
        self.thread = threading.Thread(target=self.listener.run, name="listener", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.listener.stop.set()
        self.thread.join(timeout=JOIN_TIMEOUT_S)
        assert not self.thread.is_alive()


@pytest.fixture
def target(pg_url: str, tmp_path: Path) -> Iterator[Target]:
    made = Target.make(
        "postgresql",
        tmp_path / "data",
        pg_url,
        CACHE_NAME=f"fst_{uuid.uuid4().hex[:10]}",
        MAX_STALENESS_MS=str(STALENESS_MS),
    )
    made.reset()
    yield made
    drop(made.settings.cache_name)


@pytest.fixture
def cache(target: Target) -> Iterator[FeatureCache]:
    opened = open_cache(target.settings)
    yield opened
    opened.close()


@pytest.fixture
def running(target: Target, cache: FeatureCache) -> Iterator[Running]:
    started = Running(target)
    try:
        wait_until(cache.serving, "the listener to grant the lease")
        yield started
    finally:
        started.stop()


def test_another_hosts_commit_is_invalidated_here_within_milliseconds(
    target: Target, cache: FeatureCache, running: Running
) -> None:
    # Given this host's cache holding a vector of "a" and "b", and the listener caught up
    other_host = target.open()
    try:
        ingest(other_host, ["a", "b"])
        wait_until(lambda: cache.holder_words()[W_POSITION] == 1, "the first change")
        assert cached(cache, "a") and cached(cache, "b")
        assert present(cache, "a")

        # When another host stores an event of "a", then deletes "b"
        committed = time.monotonic()
        ingest(other_host, ["a"])
        wait_until(lambda: not present(cache, "a"), "the invalidation of a")
        delay_s = time.monotonic() - committed
        assert present(cache, "b")
        other_host.delete("b")
        wait_until(lambda: not present(cache, "b"), "the invalidation of b")
    finally:
        other_host.close()

    # Then each was invalidated (well within the bound), the position is the head
    assert delay_s < STALENESS_MS / 1000
    words = cache.holder_words()
    assert words[W_POSITION] == 3 and words[W_CHANGES] == 3 and words[W_ADOPTED] == 1
    health = listener_health(cache, STALENESS_MS)
    assert health.state == "live" and health.fresh and health.position == 3
    assert health.lag_ms is not None and health.lag_ms < STALENESS_MS


def test_a_cut_connection_is_made_again_and_caught_up_from_the_position(
    target: Target, cache: FeatureCache, running: Running, postgres: Databases, pg_url: str
) -> None:
    other_host = target.open()
    try:
        ingest(other_host, ["a"])
        wait_until(lambda: cache.holder_words()[W_POSITION] == 1, "the first change")
        assert cached(cache, "a") and cached(cache, "c")

        # When the listener's connection is killed, and commits happen meanwhile
        assert postgres.terminate(pg_url, "featurestore-listener") == 1
        ingest(other_host, ["a"])
        ingest(other_host, ["b"])

        # Then it reconnects, applies both from its position (nothing cleared), goes live
        wait_until(lambda: cache.holder_words()[W_POSITION] == 3, "the catch-up")
        wait_until(lambda: listener_health(cache, STALENESS_MS).state == "live", "live again")
    finally:
        other_host.close()
    words = cache.holder_words()
    assert words[W_RECONNECTS] >= 1 and words[W_CLEARS] == 1  # the one of taking over
    assert not present(cache, "a") and present(cache, "c")


def test_a_log_pruned_past_the_position_clears_the_whole_cache(
    target: Target, cache: FeatureCache
) -> None:
    # Given a listener that took this cache over at change 1, then stopped
    other_host = target.open()
    try:
        ingest(other_host, ["a"])
        first = Running(target)
        wait_until(cache.serving, "the lease")
        first.stop()
        assert cache.holder_words()[W_POSITION] == 1
        assert cached(cache, "unrelated")

        # When two more changes are committed and the log is pruned while it is away
        ingest(other_host, ["b"])
        ingest(other_host, ["c"])
        target.sql("DELETE FROM changes WHERE seq <= 2")
    finally:
        other_host.close()

    # Then the next listener cannot know what changed: it clears everything, goes on at 3
    second = Running(target)
    try:
        wait_until(lambda: cache.holder_words()[W_POSITION] == 3, "the position of the head")
        assert cache.holder_words()[W_CLEARS] == 2
        assert not present(cache, "unrelated")
    finally:
        second.stop()


def test_a_forgotten_version_clears_the_whole_cache_of_every_host(
    target: Target, cache: FeatureCache, running: Running
) -> None:
    # Given a served version recorded by another host, and vectors cached here
    other_host = target.open()
    try:
        other_host.record_versions({"v1": "a" * 64})
        assert cached(cache, "a") and cached(cache, "b")
        # When that host forgets the version (and forgetting an unknown one changes nothing)
        assert other_host.forget_version("nothing") is False
        assert other_host.forget_version("v1") is True
    finally:
        other_host.close()
    # Then the change is of every entity, and this host's listener clears everything
    assert target.sql("SELECT seq, entity_ids FROM changes") == [(1, None)]
    wait_until(lambda: cache.holder_words()[W_POSITION] == 1, "the change of the forgetting")
    assert cache.holder_words()[W_CLEARS] == 2  # the one of taking over, and this one
    assert not present(cache, "a") and not present(cache, "b")
    assert cache.serving()


def test_hits_stop_within_the_bound_when_the_listener_stops_following(
    target: Target, cache: FeatureCache, running: Running
) -> None:
    assert cached(cache, "a")
    assert cache.get("v1", "a") is not None
    stopped = time.monotonic()
    running.stop()  # also what a hung or dead listener, or a lost database, amounts to
    wait_until(lambda: cache.get("v1", "a") is None, "hits to stop")
    # within the bound of its last confirmation, which came before the stop
    assert time.monotonic() - stopped <= STALENESS_MS / 1000 + 0.15
    assert listener_health(cache, STALENESS_MS).state == "stopped"


def test_notifications_carry_only_the_change_sequence_number(target: Target, pg_url: str) -> None:
    import psycopg

    store = target.open()
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {changes.CHANNEL}")
            ingest(store, [f"user_{i:05d}" for i in range(5000)])  # 60 kB of entity ids
            store.delete("user_00001")
            payloads = [n.payload for n in conn.notifies(timeout=5, stop_after=2)]
        assert payloads == ["1", "2"]
        ((count,),) = target.sql("SELECT cardinality(entity_ids) FROM changes WHERE seq = 1")
        assert count == 5000
    finally:
        store.close()
