"""The named segment: create-or-attach, layout checks, ready marker, drop, independence."""

from __future__ import annotations

import os
import struct
from uuid import uuid4

import numpy as np
import pytest

from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH, open_cache
from featurestore.config import Settings
from shm import CacheError, CacheLayoutError, FeatureCache, UnknownVersion, drop
from shm.layout import H_READY, LAYOUT_VERSION, MAGIC, Layout


@pytest.fixture
def cache_name():
    name = f"fst_{uuid4().hex[:10]}"
    yield name
    drop(name)


def path(name: str) -> str:
    return f"/dev/shm/{name}"


def test_first_open_creates_the_segment_and_later_ones_attach(cache_name):
    with (
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as first,
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as second,
    ):
        assert first.created and not second.created
        first.put("v1", "e", np.ones(CACHE_WIDTH), 1, first.generation("e"))
        assert second.get("v1", "e")[1] == 1


@pytest.mark.parametrize(
    ("max_size", "ttl_ms", "width", "names"),
    [
        (64, 1000, CACHE_WIDTH, "CACHE_MAX_SIZE"),
        (32, 2000, CACHE_WIDTH, "CACHE_TTL_MS"),
        (32, 1000, CACHE_WIDTH + 1, "width"),
    ],
)
def test_a_layout_or_size_mismatch_is_a_clear_error(cache_name, max_size, ttl_ms, width, names):
    with (
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS),
        pytest.raises(CacheLayoutError, match=names) as err,
    ):
        FeatureCache.open(cache_name, max_size, ttl_ms, width, CACHE_VERSIONS)
    assert cache_name in str(err.value) and "drop" in str(err.value)


def test_another_layout_version_is_refused(cache_name):
    FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS).close()
    with open(path(cache_name), "r+b") as f:
        f.seek(8 * H_READY)
        f.write(struct.pack("<Q", LAYOUT_VERSION + 1))
    with pytest.raises(CacheLayoutError, match="layout version"):
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS)


HALF_WRITTEN = struct.pack("<4Q", MAGIC, 0, 99, 12345) + bytes(5000)  # no ready marker


@pytest.mark.parametrize("left_behind", [b"", HALF_WRITTEN], ids=["empty", "half-written"])
def test_a_segment_whose_creator_died_before_the_ready_marker_is_initialised(
    cache_name, left_behind
):
    with open(path(cache_name), "wb") as f:
        f.write(left_behind)
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS, wait_s=2.0) as cache:
        assert cache.created
        assert cache.stats()["size"] == 0 and cache.get("v1", "e") is None
        assert os.path.getsize(path(cache_name)) == cache.memory_bytes


def test_attach_adopts_the_layout_of_an_existing_segment(cache_name):
    with FeatureCache.open(cache_name, 40, 1234, 10, CACHE_VERSIONS) as created:
        created.put("v2", "e", np.ones(10), 3, created.generation("e"))
        with FeatureCache.attach(cache_name) as tool:
            assert (tool.max_size, tool.ttl_ms, tool.width) == (40, 1234, 10)
            assert tool.versions.pairs == created.versions.pairs  # from the header
            tool.invalidate_many(["e"])  # what the CLI does to a running service's cache
            assert created.get("v2", "e") is None
            with pytest.raises(UnknownVersion):
                tool.get("v2", "e")  # reads by name need the names: `open`
    with pytest.raises(CacheError, match="no cache"):
        FeatureCache.attach(f"{cache_name}_absent")
    assert not os.path.exists(path(f"{cache_name}_absent"))


def test_closing_never_unlinks_and_drop_does(cache_name):
    cache = FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS)
    cache.put("v1", "e", np.ones(CACHE_WIDTH), 1, cache.generation("e"))
    cache.close()
    cache.close()  # idempotent
    assert os.path.exists(path(cache_name))
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as again:
        assert not again.created and again.get("v1", "e") is not None

    assert drop(cache_name) is True
    assert drop(cache_name) is False
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as fresh:
        assert fresh.created and fresh.get("v1", "e") is None


def test_an_instance_attached_before_a_drop_keeps_working_on_its_mapping(cache_name):
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as cache:
        drop(cache_name)
        assert cache.put("v1", "e", np.ones(CACHE_WIDTH), 1, cache.generation("e"))
        assert cache.get("v1", "e") is not None


def test_two_cache_names_are_independent(cache_name):
    other = f"{cache_name}_b"
    try:
        with (
            FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as a,
            FeatureCache.open(other, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as b,
        ):
            a.put("v1", "e", np.ones(CACHE_WIDTH), 1, a.generation("e"))
            assert b.get("v1", "e") is None
            b.invalidate("e")
            b.clear()
            assert a.get("v1", "e") is not None
            assert a.stats()["hits"] == 1 and b.stats()["misses"] == 1
    finally:
        drop(other)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 201, "naïve", "tab\there"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ValueError, match="cache name"):
        FeatureCache.open(name, 8, 1000, CACHE_WIDTH, CACHE_VERSIONS)


def test_open_cache_uses_the_cache_variables(tmp_path):
    settings = Settings.from_env(
        {"DATA_DIR": str(tmp_path), "CACHE_MAX_SIZE": "77", "CACHE_TTL_MS": "4321"}
    )
    try:
        with open_cache(settings) as cache:
            assert cache.name == settings.cache_name
            assert (cache.max_size, cache.ttl_ms, cache.width) == (77, 4321, CACHE_WIDTH)
    finally:
        drop(settings.cache_name)


def test_layout_sections_are_aligned_and_disjoint():
    layout = Layout.compute(10_000, CACHE_WIDTH)
    starts = [
        layout.counters_offset,
        layout.generations_offset,
        layout.buckets_offset,
        layout.meta_offset,
        layout.records_offset,
        layout.total_bytes,
    ]
    assert starts == sorted(starts) and all(s % 8 == 0 for s in starts)
    assert layout.record_bytes % 64 == 0 and layout.key_offset + 256 <= layout.record_bytes
    assert layout.n_buckets >= 4 * 10_000 and layout.n_buckets & (layout.n_buckets - 1) == 0
    assert layout.meta_array_offset(6) + 8 * 10_000 <= layout.records_offset
    with pytest.raises(ValueError):
        Layout.compute(0, CACHE_WIDTH)


# ------------------------------------------------------------------ retirement (SPEC §11)
def test_a_drop_moves_every_attached_process_to_one_new_segment(cache_name):
    # Given two attachments (two processes' views) with a cached vector
    with (
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as reader,
        FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as writer,
    ):
        writer.put("v1", "e", np.full(CACHE_WIDTH, 1.0), 1, writer.generation("e"))
        assert reader.get("v1", "e")[1] == 1
        old_inode = os.stat(path(cache_name)).st_ino
        # When the segment is dropped while both stay attached
        assert drop(cache_name) is True
        # Then the next access of each attaches the same new segment: the old vector is gone
        # for both, and what one writes now the other reads
        assert writer.get("v1", "e") is None
        writer.put("v1", "e", np.full(CACHE_WIDTH, 2.0), 2, writer.generation("e"))
        hit = reader.get("v1", "e")
        assert hit is not None and hit[1] == 2 and hit[0][0] == 2.0
        assert os.stat(path(cache_name)).st_ino != old_inode


def test_a_generation_read_before_a_drop_is_stale_after_it(cache_name):
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as cache:
        before = cache.generations(["e"])
        drop(cache_name)
        # a vector computed from data read before the drop must not enter the new segment
        assert not cache.put_many(
            "v1", ["e"], np.ones((1, CACHE_WIDTH)), np.array([1]), before
        ).any()
        assert cache.get("v1", "e") is None


def test_a_truncated_segment_is_replaced_not_a_start_up_error(cache_name):
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as cache:
        cache.put("v1", "e", np.ones(CACHE_WIDTH), 1, cache.generation("e"))
        size = cache.memory_bytes
    os.truncate(path(cache_name), size // 2)  # damaged behind everybody's back
    with FeatureCache.open(cache_name, 32, 1000, CACHE_WIDTH, CACHE_VERSIONS) as fresh:
        assert fresh.created
        assert fresh.get("v1", "e") is None
        assert os.path.getsize(path(cache_name)) == size
