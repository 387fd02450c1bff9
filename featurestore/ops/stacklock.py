"""One stack per DATA_DIR: a pid file held with an open-file-description lock.

`DATA_DIR/stack.pid` is locked (OFD write lock on byte 0, released by the kernel when the
holder dies, even by SIGKILL) by the root of a stack: `featurestore serve`, the test
launcher, or — when supervisord is run by hand — the broker. Its content names the holder
and the processes it started, as (pid, start ticks) pairs, so that a successor can tell its
predecessor's orphans from unrelated processes that reuse their pids (never by name).

Roles started by a root carry FS_STACK_OWNER=<root pid> and refuse to run when the lock is
not held by that root: a second stack on the same DATA_DIR gets a message naming the first.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from featurestore.ops.processes import is_same_process
from shm.procfs import process_start_ticks

LOCK_FILENAME = "stack.pid"
OWNER_VARIABLE = "FS_STACK_OWNER"
_FLOCK = struct.Struct("@hhqqi4x")  # struct flock: l_type, l_whence, l_start, l_len, l_pid
MAX_RECORD_BYTES = 1 << 16


class StackBusy(Exception):
    """The DATA_DIR is in use by another stack (or its orphans): the message names them."""


@dataclass
class StackRecord:
    """What the lock file says: the holder, and the processes of its stack."""

    owner_pid: int
    owner_start: int
    label: str
    processes: dict[str, list[int]] = field(default_factory=dict)  # name -> [pid, start]

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> StackRecord | None:
        try:
            data = json.loads(raw.decode())
            return cls(
                int(data["owner_pid"]),
                int(data["owner_start"]),
                str(data["label"]),
                {str(k): [int(v[0]), int(v[1])] for k, v in data.get("processes", {}).items()},
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return None  # empty (released) or unreadable: names nobody

    def live_processes(self) -> dict[str, int]:
        """The recorded processes still alive (same pid and start time), by name."""
        return {
            name: pid
            for name, (pid, start) in self.processes.items()
            if is_same_process(pid, start)
        }

    def describe(self) -> str:
        return f"{self.label} (pid {self.owner_pid})"


def lock_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / LOCK_FILENAME


def _lock(fd: int, kind: int, blocking: bool = False) -> bool:
    command = fcntl.F_OFD_SETLKW if blocking else fcntl.F_OFD_SETLK
    try:
        fcntl.fcntl(fd, command, _FLOCK.pack(kind, os.SEEK_SET, 0, 1, 0))
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _read(fd: int) -> StackRecord | None:
    return StackRecord.decode(os.pread(fd, MAX_RECORD_BYTES, 0))


class StackLock:
    """The lock of one DATA_DIR, held by this process once `acquire` succeeded."""

    def __init__(self, data_dir: str | Path) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path = lock_path(data_dir)
        self.fd: int | None = None
        self.record: StackRecord | None = None
        self.previous: StackRecord | None = None  # what a dead predecessor left behind

    def acquire(self, label: str) -> StackLock:
        """Take the lock or raise StackBusy naming the holder."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not _lock(fd, fcntl.F_WRLCK):
            holder = _read(fd)
            os.close(fd)
            who = holder.describe() if holder else "another process"
            raise StackBusy(f"DATA_DIR {self.path.parent} is in use by {who}")
        self.fd = fd
        self.previous = _read(fd)
        pid = os.getpid()
        self.record = StackRecord(pid, process_start_ticks(pid) or 0, label)
        self._write()
        return self

    def note(self, processes: dict[str, int]) -> None:
        """Record the stack's processes (name -> pid), with their start times."""
        assert self.record is not None, "acquire first"
        self.record.processes = {
            name: [pid, start]
            for name, pid in processes.items()
            if (start := process_start_ticks(pid)) is not None
        }
        self._write()

    def _write(self) -> None:
        data = self.record.encode() if self.record else b""
        os.pwrite(self.fd, data, 0)
        os.ftruncate(self.fd, len(data))

    def release(self) -> None:
        if self.fd is None:
            return
        self.record = None
        with contextlib.suppress(OSError):
            self._write()
        os.close(self.fd)  # closing the last descriptor releases the lock
        self.fd = None

    def __enter__(self) -> StackLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(data_dir: str | Path) -> StackRecord | None:
    """The record of whoever holds the DATA_DIR's lock now; None when nobody does."""
    try:
        fd = os.open(lock_path(data_dir), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        if _lock(fd, fcntl.F_RDLCK):  # a read lock is granted only when nobody writes
            return None
        return _read(fd) or StackRecord(0, 0, "an unknown process")
    finally:
        os.close(fd)


def check_owner(data_dir: str | Path, owner_pid: int) -> None:
    """Raise StackBusy unless the DATA_DIR's lock is held by `owner_pid` (this process's root)."""
    record = holder(data_dir)
    if record is None:
        raise StackBusy(f"DATA_DIR {data_dir} is not locked by this stack's root (pid {owner_pid})")
    if record.owner_pid != owner_pid:
        raise StackBusy(f"DATA_DIR {data_dir} is in use by {record.describe()}")


@contextlib.contextmanager
def claimed_stack(data_dir: str | Path, label: str, *, root_when_alone: bool = False):
    """Run a role inside its stack's claim on the DATA_DIR: started by a root (FS_STACK_OWNER
    set), check that the root holds the lock; started alone (supervisord by hand), the role
    that is the stack's single point (`root_when_alone`: the broker) holds it itself."""
    owner = os.environ.get(OWNER_VARIABLE)
    if owner:
        check_owner(data_dir, int(owner))
        yield
    elif root_when_alone:
        with StackLock(data_dir).acquire(label):
            yield
    else:
        yield
