"""The gateway's multiprocess directory: where every HTTP server process keeps its metric
values (prometheus_client's multiprocess mode, one file per metric type and pid).

It lives in tmpfs beside the cache segment, `/dev/shm/<CACHE_NAME>.metrics` (every counter
update is a write to a mapped file, so no disk is involved), and lives as long as the
gateway's main process: `prepare` wipes and creates it (0700) before the first server starts,
`drop` removes it on a clean stop (and `featurestore serve` or the test launcher remove it
after a gateway that was killed). The servers' files are 0600 by their umask (every role
starts with `featurestore.ops.permissions.restrict_new_files`).

prometheus_client reads `PROMETHEUS_MULTIPROC_DIR` when it is first imported, so the main
process passes the directory to each server in its environment; nothing sets it later.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from featurestore.config import ConfigError
from featurestore.ops.permissions import DIR_MODE
from shm.segment import SHM_DIR

MULTIPROC_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
SUFFIX = ".metrics"


def metrics_dir(cache_name: str) -> Path:
    """The multiprocess directory of the stack whose cache is `cache_name`."""
    return Path(SHM_DIR, cache_name + SUFFIX)


def prepare(cache_name: str) -> Path:
    """An empty, private (0700) multiprocess directory: what an earlier gateway of this stack
    left (it was killed) is removed first."""
    path = metrics_dir(cache_name)
    try:
        drop(cache_name)
        os.mkdir(path, DIR_MODE)
    except OSError as exc:  # another user's directory in /dev/shm, for one
        raise ConfigError(
            f"cannot create the metrics directory {path} ({exc.strerror}): "
            "remove it or choose another CACHE_NAME"
        ) from None
    os.chmod(path, DIR_MODE)  # whatever the umask
    return path


def drop(cache_name: str) -> bool:
    """Remove the multiprocess directory of `cache_name`; True if it existed. A symbolic link
    or file in its place is removed, never followed."""
    path = metrics_dir(cache_name)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True
