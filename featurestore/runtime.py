"""Process-level tuning shared by the compute roles."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20
RETURN_THRESHOLD_BYTES = 256 << 10


def _mallopt(settings: tuple[tuple[int, int], ...]) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in settings:
        libc.mallopt(option, value)


def return_large_blocks() -> None:
    """The opposite, for the broker: its large blocks are replies of other processes' making
    that come and go with clients, so each is mapped fresh and unmapped on free (a fixed
    threshold also stops glibc from raising it), and memory goes back to the baseline once a
    client is gone."""
    _mallopt(
        ((M_MMAP_THRESHOLD, RETURN_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, RETURN_THRESHOLD_BYTES))
    )


def keep_large_arrays_in_heap() -> None:
    """glibc maps every block above a (dynamic, at most 32 MiB) threshold fresh from the
    kernel and unmaps it on free, so each batch computation pays page faults for its
    multi-MB NumPy temporaries again. Raising the thresholds lets freed blocks be reused.
    Memory stays bounded: the blocks are the same sizes call after call."""
    _mallopt(((M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)))
