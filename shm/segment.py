"""Create, attach and drop the named cache segment: a POSIX shm object under /dev/shm.

The segment is opened with os.open + mmap rather than `multiprocessing.shared_memory`: on
Python 3.11 SharedMemory registers every segment it creates OR attaches with the resource
tracker, which unlinks it when that process exits (CPython gh-82300). Unregistering after
the fact leaves a window in which a SIGKILL still hands the segment to the tracker; never
registering leaves none. Nothing here unlinks the segment except `drop`.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import struct
import time
from dataclasses import dataclass

import numpy as np

from shm.errors import CacheError, CacheLayoutError, CacheTimeout
from shm.layout import (
    H_CREATED_MS,
    H_EPOCH,
    H_LEASE_MS,
    H_MAGIC,
    H_MAX_SIZE,
    H_READY,
    H_RETIRED,
    H_TOTAL_BYTES,
    H_TTL_MS,
    H_VERSIONS_CRC,
    H_WIDTH,
    HEADER_WORDS,
    LAYOUT_VERSION,
    LOCK_INIT,
    MAGIC,
    PAGE_BYTES,
    Layout,
)
from shm.lock import POLL_STEP_S, OFDLock

SHM_DIR = "/dev/shm"
NAME_MAX_CHARS = 200
_WORD = struct.Struct("<Q")
_FIELD_NAMES = {
    H_WIDTH: "width (the longest feature vector of the registry)",
    H_MAX_SIZE: "max_size (CACHE_MAX_SIZE)",
    H_TTL_MS: "ttl_ms (CACHE_TTL_MS)",
    H_VERSIONS_CRC: "a fingerprint of the served feature versions",
    H_LEASE_MS: "lease_ms (MAX_STALENESS_MS with a shared store, 0 without)",
}


@dataclass
class Segment:
    """An open, initialised and validated segment."""

    name: str
    fd: int
    mm: mmap.mmap
    layout: Layout
    ttl_ms: int
    created: bool  # this process initialised it

    def close(self) -> None:
        """Unmap and close; the caller must have dropped every view of `mm` first."""
        try:
            self.mm.close()
        except BufferError:  # someone still holds a view: the mapping goes with the last one
            pass
        finally:
            os.close(self.fd)


def segment_path(name: str) -> str:
    """The file of segment `name`; ValueError for a name that is not a plain file name."""
    if (
        not name
        or len(name) > NAME_MAX_CHARS
        or "/" in name
        or name in (".", "..")
        or not name.isascii()
        or not name.isprintable()
    ):
        raise ValueError(
            f"cache name {name!r}: expected 1-{NAME_MAX_CHARS} printable ASCII characters, no '/'"
        )
    return os.path.join(SHM_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(segment_path(name))


def drop(name: str) -> bool:
    """Retire segment `name` (attached processes re-attach on their next access) and unlink
    it; True if it existed."""
    path = segment_path(name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        retire(fd, path)
    finally:
        os.close(fd)
    return True


def retire(fd: int, path: str) -> None:
    """Mark the open segment retired (if its header is there) and unlink its name, unless
    the name already belongs to another file (someone re-created it)."""
    if os.fstat(fd).st_size >= HEADER_WORDS * 8:
        os.pwrite(fd, _WORD.pack(1), 8 * H_RETIRED)
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            os.unlink(path)
    except FileNotFoundError:
        pass


@dataclass(frozen=True)
class Expected:
    """What this process needs the segment to be: its layout, TTL and constant header words."""

    layout: Layout
    ttl_ms: int
    fields: dict[int, int]

    @classmethod
    def of(
        cls, layout: Layout, ttl_ms: int, versions: tuple[str, ...], lease_ms: int = 0
    ) -> Expected:
        return cls(layout, ttl_ms, layout.header_fields(ttl_ms, versions, lease_ms))

    @classmethod
    def from_header(cls, header: list[int]) -> Expected:
        """What a segment says it is (for tools that attach whatever it is)."""
        layout = Layout.compute(header[H_MAX_SIZE], header[H_WIDTH])
        return cls(layout, header[H_TTL_MS], {})


class _Damaged(CacheError):
    """A ready segment whose file is not the size its header says (truncated): retired."""


def open_segment(name: str, expected: Expected | None, wait_s: float) -> Segment:
    """Create-or-attach `name`. With `expected` None, attach only and adopt the segment's
    own layout (waiting, like everybody, for whoever initialises it). A damaged segment is
    retired and replaced by a new one."""
    deadline = time.monotonic() + wait_s
    while True:
        fd = _open_fd(segment_path(name), deadline, create=expected is not None)
        try:
            return _initialise_and_map(name, fd, expected, deadline)
        except _Damaged:
            os.close(fd)
            if expected is None or time.monotonic() >= deadline:
                raise
        except BaseException:
            os.close(fd)
            raise


def _open_fd(path: str, deadline: float, *, create: bool) -> int:
    """Create the file exclusively, or open the existing one."""
    flags = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
    while True:
        if create:
            try:
                return os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            if not create:
                raise CacheError(f"no cache segment {path}") from None
            if time.monotonic() >= deadline:  # dropped between the two calls, again and again
                raise CacheTimeout(f"{path}: could neither create nor open it") from None
            continue
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise CacheError(f"{path} is not a regular file")
        return fd


def _initialise_and_map(name: str, fd: int, expected: Expected | None, deadline: float) -> Segment:
    """Under the init lock: initialise if nobody has (and we know the layout), validate, map."""
    init_lock = OFDLock(fd, LOCK_INIT)
    while True:
        init_lock.acquire_within(max(0.0, deadline - time.monotonic()), f"cache {name!r}")
        try:
            header = _read_header(fd)
            created = False
            if not _is_ready(header) and expected is not None:
                _initialise(fd, expected.layout, expected.fields)
                header = _read_header(fd)
                created = True
            if _is_ready(header):
                if header[H_RETIRED] or os.fstat(fd).st_size != header[H_TOTAL_BYTES]:
                    retire(fd, segment_path(name))
                    raise _Damaged(f"cache {name!r} was dropped or truncated")
                found = _validate(name, fd, header, expected)
                mm = mmap.mmap(fd, found.layout.total_bytes, mmap.MAP_SHARED)
                _map_every_page(mm)
                return Segment(name, fd, mm, found.layout, found.ttl_ms, created)
        finally:
            init_lock.release()
        if time.monotonic() >= deadline:  # attach-only and nobody initialised it
            raise CacheTimeout(f"cache {name!r} exists but was never initialised")
        time.sleep(POLL_STEP_S)  # deadline-poll


def _map_every_page(mm: mmap.mmap) -> None:
    """Fault the whole segment in now: its memory is fixed at creation, so every process
    shows it in its RSS from the start instead of growing as entries are touched."""
    view = np.frombuffer(mm, dtype=np.uint8)
    int(view[::PAGE_BYTES].sum())  # one read per page
    del view


def _read_header(fd: int) -> list[int]:
    raw = os.pread(fd, HEADER_WORDS * 8, 0)
    if len(raw) < HEADER_WORDS * 8:
        return [0] * HEADER_WORDS
    return list(struct.unpack(f"<{HEADER_WORDS}Q", raw))


def _is_ready(header: list[int]) -> bool:
    return header[H_READY] != 0


def _initialise(fd: int, layout: Layout, header_fields: dict[int, int]) -> None:
    """Zero-fill to the full size, reserve the memory, write the header, ready marker last."""
    os.ftruncate(fd, 0)
    os.ftruncate(fd, layout.total_bytes)
    try:
        os.posix_fallocate(fd, 0, layout.total_bytes)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            os.ftruncate(fd, 0)
            raise CacheError(
                f"not enough room in {SHM_DIR} for a {layout.total_bytes}-byte cache"
            ) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
    fields = dict(header_fields)
    fields[H_CREATED_MS] = time.time_ns() // 1_000_000
    fields[H_EPOCH] = int.from_bytes(os.urandom(5), "little") << 8  # see "Retirement"
    for word, value in sorted(fields.items()):
        os.pwrite(fd, _WORD.pack(value), 8 * word)
    os.pwrite(fd, _WORD.pack(MAGIC), 8 * H_MAGIC)
    os.pwrite(fd, _WORD.pack(LAYOUT_VERSION), 8 * H_READY)


def _validate(name: str, fd: int, header: list[int], expected: Expected | None) -> Expected:
    if header[H_MAGIC] != MAGIC or header[H_READY] != LAYOUT_VERSION:
        raise CacheLayoutError(
            f"cache {name!r} has layout version {header[H_READY]} (magic {header[H_MAGIC]:#x}); "
            f"this code uses layout {LAYOUT_VERSION}. Stop every process using it and drop it."
        )
    if expected is None:
        expected = Expected.from_header(header)
    for word, value in expected.fields.items():
        if header[word] != value:
            what = _FIELD_NAMES.get(word, f"header word {word}")
            raise CacheLayoutError(
                f"cache {name!r} was created with {what} = {header[word]}, this process "
                f"expects {value}; use the same settings everywhere or stop every "
                f"process using it and drop it (`featurestore cache drop`)"
            )
    return expected
