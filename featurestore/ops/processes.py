"""Process identity and parentage (Linux): who a pid is, and dying with one's parent.

A pid alone is not a process: pids are reused. (pid, start ticks since boot) is, so every
record of "our" processes (counter slots, the stack lock file) keeps both.

SPEC §11: every process of a stack dies with its parent (roles with supervisord or the
launcher, HTTP servers with the gateway), so a killed parent never leaves orphans that keep
ports, locks or a stale cache. `die_with_parent` asks the kernel for a signal when the
parent dies (PR_SET_PDEATHSIG; it survives execve, so it is also set for supervisord in the
child between fork and exec).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

from shm.procfs import process_start_ticks

PARENT_PID_VARIABLE = "FS_PARENT_PID"  # the pid a child must die with, when not its ppid
PR_SET_PDEATHSIG = 1  # linux/prctl.h
KILL_POLL_S = 0.02


def parent_of(pid: int) -> int | None:
    """The parent pid of `pid`, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[1])


def is_same_process(pid: int, start_ticks: int) -> bool:
    """True while the process recorded as (pid, start_ticks) is alive (not a reused pid)."""
    return pid > 0 and process_start_ticks(pid) == start_ticks


def set_parent_death_signal(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Receive `sig` when the parent dies. The parent is FS_PARENT_PID when set (the test
    launcher, the gateway), else the current parent (supervisord). If it already died before
    the request took effect, act on it now."""
    expected = int(os.environ.get(PARENT_PID_VARIABLE) or os.getppid())
    set_parent_death_signal(sig)
    if os.getppid() != expected:
        os.kill(os.getpid(), sig)


def terminate(pids: list[int], timeout_s: float) -> list[int]:
    """SIGTERM `pids`, SIGKILL what is left after `timeout_s`; the pids still alive after."""
    alive = [p for p in pids if process_start_ticks(p) is not None]
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _running(p)]
            if alive:
                time.sleep(KILL_POLL_S)  # deadline-poll: waiting for processes to exit
    return alive


def _running(pid: int) -> bool:
    """Alive and not a zombie (a zombie is dead; only its parent's wait removes it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat[stat.rindex(b")") + 2 :].split()[0] != b"Z"
