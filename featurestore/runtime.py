"""Process-level tuning shared by the compute roles."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_large_arrays_in_heap() -> None:
    """glibc maps every block above a (dynamic, at most 32 MiB) threshold fresh from the
    kernel and unmaps it on free, so each batch computation pays page faults for its
    multi-MB NumPy temporaries again. Raising the thresholds lets freed blocks be reused.
    Memory stays bounded: the blocks are the same sizes call after call."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
