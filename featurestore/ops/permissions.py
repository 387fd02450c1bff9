"""Who may read what we write (SPEC §11): files 0600 and directories 0700, whatever the umask.

Every process of ours sets `PRIVATE_UMASK` first (roles in `run_role`, the CLI in `main`,
supervisord through `umask=077` in supervisord.conf), so whatever it creates under DATA_DIR
(the event store and its -wal/-shm, drift baselines, logs, supervisord's pid file and socket)
is private. Directories are also chmod'ed after `mkdir` by `private_dir`, because the mode
given to `mkdir` is itself masked by the umask of whoever runs the code.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_new_files() -> None:
    """From now on this process creates files 0600 and directories 0700 (at most)."""
    os.umask(PRIVATE_UMASK)


def private_dir(path: str | Path) -> Path:
    """`path` as a directory, every directory created on the way (parents too) 0700.

    A directory that already exists keeps its mode: it is the operator's choice."""
    target = Path(path)
    missing = []
    probe = target
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, DIR_MODE)
    return target


def create_private_file(path: str | Path) -> bool:
    """Create an empty file 0600 unless it exists; True if this call created it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)
    return True
