"""The ONE definition of the shared-memory cache segment: sizes, offsets, record format.

Segment ``/dev/shm/<CACHE_NAME>`` (a POSIX shm object, mapped with mmap; never through
``multiprocessing.shared_memory``, so no resource tracker ever learns of it or unlinks it).
All integers little-endian; every section starts on a 4 KiB boundary; sizes are fixed at
creation from (max_size N, width W) and nothing ever grows.

    header      512 u64 words (`H_*` below). The creator writes every field, then
                H_MAGIC, and H_READY = LAYOUT_VERSION last: the ready marker. Words
                H_SALTS + code (code 1..H_VERSION_COUNT) hold the version table: the salt
                of each version code's index tags (so any process, tools included, can
                recover and invalidate without knowing the versions' names). Words
                H_LEASE_MS, H_LEASE_UNTIL and H_HOLDER.. are the lease (below).
    counters    COUNTER_SLOTS x 16 u64: [owner pid, owner start ticks, COUNTERS...].
                Each attached FeatureCache owns one slot and is its only writer, so no
                increment is ever lost; a reader sums all slots. A slot whose owner is dead
                is taken over with its counts intact (they stay in the sum).
    gens        G u64: generation table indexed by crc32(entity_id) & (G-1), shared by all
                versions of an entity. Effective generation = gens[i] + H_EPOCH. Only
                writers change it (invalidate: gens[i] += 1; clear: H_EPOCH += 1).
    buckets     2 x B u64: two open-addressing hash indexes (linear probing), H_ACTIVE says
                which one readers use. Bucket = (tag << 32) | (slot + 2); 0 = empty,
                1 = tombstone. tag = crc32(entity_id) ^ salt(version); home = tag & (B-1).
                Deletion leaves a tombstone; when used + tombstones would pass B/2 the writer
                rebuilds into the other index and flips H_ACTIVE (one 8-byte store).
    slot meta   N entries each of: used u8, access_ns i64, stored_at_ms i64, gen u64,
                gen_index i64, tag u64, bucket i64, free-stack i64. Writer-side copies for
                eviction, statistics and rebuilds; readers only store access_ns.
    records     N x RECORD_BYTES, one per slot:
                  0  seq u64        seqlock: odd while a writer is inside the record
                  8  ---- covered by the checksum -----------------------------------
                     tag u32, key_len u16, version u8, pad u8, entry_gen u64,
                     stored_at_ms i64, as_of_ms i64, values W x f64
                  8+32+8W  check u64: adler32 of the covered bytes
                  ...      key: the entity id's UTF-8 bytes, zero padded to 256
                A freed record gets key_len = 0xFFFF (matches no key).

Read protocol (no lock, no write except access_ns): probe the active index for the tag;
for a candidate slot read seq s1 (odd: retry), copy the covered bytes, the check word and
compare the key bytes, read seq s2; s1 != s2: retry. The copy must name this (tag,
key_len, version) with equal key bytes, else the probe goes on; then adler32(copy) !=
check: retry (retries are bounded: 4 at once, then yielding the CPU for up to 2 ms, then a
miss; a writer killed inside a record leaves its seq odd until the next writer repairs it).
Finally the entry must carry the entity's current generation and satisfy
now_ms - stored_at_ms < ttl_ms (checked on every read, get and get_many alike). The seqlock
is sound on x86-TSO; the checksum also makes a torn copy detectable on weakly ordered CPUs
(Python has no memory barriers). adler32 rather than crc32: half the cost per get, and
get_many verifies 1,000 rows at once with two float matrix-vector products.

Write protocol: every writer holds the writer lock, an exclusive open-file-description
(OFD) fcntl lock on byte LOCK_WRITER of the segment itself (released by the kernel when
the holder dies; POSIX record locks would vanish on any close(), semaphores stay taken).
Inside, it stores its pid in H_WRITER and clears it last; a writer that finds H_WRITER set
knows the previous holder died mid-write and first recovers (shm/recovery.py): records with
an odd seq are freed; slot meta and the free stack are rebuilt from the records whose
checksum holds and whose generation is current; the index is rebuilt. A record write is
seq += 1, covered bytes + check (+ key), seq += 1; a new entry is published in the index
only after its record is complete. put is conditional on the entity's generation (read
before computing), checked under the lock.

Eviction: free slots first, then entries that are already dead (expired or of an old
generation), then the least recently used: the smallest access_ns within a window of
EVICTION_WINDOW slots starting at a rotating hand. access_ns is time.time_ns() of the last
hit (stored by readers, unlocked: a lost race only blurs recency) or of the write. With
N <= EVICTION_WINDOW this is exact LRU; above, a sampled LRU over 8,192 consecutive slots
(entries sit in slots in no particular age order, so the window is a random sample: its
oldest entry is, on average, within the oldest 1/8,192 of the cache).

Retirement: `drop` (and an opener that finds a ready segment of the wrong size) sets
H_RETIRED, then unlinks the name. Every FeatureCache checks H_RETIRED at the start of each
operation and, when set, re-attaches by name (creating the new segment if it is first), so
all processes of a stack move to the same new segment on their next access and no stale
hit survives a drop. H_EPOCH starts at a random value in every new segment, so generations
read from a retired segment never match a new one's (a vector computed before a drop is not
stored after it).

Lease (a near cache of a store that others write too): a segment created with
H_LEASE_MS > 0 serves hits only while its lease holds, i.e. while CLOCK_MONOTONIC (one clock
for every process of the host) is below H_LEASE_UNTIL; every get and get_many checks it
(one word, one clock read) and answers a miss otherwise. Its holder (one process that
follows the writes of the others and invalidates what they changed) renews it: when it has
applied every change committed before time C it stores C + H_LEASE_MS (in ns) in
H_LEASE_UNTIL. A new segment's lease is 0 (no hit until a holder took over), and a holder
that stalls, dies or loses its source lets it run out by itself: no hit is ever older than
H_LEASE_MS behind the writes. H_HOLDER .. H_HOLDER + HOLDER_WORDS - 1 are the holder's own
status words (its state, position...), which this library stores and never interprets; all
zero in a new segment. H_LEASE_MS is fixed at creation and checked on attach (0: hits need no
lease, the default of one host).

Creation: whoever opens first creates the file with O_CREAT|O_EXCL; everybody then takes
the OFD lock on byte LOCK_INIT (polling until `wait_s` runs out); whoever holds it and
finds no ready marker initialises (zero-fill, posix_fallocate so that the memory is
reserved now, header, ready marker last), so a creator that died half-way is simply
redone; then everybody validates the header against its own settings and maps the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from zlib import crc32

import numpy as np

LAYOUT_VERSION = 3  # 2: the version table in the header; 3: the lease
MAGIC = int.from_bytes(b"FSTCACHE", "little")
PAGE_BYTES = 4096
KEY_MAX_BYTES = 256
FREED_KEY_LEN = 0xFFFF  # key_len of a freed record: longer than any key
EVICTION_WINDOW = 8192  # slots examined per eviction; exact LRU at or below this size
COUNTER_SLOTS = 1024  # FeatureCache instances attached at once
COUNTER_WORDS = 16  # u64 words per counter slot (128 bytes: no false sharing)
COUNTERS = ("hits", "misses", "evictions", "expirations", "puts", "stale_puts", "invalidations")
C_PID, C_START = 0, 1  # owner words of a counter slot; counters follow
C_HITS, C_MISSES, C_EVICTIONS, C_EXPIRATIONS, C_PUTS, C_STALE, C_INVALIDATIONS = range(2, 9)
MIN_GENERATIONS = 1 << 16
MAX_GENERATIONS = 1 << 24
GENERATIONS_PER_ENTRY = 16  # so that an invalidation rarely shares a counter with another entity
BUCKETS_PER_ENTRY = 4  # live entries fill at most a quarter of an index
MIN_BUCKETS = 64

# Byte offsets of the OFD locks taken on the segment file itself.
LOCK_INIT = 0
LOCK_WRITER = 1

# Header words.
H_MAGIC = 0
H_READY = 1  # LAYOUT_VERSION once initialised; written last
H_WIDTH = 2
H_MAX_SIZE = 3
H_TTL_MS = 4
H_TOTAL_BYTES = 5
H_BUCKETS = 6
H_GENERATIONS = 7
H_RECORD_BYTES = 8
H_VERSIONS_CRC = 9
H_CREATED_MS = 10
H_EPOCH = 16  # added to every generation; clear() bumps it
H_ACTIVE = 17  # which bucket array readers probe (0 or 1)
H_FILLED = 18  # non-empty buckets (entries + tombstones) of the active array
H_FREE_TOP = 19  # entries on the free stack
H_HIGH_WATER = 20  # slots [0, high water) have been handed out at least once
H_HAND = 21  # start of the next eviction window
H_WRITER = 22  # pid of the writer inside its critical section, 0 outside
H_RECOVERIES = 23  # times a writer repaired a dead writer's half-done work
H_RETIRED = 24  # 1 once the segment is dropped or found damaged: everybody re-attaches by name
H_VERSION_COUNT = 25  # versions in the version table
H_LEASE_MS = 26  # 0: hits need no lease; else the lease's length in ms (constant)
H_LEASE_UNTIL = 27  # CLOCK_MONOTONIC ns below which hits may be served (leased segments)
H_HOLDER = 32  # first of the lease holder's HOLDER_WORDS status words
HOLDER_WORDS = 16
H_SALTS = 256  # word H_SALTS + code: the salt of version `code` (codes are 1-based)
HEADER_WORDS = 512
MAX_VERSIONS = HEADER_WORDS - H_SALTS - 1  # 255: a record's version code is one byte

# Record offsets (bytes from the record start) and the covered-part formats.
R_SEQ = 0
R_COVERED = 8
COVERED_HEAD = struct.Struct("<IHBxQqq")  # tag, key_len, version, entry_gen, stored_at, as_of
CHECK_FIELD = struct.Struct("<Q")  # adler32 of the covered bytes, in a word of its own


def covered_bytes(width: int) -> int:
    """Bytes of a record's covered part, without the check word."""
    return COVERED_HEAD.size + 8 * width


def covered_dtype(width: int) -> np.dtype:
    """The covered part followed by its check word, as one NumPy record (vectorised access)."""
    n = covered_bytes(width)
    return np.dtype(
        {
            "names": [
                "tag",
                "key_len",
                "version",
                "entry_gen",
                "stored_at",
                "as_of",
                "values",
                "check",
            ],
            "formats": ["<u4", "<u2", "u1", "<u8", "<i8", "<i8", ("<f8", (width,)), "<u8"],
            "offsets": [0, 4, 6, 8, 16, 24, 32, n],
            "itemsize": n + CHECK_FIELD.size,
        }
    )


def versions_crc(versions: tuple[str, ...]) -> int:
    """Fingerprint of the version table: version codes are positions in it."""
    return crc32(",".join(versions).encode())


def version_salt(version: str) -> int:
    """The salt of a version's index tags (crc32: the same in every process)."""
    return crc32(f"feature-version:{version}".encode())


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class Layout:
    """Sizes and byte offsets of every section, derived from (max_size, width) alone."""

    max_size: int
    width: int
    n_buckets: int
    n_generations: int
    record_bytes: int
    key_offset: int  # within a record
    check_offset: int  # within a record
    counters_offset: int
    generations_offset: int
    buckets_offset: int
    meta_offset: int
    records_offset: int
    total_bytes: int

    @classmethod
    def compute(cls, max_size: int, width: int) -> Layout:
        if max_size < 1 or max_size > (1 << 31) - 4:
            raise ValueError(f"max_size must be in [1, 2**31 - 4], got {max_size}")
        if not 1 <= width <= 4096:
            raise ValueError(f"width must be in [1, 4096], got {width}")
        n = max_size
        n_buckets = max(MIN_BUCKETS, _pow2_at_least(BUCKETS_PER_ENTRY * n))
        n_generations = min(
            MAX_GENERATIONS, max(MIN_GENERATIONS, _pow2_at_least(GENERATIONS_PER_ENTRY * n))
        )
        check_offset = R_COVERED + covered_bytes(width)
        key_offset = check_offset + CHECK_FIELD.size
        record_bytes = _round_up(key_offset + KEY_MAX_BYTES, 64)
        counters_offset = HEADER_WORDS * 8
        generations_offset = _round_up(
            counters_offset + COUNTER_SLOTS * COUNTER_WORDS * 8, PAGE_BYTES
        )
        buckets_offset = _round_up(generations_offset + 8 * n_generations, PAGE_BYTES)
        meta_offset = _round_up(buckets_offset + 2 * 8 * n_buckets, PAGE_BYTES)
        records_offset = _round_up(meta_offset + _round_up(n, 8) + 7 * 8 * n, PAGE_BYTES)
        total_bytes = _round_up(records_offset + n * record_bytes, PAGE_BYTES)
        return cls(
            max_size=n,
            width=width,
            n_buckets=n_buckets,
            n_generations=n_generations,
            record_bytes=record_bytes,
            key_offset=key_offset,
            check_offset=check_offset,
            counters_offset=counters_offset,
            generations_offset=generations_offset,
            buckets_offset=buckets_offset,
            meta_offset=meta_offset,
            records_offset=records_offset,
            total_bytes=total_bytes,
        )

    def meta_array_offset(self, k: int) -> int:
        """Offset of the k-th 8-byte slot-meta array (0 access_ns ... 6 free stack)."""
        return self.meta_offset + _round_up(self.max_size, 8) + 8 * self.max_size * k

    def header_fields(
        self, ttl_ms: int, versions: tuple[str, ...], lease_ms: int = 0
    ) -> dict[int, int]:
        """The constant header words a creator writes and an attacher checks."""
        if not 1 <= len(versions) <= MAX_VERSIONS or len(set(versions)) != len(versions):
            raise ValueError(f"versions must be 1 to {MAX_VERSIONS} distinct names")
        salts = {H_SALTS + code: version_salt(v) for code, v in enumerate(versions, 1)}
        return {
            H_VERSION_COUNT: len(versions),
            H_WIDTH: self.width,
            H_MAX_SIZE: self.max_size,
            H_TTL_MS: ttl_ms,
            H_TOTAL_BYTES: self.total_bytes,
            H_BUCKETS: self.n_buckets,
            H_GENERATIONS: self.n_generations,
            H_RECORD_BYTES: self.record_bytes,
            H_VERSIONS_CRC: versions_crc(versions),
            H_LEASE_MS: lease_ms,
            **salts,
        }


# Slot-meta arrays, in order after the `used` bytes.
M_ACCESS, M_STORED_AT, M_GEN, M_GEN_INDEX, M_TAG, M_BUCKET, M_FREE = range(7)
