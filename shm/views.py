"""NumPy and memoryview views of every section of a mapped segment (see shm/layout.py)."""

from __future__ import annotations

import mmap

import numpy as np

from shm.layout import (
    COUNTER_SLOTS,
    COUNTER_WORDS,
    KEY_MAX_BYTES,
    M_ACCESS,
    M_BUCKET,
    M_FREE,
    M_GEN,
    M_GEN_INDEX,
    M_STORED_AT,
    M_TAG,
    R_COVERED,
    R_SEQ,
    Layout,
    covered_dtype,
)


class Views:
    """Views of one mapping. Every attribute keeps the mmap exported: `release()` first."""

    def __init__(self, mm: mmap.mmap, layout: Layout) -> None:
        n = layout.max_size
        rec = layout.record_bytes
        self.words = memoryview(mm).cast("Q")  # the whole segment as u64 words
        self.header = self._array(mm, np.uint64, layout.counters_offset // 8, 0)
        self.counters = self._array(
            mm, np.uint64, COUNTER_SLOTS * COUNTER_WORDS, layout.counters_offset
        ).reshape(COUNTER_SLOTS, COUNTER_WORDS)
        self.gens = self._array(mm, np.uint64, layout.n_generations, layout.generations_offset)
        self.buckets = self._array(
            mm, np.uint64, 2 * layout.n_buckets, layout.buckets_offset
        ).reshape(2, layout.n_buckets)
        self.used = self._array(mm, np.uint8, n, layout.meta_offset)
        self.access = self._meta(mm, layout, M_ACCESS, np.int64)
        self.stored_at = self._meta(mm, layout, M_STORED_AT, np.int64)
        self.slot_gen = self._meta(mm, layout, M_GEN, np.uint64)
        self.gen_index = self._meta(mm, layout, M_GEN_INDEX, np.int64)
        self.tag = self._meta(mm, layout, M_TAG, np.uint64)
        self.bucket = self._meta(mm, layout, M_BUCKET, np.int64)
        self.free = self._meta(mm, layout, M_FREE, np.int64)
        base = layout.records_offset
        self.seq = np.ndarray((n,), np.uint64, mm, base + R_SEQ, (rec,))
        self.covered = np.ndarray((n,), covered_dtype(layout.width), mm, base + R_COVERED, (rec,))
        self.covered_raw = np.ndarray(
            (n, self.covered.dtype.itemsize), np.uint8, mm, base + R_COVERED, (rec, 1)
        )
        self.keys = np.ndarray(
            (n, KEY_MAX_BYTES // 8), np.uint64, mm, base + layout.key_offset, (rec, 8)
        )

    @staticmethod
    def _array(mm: mmap.mmap, dtype: type, count: int, offset: int) -> np.ndarray:
        return np.frombuffer(mm, dtype=dtype, count=count, offset=offset)

    def _meta(self, mm: mmap.mmap, layout: Layout, k: int, dtype: type) -> np.ndarray:
        return self._array(mm, dtype, layout.max_size, layout.meta_array_offset(k))

    def release(self) -> None:
        """Drop every view so that the mmap can be closed."""
        self.words.release()
        for name in list(vars(self)):
            setattr(self, name, None)
