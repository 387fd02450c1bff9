"""Logging set-up shared by every role: one line per record, with role, pid and request id."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def setup_logging(role: str, level: str) -> logging.Logger:
    """Configure the root logger once (stderr; supervisord or the launcher files it)."""
    logging.basicConfig(level=level, format=FORMAT, stream=sys.stderr, force=True)
    return logging.getLogger(role)


def rid(request_id: str) -> str:
    """How a request id appears in log lines (`rid=...`), so one grep follows a request."""
    return f"rid={request_id}"


def process_label(role: str, index: int | None = None) -> str:
    return role if index is None else f"{role}-{index}"


__all__ = ["process_label", "rid", "setup_logging"]
