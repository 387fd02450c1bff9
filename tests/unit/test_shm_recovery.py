"""What a dead writer can leave behind, made by hand in one process (the real thing, with
SIGKILL, is in tests/integration/test_shm_processes.py): records left mid-write, a
half-updated index, a torn record, dead owners of counter slots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from uuid import uuid4
from zlib import crc32

import numpy as np
import pytest

from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
from shm import CacheError, FeatureCache, drop
from shm.layout import (
    C_HITS,
    C_PID,
    C_START,
    COUNTER_SLOTS,
    H_ACTIVE,
    H_FILLED,
    H_WRITER,
)
from shm.procfs import process_start_ticks


@pytest.fixture
def cache():
    name = f"fst_{uuid4().hex[:10]}"
    opened = FeatureCache.open(name, 16, 600_000, CACHE_WIDTH, CACHE_VERSIONS)
    yield opened
    opened.close()
    drop(name)


def put(cache: FeatureCache, entity_id: str, x: float) -> bool:
    return cache.put("v1", entity_id, np.full(CACHE_WIDTH, x), int(x), cache.generation(entity_id))


def slot_of(cache: FeatureCache, entity_id: str) -> int:
    code, salt = cache.versions.code("v1")
    key = entity_id.encode()
    return cache._writer.find_one(key, crc32(key) ^ salt, code)


def die_inside_the_critical_section(cache: FeatureCache) -> None:
    """What a writer SIGKILLed while holding the lock leaves: H_WRITER set."""
    cache._views.header[H_WRITER] = 4_000_000


def test_a_record_left_mid_write_is_a_bounded_miss_and_is_freed_by_the_next_writer(cache):
    put(cache, "e", 1.0)
    put(cache, "f", 2.0)
    cache._views.seq[slot_of(cache, "e")] += np.uint64(1)  # odd: a writer is "inside"
    die_inside_the_critical_section(cache)

    started = time.monotonic()
    assert cache.get("v1", "e") is None
    assert not cache.get_many("v1", ["e"])[2][0]
    assert time.monotonic() - started < 1.0
    assert cache.get("v1", "f")[1] == 2

    stats = cache.stats()  # the next writer (the stats snapshot takes the lock) repairs
    assert stats["recoveries"] == 1 and stats["size"] == 1
    assert put(cache, "e", 3.0)
    assert cache.get("v1", "e")[1] == 3
    assert cache.stats()["recoveries"] == 1


def test_recovery_rebuilds_a_half_updated_index_from_the_records(cache):
    for i in range(10):
        put(cache, f"e{i}", float(i))
    cache._views.buckets[cache._views.header[H_ACTIVE]][:] = 0  # lost every entry
    die_inside_the_critical_section(cache)
    assert cache.get("v1", "e3") is None

    assert put(cache, "new", 99.0)

    _, as_of, hit = cache.get_many("v1", [f"e{i}" for i in range(10)] + ["new"])
    assert hit.all() and as_of.tolist() == [*range(10), 99]
    assert cache.stats()["recoveries"] == 1 and cache.stats()["size"] == 11


def test_a_torn_record_is_never_returned_and_recovery_drops_it(cache):
    for i in range(4):
        put(cache, f"e{i}", float(i))
    slot = slot_of(cache, "e2")
    cache._views.covered["values"][slot, 5] = 12345.0  # half of a write: check word stale

    assert cache.get("v1", "e2") is None
    assert not cache.get_many("v1", ["e2"])[2][0]
    die_inside_the_critical_section(cache)
    assert cache.stats()["size"] == 3
    assert cache.get_many("v1", ["e0", "e1", "e3"])[2].all()


def test_an_exception_inside_a_write_leaves_the_repair_to_the_next_writer(cache):
    put(cache, "e", 1.0)
    with pytest.raises(RuntimeError), cache._writer:
        raise RuntimeError("boom")
    assert cache._views.header[H_WRITER] != 0
    assert put(cache, "f", 2.0)
    assert cache.stats()["recoveries"] == 1
    assert cache.get("v1", "e") is not None and cache.get("v1", "f") is not None


def test_tombstones_never_fill_the_index(cache):
    limit = len(cache._views.buckets[0]) // 2
    for i in range(2000):
        put(cache, f"e{i}", float(i))
        if i % 3:
            cache.invalidate(f"e{i}")
        assert cache._views.header[H_FILLED] <= limit
    assert cache.get("v1", "e1997") is None and cache.get("v1", "e1998")[1] == 1998
    assert cache.stats()["size"] <= 16


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        check=True,
        text=True,
    )
    return int(done.stdout)


def test_a_dead_owners_counter_slot_is_taken_over_with_its_counts():
    name = f"fst_{uuid4().hex[:10]}"
    first = FeatureCache.open(name, 16, 600_000, CACHE_WIDTH, CACHE_VERSIONS)
    try:
        counters = first._views.counters
        others = np.arange(COUNTER_SLOTS) != first._row
        counters[others, C_PID] = dead_pid()
        counters[others, C_START] = 1
        counters[others, C_HITS] = 5

        with FeatureCache.open(
            name, 16, 600_000, CACHE_WIDTH, CACHE_VERSIONS
        ) as second:  # every slot taken: a dead one
            assert counters[second._row, C_PID] == os.getpid()
            second.get("v1", "x")
            assert second.stats()["hits"] == 5 * (COUNTER_SLOTS - 1)
            assert second.stats()["misses"] == 1

        counters[others, C_PID] = os.getpid()  # every slot held by a live process
        counters[others, C_START] = process_start_ticks(os.getpid())
        with pytest.raises(CacheError, match="counter slots"):
            FeatureCache.open(name, 16, 600_000, CACHE_WIDTH, CACHE_VERSIONS)
        assert first.stats()["hits"] == 5 * (COUNTER_SLOTS - 1)
    finally:
        first.close()
        drop(name)
