"""The shared-memory cache across real, independently started processes: concurrent
readers and writers, writers SIGKILLed mid-write, the creation race, and a segment that
outlives every process that created or attached it."""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest

from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
from shm import FeatureCache, drop

SPAWN = mp.get_context("spawn")
REPO = Path(__file__).resolve().parents[2]
WIDTH = CACHE_WIDTH
KEYS = 64  # entities the processes fight over
CAPACITY = 48  # fewer than KEYS: evictions happen too
TTL_MS = 600_000
KEY_FIELD = 1000  # a stamp ends with the key's index, so a vector of another key shows
START_S = 90.0  # spawned interpreters on 2 busy cores
RUN_S = 3.0


@pytest.fixture
def cache_name():
    name = f"fst_{uuid4().hex[:10]}"
    yield name
    drop(name)


@pytest.fixture
def children():
    started: list = []
    yield started
    for child in started:
        if child.is_alive():
            child.kill()
        child.join(timeout=10)


def key(i: int) -> str:
    return f"entity-{i}"


def stamp_vector(stamp: int) -> np.ndarray:
    """The one vector a writer ever writes with this stamp: every value depends on it."""
    return stamp * 0.5 + np.arange(WIDTH) * 1.25 - (stamp % 7)


def is_written(values: np.ndarray, as_of: int, i: int) -> bool:
    """Is this exactly a vector some writer wrote for key i, with its own as_of?"""
    return as_of % KEY_FIELD == i and np.array_equal(values, stamp_vector(as_of))


def write_some(cache: FeatureCache, rng: np.random.Generator, writer: int, seq: int) -> tuple:
    """One put_many of random (overlapping, duplicated) keys, or one put; (stored, refused)."""
    if seq % 3 == 0:
        i = int(rng.integers(KEYS))
        stamp = (writer * 10_000_000 + seq) * KEY_FIELD + i
        ok = cache.put("v1", key(i), stamp_vector(stamp), stamp, cache.generation(key(i)))
        return int(ok), int(not ok)
    picks = rng.integers(KEYS, size=int(rng.integers(1, 40)))
    ids = [key(int(i)) for i in picks]
    stamps = (writer * 10_000_000 + seq) * KEY_FIELD + picks
    generations = cache.generations(ids)
    if seq % 5 == 0:
        cache.invalidate(key(int(rng.integers(KEYS))))  # some of these puts turn stale
    values = np.stack([stamp_vector(int(s)) for s in stamps])
    stored = cache.put_many("v1", ids, values, stamps, generations)
    return int(stored.sum()), int((~stored).sum())


def read_some(cache: FeatureCache, rng: np.random.Generator, step: int) -> tuple:
    """One get or one get_many; (lookups, hits, descriptions of bad reads)."""
    if step % 4:
        i = int(rng.integers(KEYS))
        got = cache.get("v1", key(i))
        bad = [] if got is None or is_written(got[0], got[1], i) else [(i, got)]
        return 1, int(got is not None), bad
    picks = [int(i) for i in rng.integers(KEYS, size=32)]
    values, as_of, hit = cache.get_many("v1", [key(i) for i in picks])
    bad = [
        (i, values[row], as_of[row])
        for row, i in enumerate(picks)
        if hit[row] and not is_written(values[row], int(as_of[row]), i)
    ]
    return len(picks), int(hit.sum()), bad


def writer_main(name: str, writer: int, stop, results) -> None:
    cache = FeatureCache.open(name, CAPACITY, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS, wait_s=START_S)
    rng = np.random.default_rng(writer)
    results.put(("ready", writer))
    stored = refused = seq = 0
    while not stop.is_set():
        seq += 1
        s, r = write_some(cache, rng, writer, seq)
        stored, refused = stored + s, refused + r
    cache.close()
    results.put(("writer", writer, stored, refused))


def reader_main(name: str, reader: int, stop, results) -> None:
    cache = FeatureCache.open(name, CAPACITY, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS, wait_s=START_S)
    rng = np.random.default_rng(100 + reader)
    results.put(("ready", reader))
    lookups = hits = step = 0
    bad: list = []
    while not stop.is_set():
        step += 1
        n, h, b = read_some(cache, rng, step)
        lookups, hits, bad = lookups + n, hits + h, bad + b
    cache.close()
    results.put(("reader", reader, lookups, hits, [repr(x) for x in bad[:3]], len(bad)))


def receive(results, n: int, timeout_s: float) -> list:
    deadline = time.monotonic() + timeout_s
    got = []
    while len(got) < n:
        try:
            got.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
        except queue.Empty:
            pytest.fail(f"only {len(got)} of {n} messages from the children: {got}")
    return got


@pytest.mark.timeout(120)
def test_four_writers_and_four_readers_never_see_a_torn_vector_and_counts_add_up(
    cache_name, children
):
    cache = FeatureCache.open(cache_name, CAPACITY, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS)
    try:
        stop, results = SPAWN.Event(), SPAWN.Queue()
        for target, n in ((writer_main, 4), (reader_main, 4)):
            for i in range(n):
                children.append(SPAWN.Process(target=target, args=(cache_name, i, stop, results)))
                children[-1].start()
        receive(results, len(children), START_S)

        rng = np.random.default_rng(999)
        own_lookups = own_hits = step = 0
        own_bad: list = []
        finish = time.monotonic() + RUN_S
        while time.monotonic() < finish:  # the test process reads too, until the run ends
            step += 1
            n, h, b = read_some(cache, rng, step)
            own_lookups, own_hits, own_bad = own_lookups + n, own_hits + h, own_bad + b
        stop.set()
        reports = receive(results, len(children), 60)
        for child in children:
            child.join(timeout=30)
            assert child.exitcode == 0

        writers = [r for r in reports if r[0] == "writer"]
        readers = [r for r in reports if r[0] == "reader"]
        assert not own_bad and all(r[5] == 0 for r in readers), readers
        lookups = own_lookups + sum(r[2] for r in readers)
        hits = own_hits + sum(r[3] for r in readers)
        stats = cache.stats()
        assert (stats["hits"], stats["misses"]) == (hits, lookups - hits)
        assert stats["puts"] == sum(w[2] for w in writers)
        assert stats["stale_puts"] == sum(w[3] for w in writers)
        assert stats["puts"] > 100 and hits > 100 and stats["stale_puts"] > 0
        assert stats["size"] <= CAPACITY and stats["recoveries"] == 0
    finally:
        cache.close()


def read_and_check(cache: FeatureCache, rng: np.random.Generator, step: int, n: int) -> int:
    for _ in range(n):
        step += 1
        assert read_some(cache, rng, step)[2] == []
    return step


def busy_writer_main(name: str, writer: int) -> None:
    """Writes until SIGKILLed."""
    cache = FeatureCache.open(name, CAPACITY, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS, wait_s=START_S)
    rng = np.random.default_rng(writer)
    seq = 0
    while True:
        seq += 1
        write_some(cache, rng, writer, seq)
        ids = [key(int(i)) for i in rng.integers(KEYS, size=KEYS)]  # several chunks under
        stamps = (writer * 10_000_000 + seq) * KEY_FIELD + np.array([int(i[7:]) for i in ids])
        values = np.stack([stamp_vector(int(s)) for s in stamps])  # one lock hold
        cache.put_many("v1", ids, values, stamps, cache.generations(ids))


@pytest.mark.timeout(120)
def test_writers_sigkilled_mid_write_leave_no_lock_held_and_no_torn_entry(cache_name, children):
    cache = FeatureCache.open(cache_name, CAPACITY, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS)
    rng = np.random.default_rng(7)
    deadline = time.monotonic() + 90
    kills = step = 0
    try:
        while kills < 10 or (cache.stats()["recoveries"] < 2 and kills < 40):
            assert time.monotonic() < deadline, f"{kills} kills, {cache.stats()}"
            child = SPAWN.Process(target=busy_writer_main, args=(cache_name, kills))
            children.append(child)
            child.start()
            target = cache.stats()["puts"] + int(rng.integers(1, 50))
            while cache.stats()["puts"] < target:  # the writer is running; read meanwhile
                assert time.monotonic() < deadline and child.is_alive()
                step = read_and_check(cache, rng, step, 20)
            step = read_and_check(cache, rng, step, int(rng.integers(0, 200)))  # a random moment
            os.kill(child.pid, signal.SIGKILL)  # wherever it is
            child.join(timeout=10)
            kills += 1

            step = read_and_check(cache, rng, step, 8)
            assert cache.put("v1", "after", np.zeros(WIDTH), 0, cache.generation("after"))
            values, as_of, hit = cache.get_many("v1", [key(i) for i in range(KEYS)])
            assert all(is_written(values[i], int(as_of[i]), i) for i in np.flatnonzero(hit))
        assert cache.stats()["recoveries"] >= 1  # some kill did land inside a write
        assert cache.stats()["size"] <= CAPACITY
    finally:
        cache.close()


def racer_main(name: str, racer: int, barrier, results) -> None:
    barrier.wait(timeout=START_S)
    cache = FeatureCache.open(name, 40, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS, wait_s=30)
    entity = f"racer-{racer}"
    cache.put("v1", entity, np.full(WIDTH, racer), racer, cache.generation(entity))
    results.put((racer, cache.created, cache.memory_bytes))
    cache.close()


@pytest.mark.timeout(120)
def test_processes_racing_to_create_the_segment_share_one(cache_name, children):
    n = 5
    barrier, results = SPAWN.Barrier(n), SPAWN.Queue()
    for i in range(n):
        children.append(SPAWN.Process(target=racer_main, args=(cache_name, i, barrier, results)))
        children[-1].start()
    reports = receive(results, n, START_S)
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0

    assert sum(created for _, created, _ in reports) == 1
    assert len({size for _, _, size in reports}) == 1
    with FeatureCache.open(cache_name, 40, TTL_MS, CACHE_WIDTH, CACHE_VERSIONS) as cache:
        assert not cache.created
        assert cache.get_many("v1", [f"racer-{i}" for i in range(n)])[2].all()


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from multiprocessing import resource_tracker
    import numpy as np
    from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
    from shm import FeatureCache

    resource_tracker.ensure_running()  # the tracker that would unlink a SharedMemory
    print(resource_tracker._resource_tracker._pid, flush=True)
    name, entity, how = sys.argv[1:4]
    cache = FeatureCache.open(name, 32, 600000, CACHE_WIDTH, CACHE_VERSIONS)
    cache.put("v1", entity, np.ones(cache.width), 7, cache.generation(entity))
    if how == "close":
        cache.close()
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


@pytest.mark.timeout(120)
def test_the_segment_outlives_processes_that_create_or_attach_it(cache_name):
    for how in ("exit", "close", "kill"):  # the first one creates the segment
        done = subprocess.run(
            [sys.executable, "-c", CHILD, cache_name, f"by-{how}", how],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == (-signal.SIGKILL if how == "kill" else 0), done.stderr
        tracker = int(done.stdout.split()[0])
        deadline = time.monotonic() + 30
        while not gone(tracker):  # the tracker cleans up after its process is gone
            assert time.monotonic() < deadline
            time.sleep(0.01)  # deadline-poll
        assert os.path.exists(f"/dev/shm/{cache_name}"), how

    with FeatureCache.open(cache_name, 32, 600_000, CACHE_WIDTH, CACHE_VERSIONS) as cache:
        assert not cache.created
        hit = cache.get_many("v1", ["by-exit", "by-close", "by-kill"])[2]
        assert hit.tolist() == [True, True, True]
