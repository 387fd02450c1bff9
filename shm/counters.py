"""Per-instance counter slots in shared memory: one writer per slot, summed on read.

`NumPy +=` on shared memory is not atomic, and neither is anything else in Python, so no
counter is ever shared: every attached FeatureCache owns one slot (claimed under the
writer lock) and is its only writer. A reader sums the column over all slots. When an owner
dies its counts stay where they are; the next instance to claim the slot keeps adding on
top, so the sum never goes down and no increment is lost.
"""

from __future__ import annotations

import os

import numpy as np

from shm.errors import CacheError
from shm.layout import C_PID, C_START, COUNTERS
from shm.procfs import process_start_ticks

FIRST_COUNTER = 2


def claim(counters: np.ndarray) -> int:
    """Take a free slot, or one whose owner is dead, for this process (writer lock held)."""
    pid = os.getpid()
    start = process_start_ticks(pid) or 0
    owners = counters[:, C_PID]
    free = np.flatnonzero(owners == 0)
    row = int(free[0]) if len(free) else _dead_owner_row(counters)
    counters[row, C_START] = start
    counters[row, C_PID] = pid
    return row


def _dead_owner_row(counters: np.ndarray) -> int:
    for row in range(len(counters)):
        pid, start = int(counters[row, C_PID]), int(counters[row, C_START])
        if process_start_ticks(pid) != start:
            return row
    raise CacheError(f"all {len(counters)} counter slots of the cache belong to live processes")


def release(counters: np.ndarray, row: int) -> None:
    """Give the slot up (writer lock held); its counts stay in the sums."""
    counters[row, C_PID] = 0
    counters[row, C_START] = 0


def totals(counters: np.ndarray) -> dict[str, int]:
    sums = counters[:, FIRST_COUNTER : FIRST_COUNTER + len(COUNTERS)].sum(axis=0, dtype=np.uint64)
    return {name: int(value) for name, value in zip(COUNTERS, sums, strict=True)}
