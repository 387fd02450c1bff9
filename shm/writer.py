"""Every change to the segment, made inside the writer's critical section (see layout.py).

`with writer:` takes the in-process thread lock, then the OFD writer lock; if the previous
holder died inside (H_WRITER still set) it first repairs the segment (shm/recovery.py),
then marks itself inside. A clean exit clears H_WRITER; an exception leaves it set so that
the next writer repairs whatever was half done.
"""

from __future__ import annotations

import os
import struct
import threading
import time

import numpy as np

from shm import index, records
from shm.errors import CacheError
from shm.layout import (
    C_EVICTIONS,
    C_EXPIRATIONS,
    COUNTER_WORDS,
    EVICTION_WINDOW,
    FREED_KEY_LEN,
    H_ACTIVE,
    H_EPOCH,
    H_FILLED,
    H_FREE_TOP,
    H_HAND,
    H_HIGH_WATER,
    H_WRITER,
    KEY_MAX_BYTES,
    LOCK_WRITER,
    R_COVERED,
)
from shm.lock import OFDLock
from shm.segment import Segment
from shm.views import Views

_KEY_LEN_VERSION = struct.Struct("<HB")
_KEY_LEN_AT = R_COVERED + 4
INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
PROTECTED = 2  # `used` value of slots a batch is rewriting: never chosen as victims


class Writer:
    """Write-side operations on one mapped segment. Use only inside `with writer:`."""

    def __init__(self, segment: Segment, views: Views) -> None:
        layout = segment.layout
        self.mm = segment.mm
        self.v = views
        self.w = views.words
        self.n = layout.max_size
        self.ttl_ms = segment.ttl_ms
        self.gen_mask = layout.n_generations - 1
        self.bucket_mask = layout.n_buckets - 1
        self.n_buckets = layout.n_buckets
        self.rec0 = layout.records_offset
        self.rec_bytes = layout.record_bytes
        self.key_off = layout.key_offset
        self.gen_w = layout.generations_offset // 8
        self.bucket_w = layout.buckets_offset // 8
        self.counter_w = layout.counters_offset // 8
        self.row_w = -1  # first word of this instance's counter slot, once claimed
        self.pid = os.getpid()
        self.thread_lock = threading.Lock()
        self.ofd_lock = OFDLock(segment.fd, LOCK_WRITER)

    # -- the critical section -------------------------------------------------------------
    def __enter__(self) -> Writer:
        if os.getpid() != self.pid:  # a forked child would share our lock and counter slot
            raise CacheError("this FeatureCache was opened before a fork: open one per process")
        self.thread_lock.acquire()
        try:
            self.ofd_lock.acquire()
            try:
                if self.w[H_WRITER]:
                    from shm.recovery import recover

                    recover(self)
                self.w[H_WRITER] = self.pid
            except BaseException:
                self.ofd_lock.release()
                raise
        except BaseException:
            self.thread_lock.release()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.w[H_WRITER] = 0
        self.ofd_lock.release()
        self.thread_lock.release()

    def set_counter_row(self, row: int) -> None:
        self.row_w = self.counter_w + row * COUNTER_WORDS

    def count(self, column: int, n: int = 1) -> None:
        if n:
            self.w[self.row_w + column] += int(n)

    # -- generations ----------------------------------------------------------------------
    def generation_ok(self, gen_index: int, generation: int) -> bool:
        return self.w[self.gen_w + gen_index] + self.w[H_EPOCH] == generation

    def current_generations(self, gen_index: np.ndarray) -> np.ndarray:
        return self.v.gens[gen_index] + np.uint64(self.w[H_EPOCH])

    def bump_generations(self, gen_index: np.ndarray) -> None:
        self.v.gens[np.unique(gen_index)] += np.uint64(1)

    # -- lookups (records are stable while the lock is held) ------------------------------
    def find_one(self, key: bytes, tag: int, code: int) -> int:
        w, mm, mask = self.w, self.mm, self.bucket_mask
        base = self.bucket_w + w[H_ACTIVE] * self.n_buckets
        pos = tag & mask
        for _ in range(self.n_buckets):
            b = w[base + pos]
            if not b:
                return -1
            slot = (b & 0xFFFFFFFF) - index.SLOT_BIAS
            if b >> 32 == tag and slot >= 0:
                off = self.rec0 + slot * self.rec_bytes
                key_len, version = _KEY_LEN_VERSION.unpack_from(mm, off + _KEY_LEN_AT)
                key_at = off + self.key_off
                if key_len == len(key) and version == code and mm[key_at : key_at + key_len] == key:
                    return slot
            pos = (pos + 1) & mask
        return -1

    def find_many(
        self, keys: np.ndarray, tags: np.ndarray, code: int, lengths: np.ndarray
    ) -> np.ndarray:
        """Slots holding (code, keys[i]) (rows of key_matrix), -1 where absent."""
        key_len, version = self.v.covered["key_len"], self.v.covered["version"]
        stored = self.v.keys

        def same_key(rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
            return (
                (key_len[slots] == lengths[rows])
                & (version[slots] == code)
                & (stored[slots] == keys[rows]).all(axis=1)
            )

        return index.probe(self.active_buckets(), tags, same_key)

    def active_buckets(self) -> np.ndarray:
        return self.v.buckets[self.w[H_ACTIVE]]

    # -- the fate of removed entries ------------------------------------------------------
    def classify(self, slots: np.ndarray, now_ms: int) -> tuple[np.ndarray, np.ndarray]:
        """(valid: of the entity's current generation, expired: past the TTL)."""
        v = self.v
        valid = v.slot_gen[slots] == self.current_generations(v.gen_index[slots])
        expired = v.stored_at[slots] <= now_ms - self.ttl_ms
        return valid, expired

    def account_removed(self, slots: np.ndarray, now_ms: int, live_counter: int | None) -> int:
        """Count removed entries: expired ones as expirations, live ones in `live_counter`.
        Returns the number of live ones."""
        valid, expired = self.classify(slots, now_ms)
        live = int(np.count_nonzero(valid & ~expired))
        self.count(C_EXPIRATIONS, np.count_nonzero(valid & expired))
        if live_counter is not None:
            self.count(live_counter, live)
        return live

    def expired_one(self, slot: int, now_ms: int) -> bool:
        """Whether the entry in `slot` is of the current generation but past the TTL."""
        v, w = self.v, self.w
        valid = v.slot_gen[slot] == w[self.gen_w + int(v.gen_index[slot])] + w[H_EPOCH]
        return bool(valid and v.stored_at[slot] <= now_ms - self.ttl_ms)

    # -- slots ----------------------------------------------------------------------------
    def free(self, slots: np.ndarray) -> None:
        """Remove entries: out of the index, records made unmatchable, slots on the free stack."""
        v = self.v
        index.tombstone(self.active_buckets(), v.bucket[slots])
        v.seq[slots] += np.uint64(1)
        v.covered["key_len"][slots] = FREED_KEY_LEN
        v.seq[slots] += np.uint64(1)
        v.used[slots] = 0
        top = self.w[H_FREE_TOP]
        v.free[top : top + len(slots)] = slots
        self.w[H_FREE_TOP] = top + len(slots)

    def allocate(self, k: int, now_ms: int) -> np.ndarray:
        """k slots for new entries: free ones, never used ones, then evicted ones."""
        w = self.w
        top = w[H_FREE_TOP]
        take = min(k, top)
        parts = [self.v.free[top - take : top].copy()]
        w[H_FREE_TOP] = top - take
        high = w[H_HIGH_WATER]
        fresh = min(k - take, self.n - high)
        parts.append(np.arange(high, high + fresh, dtype=np.int64))
        w[H_HIGH_WATER] = high + fresh
        rest = k - take - fresh
        if rest:
            victims = self.victims(rest, now_ms)
            self.account_removed(victims, now_ms, C_EVICTIONS)
            index.tombstone(self.active_buckets(), self.v.bucket[victims])
            parts.append(victims)
        return np.concatenate(parts)

    def victims(self, k: int, now_ms: int) -> np.ndarray:
        """The k entries to evict: dead ones first, then the least recently used, within
        a window of EVICTION_WINDOW slots from the rotating hand (the whole cache if smaller)."""
        v, n = self.v, self.n
        if n <= EVICTION_WINDOW:
            window = np.arange(n)
        else:
            hand = self.w[H_HAND] % n
            window = (hand + np.arange(EVICTION_WINDOW)) % n
            self.w[H_HAND] = (hand + EVICTION_WINDOW // 2) % n
        valid, expired = self.classify(window, now_ms)
        score = np.where(valid & ~expired, v.access[window], INT64_MIN)
        score[v.used[window] != 1] = INT64_MAX
        pick = np.argpartition(score, k - 1)[:k] if k < len(window) else np.arange(len(window))
        victims = window[pick]
        if (v.used[victims] != 1).any():
            raise CacheError(f"internal: no {k} evictable entries among {len(window)} slots")
        return victims

    # -- records --------------------------------------------------------------------------
    def write_one(self, slot: int, covered: bytes, key: bytes, meta: tuple[int, int, int]) -> None:
        """Seqlock-write one record: covered bytes + check word and the zero-padded key."""
        w, mm, v = self.w, self.mm, self.v
        off = self.rec0 + slot * self.rec_bytes
        seq_w = off >> 3
        seq = w[seq_w]
        w[seq_w] = seq + 1
        mm[off + R_COVERED : off + R_COVERED + len(covered)] = covered
        mm[off + self.key_off : off + self.key_off + KEY_MAX_BYTES] = key.ljust(
            KEY_MAX_BYTES, b"\0"
        )
        w[seq_w] = seq + 2
        stored_at, gen, gen_index = meta
        v.used[slot] = 1
        v.access[slot] = time.time_ns()
        v.stored_at[slot] = stored_at
        v.slot_gen[slot] = gen
        v.gen_index[slot] = gen_index

    def write_many(
        self, slots: np.ndarray, raw: np.ndarray, keys: np.ndarray, gen_index: np.ndarray
    ) -> None:
        """Seqlock-write many records: raw covered rows (records.pack_many), key_matrix rows."""
        v = self.v
        rows = records.as_records(raw, v.covered.dtype)
        v.seq[slots] += np.uint64(1)
        v.covered_raw[slots] = raw
        v.keys[slots] = keys
        v.seq[slots] += np.uint64(1)
        v.used[slots] = 1
        v.access[slots] = time.time_ns()
        v.stored_at[slots] = rows["stored_at"]
        v.slot_gen[slots] = rows["entry_gen"]
        v.gen_index[slots] = gen_index

    # -- the index ------------------------------------------------------------------------
    def publish(self, slots: np.ndarray, tags: np.ndarray) -> None:
        """Enter complete records into the index (rebuilding first when it would pass half full)."""
        v, w = self.v, self.w
        v.tag[slots] = tags
        if w[H_FILLED] + len(slots) > self.n_buckets // 2:
            self.rebuild()  # indexes every used slot, these included
            return
        v.bucket[slots] = index.insert(self.active_buckets(), tags, slots)
        w[H_FILLED] += len(slots)

    def rebuild(self) -> None:
        """Index every used slot afresh in the spare bucket array, then flip H_ACTIVE."""
        v, w = self.v, self.w
        spare = 1 - w[H_ACTIVE]
        buckets = v.buckets[spare]
        buckets[:] = index.EMPTY
        live = np.flatnonzero(v.used[: w[H_HIGH_WATER]] != 0)
        v.bucket[live] = index.insert(buckets, v.tag[live], live)
        w[H_FILLED] = len(live)
        w[H_ACTIVE] = spare

    # -- whole operations -----------------------------------------------------------------
    def store_one(
        self, key: bytes, tag: int, code: int, covered: bytes, meta: tuple[int, int, int]
    ) -> None:
        """Write one entry: in place if the key is present, else in a new slot."""
        now_ms = meta[0]
        slot = self.find_one(key, tag, code)
        if slot >= 0:
            if self.expired_one(slot, now_ms):
                self.count(C_EXPIRATIONS)
            self.write_one(slot, covered, key, meta)
            return
        top = self.w[H_FREE_TOP]
        high = self.w[H_HIGH_WATER]
        if top:
            slot = int(self.v.free[top - 1])
            self.w[H_FREE_TOP] = top - 1
        elif high < self.n:
            slot = high
            self.w[H_HIGH_WATER] = high + 1
        else:
            slot = int(self.allocate(1, now_ms)[0])
        self.write_one(slot, covered, key, meta)
        self.publish_one(slot, tag)

    def publish_one(self, slot: int, tag: int) -> None:
        w, v = self.w, self.v
        v.tag[slot] = tag
        if w[H_FILLED] + 1 > self.n_buckets // 2:
            self.rebuild()  # indexes every used slot, this one included
            return
        base = self.bucket_w + w[H_ACTIVE] * self.n_buckets
        pos = tag & self.bucket_mask
        while w[base + pos] != index.EMPTY:
            pos = (pos + 1) & self.bucket_mask
        w[base + pos] = (tag << 32) | (slot + index.SLOT_BIAS)
        v.bucket[slot] = pos
        w[H_FILLED] += 1

    def store_many(
        self,
        code: int,
        rows: np.ndarray,
        *,
        keys: np.ndarray,
        tags: np.ndarray,
        gen_index: np.ndarray,
        lengths: np.ndarray,
        now_ms: int,
    ) -> None:
        """Write entries of distinct keys (at most max_size // 2 of them)."""
        slots = self.find_many(keys, tags, code, lengths)
        present = slots >= 0
        replaced = slots[present]
        self.account_removed(replaced, now_ms, None)
        self.v.used[replaced] = PROTECTED
        new = ~present
        slots[new] = self.allocate(int(np.count_nonzero(new)), now_ms)
        self.write_many(slots, rows, keys, gen_index)
        self.publish(slots[new], tags[new])

    def clear(self, now_ms: int) -> int:
        """Free every entry and bump every generation (H_EPOCH); returns the live ones."""
        used = np.flatnonzero(self.v.used[: self.w[H_HIGH_WATER]] != 0)
        live = self.account_removed(used, now_ms, None)
        self.w[H_EPOCH] += 1
        self.free(used)
        self.rebuild()
        return live
