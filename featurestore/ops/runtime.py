"""Process-level tuning shared by the compute roles."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def give_back_free_memory() -> None:
    """Return the heap's free pages to the kernel (glibc malloc_trim). For the broker after
    it dropped a large backlog: glibc keeps freed blocks for reuse, which is what makes
    repeated replies cheap, so the broker trims once when a client's backlog is let go
    rather than mapping every block afresh (that cost 40 % of its batch throughput)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def keep_large_arrays_in_heap() -> None:
    """glibc maps every block above a (dynamic, at most 32 MiB) threshold fresh from the
    kernel and unmaps it on free, so each batch computation pays page faults for its
    multi-MB NumPy temporaries again. Raising the thresholds lets freed blocks be reused.
    Memory stays bounded: the blocks are the same sizes call after call."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
