"""The open-addressing hash index (linear probing, tombstones), vectorised over many keys.

Bucket = (tag << 32) | (slot + SLOT_BIAS); EMPTY ends a probe chain, TOMBSTONE does not.
Writers only ever turn EMPTY into an entry and an entry into TOMBSTONE, so a lock-free
reader probing concurrently sees at worst a stale chain: a false miss, never a wrong slot
(the slot's key is compared anyway). Tombstones go away when the writer rebuilds into the
spare array and flips H_ACTIVE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EMPTY = 0
TOMBSTONE = 1
SLOT_BIAS = 2
LOW32 = np.uint64(0xFFFFFFFF)
SHIFT32 = np.uint64(32)

Verify = Callable[[np.ndarray, np.ndarray], np.ndarray]


def pack(tags: np.ndarray, slots: np.ndarray) -> np.ndarray:
    return (tags.astype(np.uint64) << SHIFT32) | (slots.astype(np.uint64) + np.uint64(SLOT_BIAS))


def probe(buckets: np.ndarray, tags: np.ndarray, verify: Verify | None = None) -> np.ndarray:
    """For each tag, the slot of the first entry with that tag that `verify(rows, slots)`
    accepts (all, without `verify`), or -1 when the chain ends first."""
    mask = len(buckets) - 1
    slots = np.full(len(tags), -1, dtype=np.int64)
    todo = np.arange(len(tags))
    want = tags.astype(np.uint64)
    pos = (want & np.uint64(mask)).astype(np.int64)
    for _ in range(len(buckets)):
        got = buckets[pos]
        cand = ((got >> SHIFT32) == want) & ((got & LOW32) >= SLOT_BIAS)
        if verify is not None and cand.any():
            at = np.flatnonzero(cand)
            cand[at[~verify(todo[at], slot_of(got[at]))]] = False
        slots[todo[cand]] = slot_of(got[cand])
        going = ~cand & (got != EMPTY)
        if not going.any():
            break
        todo, want, pos = todo[going], want[going], (pos[going] + 1) & mask
    return slots


def slot_of(packed: np.ndarray) -> np.ndarray:
    return (packed & LOW32).astype(np.int64) - SLOT_BIAS


def insert(buckets: np.ndarray, tags: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """Put (tag, slot) entries into EMPTY buckets; the keys must not be in the index yet.
    Returns the bucket position of each."""
    mask = np.uint64(len(buckets) - 1)
    packed = pack(tags, slots)
    placed = np.full(len(tags), -1, dtype=np.int64)
    todo = np.arange(len(tags))
    pos = (tags.astype(np.uint64) & mask).astype(np.int64)
    for _ in range(len(buckets) + len(tags)):
        if len(todo) == 0:
            break
        free = buckets[pos] == EMPTY
        if free.any():
            free_at = np.flatnonzero(free)
            _, first = np.unique(pos[free_at], return_index=True)
            winners = free_at[first]
            buckets[pos[winners]] = packed[todo[winners]]
            placed[todo[winners]] = pos[winners]
            keep = np.ones(len(todo), bool)
            keep[winners] = False
            advance = ~free  # losers of a tie retry the same bucket, now taken
            todo, pos, advance = todo[keep], pos[keep], advance[keep]
        else:
            advance = np.ones(len(todo), bool)
        pos = np.where(advance, (pos + 1) & int(mask), pos)
    return placed


def tombstone(buckets: np.ndarray, positions: np.ndarray) -> None:
    buckets[positions] = TOMBSTONE
