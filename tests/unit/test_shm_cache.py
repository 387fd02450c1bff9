"""The shared-memory feature cache on a real segment, one process: reads, writes, LRU, TTL,
generations, invalidation, clear and statistics."""

from __future__ import annotations

import os
import time
from uuid import uuid4

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
from shm import CacheError, FeatureCache, UnknownVersion, drop

WIDTH = CACHE_WIDTH
DEADLINE_S = 10.0


@pytest.fixture
def cache_name():
    name = f"fst_{uuid4().hex[:10]}"
    yield name
    drop(name)


@pytest.fixture
def open_cache(cache_name):
    opened: list[FeatureCache] = []

    def _open(max_size: int = 64, ttl_ms: int = 600_000, **kwargs) -> FeatureCache:
        cache = FeatureCache.open(
            cache_name, max_size, ttl_ms, CACHE_WIDTH, CACHE_VERSIONS, **kwargs
        )
        opened.append(cache)
        return cache

    yield _open
    for cache in reversed(opened):
        cache.close()


def vec(x: float) -> np.ndarray:
    return np.arange(WIDTH, dtype=np.float64) + x


def put(cache: FeatureCache, entity_id: str, x: float, version: str = "v1") -> bool:
    return cache.put(version, entity_id, vec(x), int(x), cache.generation(entity_id))


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)  # deadline-poll


def test_put_then_get_returns_a_copy_of_the_full_vector_and_its_as_of(open_cache):
    cache = open_cache()
    assert put(cache, "user_1", 5.0)

    got = cache.get("v1", "user_1")

    assert got is not None
    values, as_of = got
    assert values.dtype == np.float64 and values.shape == (WIDTH,)
    np.testing.assert_array_equal(values, vec(5.0))
    assert as_of == 5
    values[:] = -1  # a copy: the cache is untouched
    np.testing.assert_array_equal(cache.get("v1", "user_1")[0], vec(5.0))


def test_a_short_vector_is_nan_padded_and_a_long_one_refused(open_cache):
    cache = open_cache()
    assert cache.put("v1", "e", np.array([1.0, 2.0]), 1, cache.generation("e"))
    values, _ = cache.get("v1", "e")
    assert values[:2].tolist() == [1.0, 2.0] and np.isnan(values[2:]).all()
    with pytest.raises(ValueError, match="holds"):
        cache.put("v1", "e", np.zeros(WIDTH + 1), 1, cache.generation("e"))


def test_versions_are_separate_entries(open_cache):
    cache = open_cache()
    put(cache, "e", 1.0, "v1")
    assert cache.get("v2", "e") is None
    put(cache, "e", 2.0, "v2")
    assert cache.get("v1", "e")[1] == 1
    assert cache.get("v2", "e")[1] == 2
    with pytest.raises(UnknownVersion):
        cache.get("v9", "e")


def test_keys_are_compared_byte_for_byte(open_cache):
    cache = open_cache()
    long_id = "é" * 128  # 256 UTF-8 bytes
    for i, entity_id in enumerate(["abc", "abc\0", "\0abc", long_id, long_id[:-1] + "e", ""]):
        put(cache, entity_id, float(i))
    for i, entity_id in enumerate(["abc", "abc\0", "\0abc", long_id, long_id[:-1] + "e", ""]):
        assert cache.get("v1", entity_id)[1] == i, repr(entity_id)
    assert cache.get("v1", "ab") is None
    with pytest.raises(ValueError, match="256"):
        cache.get("v1", "x" * 257)
    with pytest.raises(ValueError, match="256"):
        put(cache, "x" * 257, 1.0)


def test_get_many_agrees_with_get_including_duplicates_and_misses(open_cache):
    cache = open_cache(max_size=256)
    ids = [f"user_{i}" for i in range(100)]
    stored = cache.put_many(
        "v1", ids, np.stack([vec(i) for i in range(100)]), np.arange(100), cache.generations(ids)
    )
    assert stored.all()
    asked = ["user_3", "nobody", "user_3", "user_99", "user_0", "user_100"]

    values, as_of, hit = cache.get_many("v1", asked)

    assert hit.tolist() == [True, False, True, True, True, False]
    assert as_of.tolist() == [3, -1, 3, 99, 0, -1]
    for i, entity_id in enumerate(asked):
        single = cache.get("v1", entity_id)
        if single is None:
            assert np.isnan(values[i]).all()
        else:
            np.testing.assert_array_equal(values[i], single[0])
    empty = cache.get_many("v1", [])
    assert empty[0].shape == (0, WIDTH) and empty[2].shape == (0,)
    assert cache.put_many("v1", [], np.zeros((0, WIDTH)), [], []).shape == (0,)
    assert cache.generations([]).shape == (0,)
    cache.invalidate_many([])


def test_ttl_is_enforced_on_every_read(open_cache):
    ttl_ms = 300
    cache = open_cache(ttl_ms=ttl_ms)
    stored_at = time.monotonic()
    put(cache, "e", 1.0)

    first = cache.get("v1", "e")
    if (time.monotonic() - stored_at) * 1000 < ttl_ms:
        assert first is not None
    wait_until(lambda: cache.get("v1", "e") is None, "expiry")
    assert not cache.get_many("v1", ["e"])[2][0]
    assert (time.monotonic() - stored_at) * 1000 >= ttl_ms - 5  # never early (clock granularity)
    stats = cache.stats()
    assert stats["size"] == 0 and stats["expirations"] == 1  # counted once per entry
    put(cache, "e", 2.0)  # replaced: still one expiration, now a fresh entry
    assert cache.get("v1", "e")[1] == 2
    assert cache.stats()["expirations"] == 1 and cache.stats()["size"] == 1


def test_lru_evicts_the_least_recently_used(open_cache):
    cache = open_cache(max_size=8)
    for i in range(8):
        put(cache, f"e{i}", float(i))
    for i in (0, 2, 4, 6):  # used recently
        assert cache.get("v1", f"e{i}") is not None
    cache.get_many("v1", ["e1"])  # so is this one, through get_many

    for i in range(8, 11):
        put(cache, f"e{i}", float(i))

    alive = {i for i in range(11) if cache.get("v1", f"e{i}") is not None}
    assert alive == {0, 1, 2, 4, 6, 8, 9, 10}
    assert cache.stats()["evictions"] == 3


def test_sampled_lru_of_a_large_cache_keeps_recent_entries(open_cache):
    n = 10_000  # above the eviction window: sampled LRU
    cache = open_cache(max_size=n)
    ids = [f"e{i}" for i in range(n)]
    cache.put_many("v1", ids, np.zeros((n, WIDTH)), np.zeros(n), cache.generations(ids))
    recent = ids[::2]
    assert cache.get_many("v1", recent)[2].all()

    new = [f"new{i}" for i in range(2000)]
    cache.put_many("v1", new, np.ones((2000, WIDTH)), np.ones(2000), cache.generations(new))

    assert cache.get_many("v1", recent)[2].all()
    assert cache.get_many("v1", new)[2].all()
    assert cache.stats()["size"] == n


def test_capacity_holds_max_size_entries_and_evicts_the_rest(open_cache):
    cache = open_cache(max_size=50)
    ids = [f"e{i}" for i in range(80)]
    for i, entity_id in enumerate(ids[:50]):
        put(cache, entity_id, float(i))
    assert cache.get_many("v1", ids[:50])[2].all()
    assert cache.stats()["size"] == 50

    cache.put_many("v1", ids[50:], np.zeros((30, WIDTH)), np.zeros(30), cache.generations(ids[50:]))

    stats = cache.stats()
    assert stats["size"] == 50 and stats["evictions"] == 30 and stats["utilization"] == 1.0
    assert cache.get_many("v1", ids)[2].sum() == 50
    big = [f"b{i}" for i in range(500)]  # a batch far larger than the cache
    cache.put_many("v1", big, np.zeros((500, WIDTH)), np.zeros(500), cache.generations(big))
    assert cache.stats()["size"] == 50
    assert cache.get_many("v1", big[-25:])[2].all()


def test_put_many_applies_rows_in_order(open_cache):
    cache = open_cache()
    ids = ["a", "b", "a"]
    stored = cache.put_many(
        "v1", ids, np.stack([vec(1), vec(2), vec(3)]), np.array([1, 2, 3]), cache.generations(ids)
    )
    assert stored.tolist() == [True, True, True]
    assert cache.get("v1", "a")[1] == 3 and cache.get("v1", "b")[1] == 2
    assert cache.stats()["size"] == 2


def test_invalidate_drops_every_version_and_bumps_the_generation(open_cache):
    cache = open_cache()
    put(cache, "e", 1.0, "v1")
    put(cache, "e", 1.0, "v2")
    put(cache, "other", 1.0)
    before = cache.generation("e")

    cache.invalidate("e")

    assert cache.get("v1", "e") is None and cache.get("v2", "e") is None
    assert cache.get("v1", "other") is not None
    assert cache.generation("e") > before
    assert cache.stats()["size"] == 1
    cache.invalidate_many(["other", "never-cached"])
    assert cache.stats()["size"] == 0


def test_a_put_computed_before_an_invalidation_is_refused(open_cache):
    cache = open_cache()
    generation = cache.generation("e")  # read before computing
    cache.invalidate("e")  # an ingest lands meanwhile

    assert not cache.put("v1", "e", vec(1), 1, generation)
    assert cache.get("v1", "e") is None
    assert cache.put("v1", "e", vec(2), 2, cache.generation("e"))

    ids = ["a", "b", "c"]
    generations = cache.generations(ids)
    cache.invalidate("b")
    stored = cache.put_many("v1", ids, np.zeros((3, WIDTH)), np.zeros(3), generations)
    assert stored.tolist() == [True, False, True]
    assert cache.get_many("v1", ids)[2].tolist() == [True, False, True]
    stats = cache.stats()
    assert stats["stale_puts"] == 2 and stats["puts"] == 3


def test_clear_removes_everything_and_refuses_puts_computed_before_it(open_cache):
    cache = open_cache()
    for i in range(10):
        put(cache, f"e{i}", float(i))
    generation = cache.generation("e0")

    assert cache.clear() == 10

    assert cache.get_many("v1", [f"e{i}" for i in range(10)])[2].sum() == 0
    assert cache.stats()["size"] == 0
    assert not cache.put("v1", "e0", vec(0), 0, generation)
    assert put(cache, "e0", 0.0)
    assert cache.clear() == 1
    assert cache.clear() == 0


def test_stats_semantics(open_cache, cache_name):
    cache = open_cache(max_size=10)
    stats = cache.stats()
    assert stats["hit_rate"] == 0.0 and stats["hits"] == stats["misses"] == 0
    assert stats["memory_bytes"] == os.path.getsize(f"/dev/shm/{cache_name}")
    assert stats["max_size"] == 10 and stats["size"] == 0 and stats["utilization"] == 0.0

    put(cache, "a", 1.0)
    cache.get("v1", "a")
    cache.get("v1", "b")
    cache.get_many("v1", ["a", "a", "b", "c"])

    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (3, 3)
    assert stats["hit_rate"] == 0.5
    assert stats["size"] == 1 and stats["utilization"] == 0.1
    assert {"evictions", "expirations", "puts"} <= stats.keys()


def test_a_peek_counts_nothing_until_the_caller_counts_it(open_cache):
    cache = open_cache()
    put(cache, "a", 1.0)
    assert cache.get("v1", "a", count=False) is not None
    assert cache.get_many("v1", ["a", "b"], count=False)[2].tolist() == [True, False]
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (0, 0)
    cache.count_lookups(hits=2, misses=1)
    assert (cache.stats()["hits"], cache.stats()["misses"]) == (2, 1)


def test_statistics_are_shared_by_every_attached_instance(open_cache):
    first, second = open_cache(), open_cache()
    put(first, "a", 1.0)
    second.get("v1", "a")
    first.get("v1", "zzz")

    assert first.stats() == second.stats()
    second.close()  # a closed instance's counts stay in the totals
    assert first.stats()["hits"] == 1 and first.stats()["misses"] == 1


def test_memory_is_fixed_at_creation(open_cache, cache_name):
    cache = open_cache(max_size=100)
    size = os.path.getsize(f"/dev/shm/{cache_name}")
    ids = [f"e{i}" for i in range(1000)]
    cache.put_many("v1", ids, np.zeros((1000, WIDTH)), np.zeros(1000), cache.generations(ids))
    for i in range(50):
        cache.invalidate(ids[-i - 1])
    assert os.path.getsize(f"/dev/shm/{cache_name}") == size == cache.memory_bytes


def test_an_instance_opened_before_a_fork_refuses_to_write_in_the_child(open_cache):
    cache = open_cache()
    pid = os.fork()
    if pid == 0:  # the child shares the parent's lock and counter slot: it must not write
        try:
            put(cache, "e", 1.0)
        except CacheError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert put(cache, "e", 1.0)


# A model check: any sequence of operations on a cache large enough never to evict behaves
# like a dict, in get and get_many alike.
OPS = st.lists(
    st.tuples(
        st.sampled_from(["put", "put_many", "invalidate", "clear", "get_many"]),
        st.lists(st.sampled_from(["a", "b", "a\0", "ü", "", "c" * 256]), min_size=1, max_size=4),
        st.sampled_from(["v1", "v2"]),
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(OPS)
def test_behaves_like_a_dict_when_nothing_is_evicted(ops):
    name = f"fst_{uuid4().hex[:10]}"
    cache = FeatureCache.open(name, 64, 600_000, CACHE_WIDTH, CACHE_VERSIONS)
    model: dict[tuple[str, str], int] = {}
    try:
        for step, (op, ids, version) in enumerate(ops):
            _apply(cache, model, step, (op, ids, version))
            for key in ["a", "b", "a\0", "ü", "", "c" * 256]:
                got = cache.get(version, key)
                assert (got and got[1]) == model.get((version, key)), (op, key)
            assert cache.stats()["size"] == len(model)
    finally:
        cache.close()
        drop(name)


def _apply(cache, model, step, action):
    op, ids, version = action
    if op == "put":
        assert cache.put(version, ids[0], vec(step), step, cache.generation(ids[0]))
        model[(version, ids[0])] = step
    elif op == "put_many":
        n = len(ids)
        cache.put_many(version, ids, np.zeros((n, WIDTH)), np.full(n, step), cache.generations(ids))
        model.update({(version, e): step for e in ids})
    elif op == "invalidate":
        cache.invalidate_many(ids)
        for e in ids:
            model.pop(("v1", e), None)
            model.pop(("v2", e), None)
    elif op == "clear":
        cache.clear()
        model.clear()
    else:
        _, as_of, hit = cache.get_many(version, ids)
        assert [a if h else None for a, h in zip(as_of.tolist(), hit, strict=True)] == [
            model.get((version, e)) for e in ids
        ]


# ---------------------------------------------------------------------------------- lease
def test_a_leased_cache_serves_hits_only_while_its_lease_holds(open_cache):
    # Given a cache created with a lease of 200 ms and a stored vector
    cache = open_cache(lease_ms=200)
    assert cache.lease_ms == 200
    assert put(cache, "user_1", 1.0)  # writes need no lease

    # Then nothing is served before a holder renews the lease (a new segment's lease is 0)
    assert not cache.serving() and cache.lease_until_ns() == 0
    assert cache.get("v1", "user_1") is None
    _, _, hit = cache.get_many("v1", ["user_1", "user_1"])
    assert not hit.any()

    # When the holder confirms it is caught up as of now
    confirmed = time.monotonic_ns()
    cache.renew_lease(confirmed)

    # Then hits are served (through every process's view of the segment) ...
    other = open_cache(lease_ms=200)
    assert cache.lease_until_ns() == confirmed + 200_000_000
    assert cache.get("v1", "user_1") is not None
    assert other.get_many("v1", ["user_1"])[2].all()
    # ... until the lease runs out by itself, without any call
    wait_until(lambda: not other.serving(), "the lease to run out")
    assert other.get("v1", "user_1") is None and not cache.get_many("v1", ["user_1"])[2].any()
    stats = cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 5  # refused hits count as misses


def test_an_unleased_cache_ignores_the_lease_and_attachers_must_agree(open_cache):
    plain = open_cache()
    assert plain.lease_ms == 0 and plain.serving()
    assert put(plain, "user_1", 1.0) and plain.get("v1", "user_1") is not None
    plain.renew_lease(0)  # nothing to renew
    assert plain.serving()
    with pytest.raises(CacheError, match="lease_ms"):
        open_cache(lease_ms=1000)  # another host's setting on the same segment


def test_holder_words_start_at_zero_and_are_kept_for_every_attacher(open_cache):
    holder = open_cache(lease_ms=1000)
    reader = open_cache(lease_ms=1000)
    assert holder.holder_words() == [0] * 16
    holder.set_holder_words({0: 1, 2: 12345, 15: 7})
    words = reader.holder_words()
    assert words[0] == 1 and words[2] == 12345 and words[15] == 7
    with pytest.raises(IndexError):
        holder.set_holder_words({16: 1})
    holder.clear()  # a clear leaves the holder's words alone
    assert reader.holder_words()[2] == 12345
