"""A disk that fills up for real, for the disk-full tests (SPEC §11), in one of two ways:

- `SmallTmpfs`: DATA_DIR on a tmpfs of a few MiB mounted for the test (needs the right to
  mount, e.g. root); `fill()` writes a filler file until the kernel answers ENOSPC, `free()`
  deletes it. DATA_DIR/logs is a link to a directory elsewhere, so the processes' own log
  lines do not fail with the store (as when logs live on another volume).
- `FileSizeLimit`: DATA_DIR on the ordinary disk, and the compute worker's RLIMIT_FSIZE
  lowered to one byte with prlimit(2) (Python ignores SIGXFSZ, so a write past the limit
  fails with EFBIG instead of killing it); `free()` lifts the limit again.

Each has `setup()` (None, or the reason this machine does not allow it), `data_dir`,
`attach(worker_pid)`, `fill()`, `free()` and `close()`.
"""

from __future__ import annotations

import contextlib
import errno
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

TMPFS_BYTES = 32 * 1024 * 1024
FILLER = "filler.bin"
FILL_BLOCK_BYTES = 1 << 20
PAGE_BYTES = 4096


class SmallTmpfs:
    name = "tmpfs"

    def __init__(self, logs_dir: Path) -> None:
        self.mountpoint = Path(tempfile.mkdtemp(prefix="fs-full-", dir="/tmp"))
        self.logs_dir = logs_dir
        self.mounted = False

    def setup(self) -> str | None:
        """Mount; the reason when this machine does not allow it."""
        options = f"size={TMPFS_BYTES},mode=0700"
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            self.mountpoint.rmdir()
            return f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}"
        self.mounted = True
        self.data_dir.mkdir()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "logs").symlink_to(self.logs_dir)
        return None

    @property
    def data_dir(self) -> Path:
        return self.mountpoint / "data"

    def attach(self, worker_pid: int) -> None:
        """Nothing to do per process: the whole file system fills."""

    def fill(self) -> None:
        """Write until not one more page fits."""
        block = FILL_BLOCK_BYTES
        with open(self.mountpoint / FILLER, "ab", buffering=0) as handle:
            while block >= PAGE_BYTES:
                try:
                    handle.write(b"\0" * block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    block //= 2

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.mountpoint / FILLER).unlink()

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
            self.mounted = False
        shutil.rmtree(self.mountpoint, ignore_errors=True)


class FileSizeLimit:
    name = "rlimit"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pid: int | None = None

    def setup(self) -> str | None:
        if not hasattr(resource, "prlimit"):
            return "no prlimit(2) on this platform"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def attach(self, worker_pid: int) -> None:
        self.pid = worker_pid

    def fill(self) -> None:
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))

    def free(self) -> None:
        limit = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        with contextlib.suppress(ProcessLookupError):
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, limit)

    def close(self) -> None:
        self.free()
