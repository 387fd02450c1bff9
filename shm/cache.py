"""FeatureCache: the shared-memory feature cache that gateway workers, the broker and the
compute workers attach by name (layout and protocols: shm/layout.py).

Keys are (feature version, entity id); a value is the full float64 vector of that version
(`width` wide, NaN-padded) and the T it was computed as of. Reads take no lock; writes of
an entity are conditional on the generation read before computing it. A segment opened with
`lease_ms` > 0 serves hits only while its lease holds (`renew_lease`; layout.py: Lease).

Counting: each FeatureCache instance owns one counter slot, so one instance must not count
from several threads at once (asyncio tasks of one thread are fine); writes are
thread-safe. Open the cache in each process, after any fork.
"""

from __future__ import annotations

import os
import time
from zlib import adler32, crc32

import numpy as np

from shm import counters, records, segment, stats
from shm.errors import UnknownVersion
from shm.keys import VersionTable, encode_id, encode_ids, id_hashes, key_matrix
from shm.layout import (
    C_HITS,
    C_INVALIDATIONS,
    C_MISSES,
    C_PUTS,
    C_STALE,
    COUNTER_WORDS,
    COVERED_HEAD,
    EVICTION_WINDOW,
    H_ACTIVE,
    H_EPOCH,
    H_HOLDER,
    H_LEASE_MS,
    H_LEASE_UNTIL,
    H_RETIRED,
    HOLDER_WORDS,
    KEY_MAX_BYTES,
    M_ACCESS,
    R_COVERED,
    Layout,
)
from shm.reader import ManyReader
from shm.views import Views
from shm.writer import Writer

READ_SPINS = 4  # immediate re-reads of a record a writer is inside, then yield the CPU
READ_GIVE_UP_NS = 2_000_000  # then count a miss (the writer may have died mid-write)
REATTACH_WAIT_S = 5.0  # for the segment that replaces a retired one to become ready
_UNPACK_HEAD = COVERED_HEAD.unpack_from
_VALUES_AT = COVERED_HEAD.size
_F64 = np.float64


class FeatureCache:
    """One process's attachment to a named cache segment. Create with `open`.

    Every operation first checks that the segment is still the current one (H_RETIRED); a
    dropped or damaged segment is left for the one now under the same name. One instance
    serves one thread (asyncio tasks of one thread are fine)."""

    def __init__(
        self,
        seg: segment.Segment,
        expected: segment.Expected | None = None,
        versions: tuple[str, ...] | None = None,
    ) -> None:
        self._expected = expected
        self._names = versions
        self._bind(seg)

    def _bind(self, seg: segment.Segment) -> None:
        layout = seg.layout
        self._segment = seg
        self._views = Views(seg.mm, layout)
        self._writer = Writer(seg, self._views)
        self._many = ManyReader(self._views, layout, seg.ttl_ms)
        self.name = seg.name
        self.max_size = layout.max_size
        self.width = layout.width
        self.ttl_ms = seg.ttl_ms
        self.created = seg.created
        self.memory_bytes = layout.total_bytes
        self._chunk = max(1, min(layout.max_size // 2, EVICTION_WINDOW // 4))
        # The read path works on word offsets into one memoryview of the segment.
        self._w = self._views.words
        self.versions = VersionTable(self._names, self._w)
        self._codes = self.versions.codes
        self._mm = seg.mm
        self._bucket_w = layout.buckets_offset // 8
        self._n_buckets = layout.n_buckets
        self._bucket_mask = layout.n_buckets - 1
        self._gen_w = layout.generations_offset // 8
        self._gen_mask = layout.n_generations - 1
        self._access_w = layout.meta_array_offset(M_ACCESS) // 8
        self._rec0 = layout.records_offset
        self._rec_bytes = layout.record_bytes
        self._key_off = layout.key_offset
        self._check_off = layout.check_offset
        with self._writer:
            self._row = counters.claim(self._views.counters)
        self._writer.set_counter_row(self._row)
        row_w = layout.counters_offset // 8 + self._row * COUNTER_WORDS
        self._hits_w = row_w + C_HITS
        self._misses_w = row_w + C_MISSES
        self.lease_ms = self._w[H_LEASE_MS]
        self._lease_ns = self.lease_ms * 1_000_000
        self._closed = False

    def _current(self) -> None:
        """Re-attach by name when this segment was retired (dropped, or found damaged), and
        retire it first when its file is no longer its size (truncated under us: touching
        the missing pages would kill this process with SIGBUS)."""
        if self._w[H_RETIRED] or os.fstat(self._segment.fd).st_size != self.memory_bytes:
            self._reattach()

    def verify(self) -> None:
        """The checks of `_current`, for processes to run on a timer (the broker's heartbeat):
        a damaged segment is replaced before anyone touches its missing pages."""
        self._current()

    def _reattach(self) -> None:
        name = self.name
        if os.fstat(self._segment.fd).st_size != self.memory_bytes:
            segment.retire(self._segment.fd, segment.segment_path(name))
        self._detach()
        self._bind(segment.open_segment(name, self._expected, REATTACH_WAIT_S))

    # -- opening and closing --------------------------------------------------------------
    @classmethod
    def open(
        cls,
        name: str,
        max_size: int,
        ttl_ms: int,
        width: int,
        versions: tuple[str, ...],
        *,
        wait_s: float = 5.0,
        lease_ms: int = 0,
    ) -> FeatureCache:
        """Create the segment `name`, or attach to it and check that it has this layout:
        vectors `width` wide of `versions` (in this order: a version's code is its place),
        hits under a lease of `lease_ms` (0: no lease)."""
        if ttl_ms < 1:
            raise ValueError(f"ttl_ms must be at least 1, got {ttl_ms}")
        if lease_ms < 0:
            raise ValueError(f"lease_ms must not be negative, got {lease_ms}")
        expected = segment.Expected.of(Layout.compute(max_size, width), ttl_ms, versions, lease_ms)
        seg = segment.open_segment(name, expected, wait_s)
        return cls._from_segment(seg, expected, versions)

    @classmethod
    def attach(cls, name: str, *, wait_s: float = 5.0) -> FeatureCache:
        """Attach to an existing segment, whatever its size and versions (for tools: stats,
        clear, invalidate; reads and writes by version name need `open`)."""
        return cls._from_segment(segment.open_segment(name, None, wait_s))

    @classmethod
    def _from_segment(
        cls,
        seg: segment.Segment,
        expected: segment.Expected | None = None,
        versions: tuple[str, ...] | None = None,
    ) -> FeatureCache:
        try:
            return cls(seg, expected, versions)
        except BaseException:
            seg.close()
            raise

    def close(self) -> None:
        """Detach. Never unlinks the segment (see `drop`)."""
        if self._closed:
            return
        self._detach()

    def _detach(self) -> None:
        self._closed = True
        try:
            with self._writer:
                counters.release(self._views.counters, self._row)
        finally:
            self._views.release()
            self._segment.close()

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads (no lock) ------------------------------------------------------------------
    def get(
        self, version: str, entity_id: str, *, count: bool = True
    ) -> tuple[np.ndarray, int] | None:
        """(a copy of the full vector, its as_of_ms), or None; counts a hit or a miss
        (`count=False`: a peek; the caller counts with `count_lookups`)."""
        if self._w[H_RETIRED]:
            self._reattach()
        try:
            code, salt = self._codes[version]
        except KeyError:
            raise UnknownVersion(f"unknown feature version {version!r}") from None
        key = entity_id.encode()
        if len(key) > KEY_MAX_BYTES:
            raise ValueError(f"entity id longer than {KEY_MAX_BYTES} UTF-8 bytes")
        h = crc32(key)
        found = self._find(key, h ^ salt, code, h) if self.serving() else None
        if count:
            if found is None:
                self._w[self._misses_w] += 1
            else:
                self._w[self._hits_w] += 1
        return found

    def count_lookups(self, hits: int = 0, misses: int = 0) -> None:
        """Count lookups made with `count=False` (this process's counter slot)."""
        self._w[self._hits_w] += hits
        self._w[self._misses_w] += misses

    def _find(self, key: bytes, tag: int, code: int, h: int) -> tuple[np.ndarray, int] | None:
        w = self._w
        mask = self._bucket_mask
        base = self._bucket_w + w[H_ACTIVE] * self._n_buckets
        pos = tag & mask
        for _ in range(self._n_buckets):
            b = w[base + pos]
            if not b:
                return None
            if b >> 32 == tag and b & 0xFFFFFFFF >= 2:
                slot = (b & 0xFFFFFFFF) - 2
                got = self._read(slot, key, tag, code)
                if got is not False:
                    return got and self._accept(slot, h, got)
            pos = (pos + 1) & mask
        return None

    def _read(self, slot: int, key: bytes, tag: int, code: int) -> tuple | bool | None:
        """The record's (covered bytes, gen, stored_at, as_of) if it holds this key;
        False if it holds another; None if no clean copy could be had in time."""
        w, mm = self._w, self._mm
        off = self._rec0 + slot * self._rec_bytes
        seq_w = off >> 3
        check_w = (off + self._check_off) >> 3
        key_at = off + self._key_off
        tries = 0
        give_up_at = 0
        while True:
            before = w[seq_w]
            if not before & 1:
                covered = mm[off + R_COVERED : off + self._check_off]
                check = w[check_w]
                same_key = mm[key_at : key_at + len(key)] == key
                if w[seq_w] == before:
                    t, key_len, version, gen, stored_at, as_of = _UNPACK_HEAD(covered)
                    if t != tag or key_len != len(key) or version != code or not same_key:
                        return False
                    if adler32(covered) == check:
                        return covered, gen, stored_at, as_of
            tries += 1
            if tries > READ_SPINS:
                now = time.monotonic_ns()
                if not give_up_at:
                    give_up_at = now + READ_GIVE_UP_NS
                elif now > give_up_at:
                    return None
                os.sched_yield()

    def _accept(self, slot: int, h: int, got: tuple) -> tuple[np.ndarray, int] | None:
        """The entry read by `_read` if it is of the current generation and within the TTL."""
        covered, gen, stored_at, as_of = got
        w = self._w
        if gen != w[self._gen_w + (h & self._gen_mask)] + w[H_EPOCH]:
            return None
        now_ns = time.time_ns()
        if now_ns // 1_000_000 - stored_at >= self.ttl_ms:
            return None
        w[self._access_w + slot] = now_ns
        return np.frombuffer(covered, _F64, self.width, _VALUES_AT).copy(), as_of

    def get_many(
        self, version: str, entity_ids: list[str], *, count: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values m x width float64, NaN where missed; as_of_ms int64, -1 where missed;
        hit bool). Duplicates allowed; each lookup counts a hit or a miss."""
        self._current()
        code, salt = self.versions.code(version)
        keys = encode_ids(entity_ids)
        if not self.serving():
            values = np.full((len(keys), self.width), np.nan)
            if count:
                self.count_lookups(misses=len(keys))
            return values, np.full(len(keys), -1, dtype=np.int64), np.zeros(len(keys), bool)
        hashes = id_hashes(keys)
        values, as_of, hit, retry = self._many.lookup(code, salt, keys, hashes, time.time_ns())
        for i in retry.tolist():
            h = int(hashes[i])
            found = self._find(keys[i], h ^ salt, code, h)
            if found is not None:
                values[i], as_of[i], hit[i] = found[0], found[1], True
        if count:
            n_hits = int(np.count_nonzero(hit))
            self.count_lookups(hits=n_hits, misses=len(keys) - n_hits)
        return values, as_of, hit

    # -- the lease (layout.py: Lease) ------------------------------------------------------
    def serving(self) -> bool:
        """Whether hits may be served now: always without a lease, else while it holds."""
        return not self._lease_ns or time.monotonic_ns() < self._w[H_LEASE_UNTIL]

    def renew_lease(self, confirmed_ns: int) -> None:
        """The holder applied every change made before CLOCK_MONOTONIC `confirmed_ns`: hits
        may be served until `confirmed_ns` + lease_ms."""
        self._current()
        if self._lease_ns:
            self._w[H_LEASE_UNTIL] = confirmed_ns + self._lease_ns

    def lease_until_ns(self) -> int:
        """CLOCK_MONOTONIC ns below which hits are served (0: never renewed)."""
        self._current()
        return self._w[H_LEASE_UNTIL]

    def holder_words(self) -> list[int]:
        """The lease holder's HOLDER_WORDS status words (all 0 in a new segment)."""
        self._current()
        return [self._w[H_HOLDER + i] for i in range(HOLDER_WORDS)]

    def set_holder_words(self, words: dict[int, int]) -> None:
        """Store some of the holder's status words (index -> value); the holder only."""
        self._current()
        for index, value in words.items():
            if not 0 <= index < HOLDER_WORDS:
                raise IndexError(f"holder word {index} (0 ... {HOLDER_WORDS - 1})")
            self._w[H_HOLDER + index] = value

    def generation(self, entity_id: str) -> int:
        """The entity's generation; read it BEFORE reading the data a vector is computed from."""
        self._current()
        w = self._w
        return w[self._gen_w + (crc32(encode_id(entity_id)) & self._gen_mask)] + w[H_EPOCH]

    def generations(self, entity_ids: list[str]) -> np.ndarray:
        self._current()
        hashes = id_hashes(encode_ids(entity_ids))
        index = (hashes & np.uint64(self._gen_mask)).astype(np.int64)
        return self._views.gens[index] + np.uint64(self._w[H_EPOCH])

    # -- writes (writer lock) -------------------------------------------------------------
    def put(
        self, version: str, entity_id: str, vector: np.ndarray, as_of_ms: int, generation: int
    ) -> bool:
        """Store the vector unless the entity was invalidated since `generation` was read."""
        self._current()
        code, salt = self.versions.code(version)
        key = encode_id(entity_id)
        values = self._full_rows(np.asarray(vector, dtype=_F64).reshape(1, -1))[0]
        h = crc32(key)
        tag, gen_index = h ^ salt, h & self._gen_mask
        now_ms = time.time_ns() // 1_000_000
        covered = records.pack_one(
            tag, len(key), code, gen=generation, stored_at=now_ms, as_of=as_of_ms, values=values
        )
        with self._writer as wr:
            if not wr.generation_ok(gen_index, generation):
                wr.count(C_STALE)
                return False
            wr.store_one(key, tag, code, covered, (now_ms, generation, gen_index))
            wr.count(C_PUTS)
        return True

    def put_many(
        self,
        version: str,
        entity_ids: list[str],
        values: np.ndarray,
        as_of_ms: np.ndarray,
        generations: np.ndarray,
    ) -> np.ndarray:
        """Store many vectors, each unless its entity was invalidated since its generation
        was read; returns which were stored. A later row of the same key overwrites."""
        self._current()
        code, salt = self.versions.code(version)
        keys = encode_ids(entity_ids)
        m = len(keys)
        if m == 0:
            return np.zeros(0, dtype=bool)
        matrix = self._full_rows(np.asarray(values, dtype=_F64).reshape(m, -1))
        gens = np.asarray(generations, dtype=np.uint64).reshape(m)
        hashes = id_hashes(keys)
        tags = hashes ^ np.uint64(salt)
        gen_index = (hashes & np.uint64(self._gen_mask)).astype(np.int64)
        lengths = np.fromiter(map(len, keys), np.int64, m)
        now_ms = time.time_ns() // 1_000_000
        rows = records.pack_many(
            self._views.covered.dtype,
            {
                "tag": tags.astype(np.uint32),
                "key_len": lengths,
                "version": code,
                "entry_gen": gens,
                "stored_at": now_ms,
                "as_of": np.asarray(as_of_ms, dtype=np.int64).reshape(m),
                "values": matrix,
            },
        )
        keymat = key_matrix(keys)
        with self._writer as wr:
            ok = wr.current_generations(gen_index) == gens
            wr.count(C_STALE, m - int(np.count_nonzero(ok)))
            last = {keys[i]: i for i in np.flatnonzero(ok).tolist()}
            chosen = np.fromiter(last.values(), np.int64, len(last))
            for start in range(0, len(chosen), self._chunk):
                at = chosen[start : start + self._chunk]
                wr.store_many(
                    code,
                    rows[at],
                    keys=keymat[at],
                    tags=tags[at],
                    gen_index=gen_index[at],
                    lengths=lengths[at],
                    now_ms=now_ms,
                )
            wr.count(C_PUTS, int(np.count_nonzero(ok)))
        return ok

    def invalidate(self, entity_id: str) -> None:
        """Drop every version of the entity and bump its generation."""
        self.invalidate_many([entity_id])

    def invalidate_many(self, entity_ids: list[str]) -> None:
        self._current()
        keys = encode_ids(entity_ids)
        hashes = id_hashes(keys)
        keymat = key_matrix(keys)
        lengths = np.fromiter(map(len, keys), np.int64, len(keys))
        gen_index = (hashes & np.uint64(self._gen_mask)).astype(np.int64)
        with self._writer as wr:
            now_ms = time.time_ns() // 1_000_000
            found = [
                wr.find_many(keymat, hashes ^ np.uint64(salt), code, lengths)
                for code, salt in self.versions.pairs
            ]
            slots = np.unique(np.concatenate(found))
            slots = slots[slots >= 0]
            wr.account_removed(slots, now_ms, C_INVALIDATIONS)
            wr.bump_generations(gen_index)
            wr.free(slots)

    def clear(self) -> int:
        """Remove every entry and bump every generation; returns the live entries removed."""
        self._current()
        with self._writer as wr:
            return wr.clear(time.time_ns() // 1_000_000)

    def stats(self) -> dict:
        self._current()
        with self._writer as wr:
            return stats.snapshot(wr, time.time_ns() // 1_000_000, self.memory_bytes)

    def _full_rows(self, matrix: np.ndarray) -> np.ndarray:
        """Vectors padded with NaN to the cache width."""
        if matrix.shape[1] > self.width:
            raise ValueError(f"vector of {matrix.shape[1]} values; the cache holds {self.width}")
        if matrix.shape[1] == self.width:
            return matrix
        full = np.full((len(matrix), self.width), np.nan)
        full[:, : matrix.shape[1]] = matrix
        return full


def drop(name: str) -> bool:
    """Unlink the cache segment `name`; True if it existed. Processes still attached keep
    their (now anonymous) mapping; the next open creates a fresh segment."""
    return segment.drop(name)
