"""Exclusive open-file-description (OFD) locks on single bytes of a file (Linux).

An OFD lock belongs to the open file description, not to the process: it is released when
the last descriptor of that description is closed, in particular when the holder dies,
even by SIGKILL. Unlike classic POSIX record locks it does not vanish when the same process
closes some other descriptor of the file, and unlike a POSIX semaphore it is never left
taken by a crashed holder. Two descriptions conflict even inside one process, so each
FeatureCache instance excludes every other; threads sharing one instance must add their
own in-process lock (FeatureCache does).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import time

from shm.errors import CacheTimeout

_FLOCK = struct.Struct("@hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
POLL_STEP_S = 0.001


class OFDLock:
    """An exclusive OFD lock on byte `offset` of the file open as `fd`."""

    def __init__(self, fd: int, offset: int) -> None:
        self._fd = fd
        self._lock = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, offset, 1, 0)
        self._unlock = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, offset, 1, 0)

    def acquire(self) -> None:
        """Block until granted (a dead holder's lock is released by the kernel)."""
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLKW, self._lock)

    def try_acquire(self) -> bool:
        try:
            fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, self._lock)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def acquire_within(self, wait_s: float, what: str) -> None:
        """Poll for the lock until `wait_s` has passed, then raise CacheTimeout."""
        deadline = time.monotonic() + wait_s
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise CacheTimeout(f"{what}: lock not granted within {wait_s:g} s")
            time.sleep(POLL_STEP_S)  # deadline-poll

    def release(self) -> None:
        fcntl.fcntl(self._fd, fcntl.F_OFD_SETLK, self._unlock)
