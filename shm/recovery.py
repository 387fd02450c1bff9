"""Repair after a writer died (or raised) inside its critical section.

Called by the next writer, lock held, when it finds H_WRITER set. It trusts only what the
records themselves prove: a record is kept when its seq is even, its checksum holds and its
entry is of the entity's current generation; every other slot becomes free. Slot meta, the
free stack and the index are then rebuilt from the kept records. Idempotent: if the
repairer dies too, the next writer starts over.
"""

from __future__ import annotations

import numpy as np

from shm import records
from shm.keys import VersionTable
from shm.layout import (
    FREED_KEY_LEN,
    H_FREE_TOP,
    H_HIGH_WATER,
    H_RECOVERIES,
    KEY_MAX_BYTES,
)
from shm.writer import Writer


def recover(wr: Writer) -> None:
    v, w = wr.v, wr.w
    table = VersionTable(None, w)  # codes and salts from the header
    high = w[H_HIGH_WATER]
    torn = np.flatnonzero(v.seq[:high] & np.uint64(1))
    v.covered["key_len"][torn] = FREED_KEY_LEN
    v.seq[torn] += np.uint64(1)

    raw = v.covered_raw[:high].copy()
    rows = records.as_records(raw, v.covered.dtype)
    keep = records.intact(raw) & (rows["key_len"] <= KEY_MAX_BYTES) & table.known[rows["version"]]
    tags = rows["tag"].astype(np.uint64)
    gen_index = ((tags ^ table.salts[rows["version"]]) & np.uint64(wr.gen_mask)).astype(np.int64)
    keep &= rows["entry_gen"] == wr.current_generations(gen_index)

    slots = np.arange(high, dtype=np.int64)
    v.used[:high] = keep
    v.stored_at[:high] = rows["stored_at"]
    v.slot_gen[:high] = rows["entry_gen"]
    v.gen_index[:high] = gen_index
    v.tag[:high] = tags
    dropped = slots[~keep]
    v.seq[dropped] += np.uint64(1)
    v.covered["key_len"][dropped] = FREED_KEY_LEN  # unmatchable, like any freed record
    v.seq[dropped] += np.uint64(1)
    v.free[: len(dropped)] = dropped
    w[H_FREE_TOP] = len(dropped)
    wr.rebuild()
    w[H_RECOVERIES] += 1
