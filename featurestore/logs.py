"""Logging set-up shared by every role: one line per record, with role, pid and request id."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


PARENT_PID_VARIABLE = "FS_PARENT_PID"  # set by the test launcher
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def setup_logging(role: str, level: str, *, process_root: bool = True) -> logging.Logger:
    """Configure the root logger once (stderr; supervisord or the launcher files it), and
    when started by the test launcher, die with it (a killed test run leaves nothing)."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    if process_root:  # not in processes a role spawns itself (Sanic's workers)
        _die_with_launcher()
    return logging.getLogger(role)


def _die_with_launcher() -> None:
    parent = os.environ.get(PARENT_PID_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def rid(request_id: str) -> str:
    """How a request id appears in log lines (`rid=...`), so one grep follows a request."""
    return f"rid={request_id}"


def process_label(role: str, index: int | None = None) -> str:
    return role if index is None else f"{role}-{index}"


__all__ = ["process_label", "rid", "setup_logging"]
