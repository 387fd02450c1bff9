"""SQLite's result codes sorted into the store's error kinds (featurestore/store/errors.py).

Lock contention is retried by the store itself; a full disk, a file too large (EFBIG under
RLIMIT_FSIZE comes back as SQLITE_IOERR_WRITE), an I/O error, a read-only or vanished file
make the store unavailable; a file that is not a database or is damaged is corrupt. Anything
else (a misuse, a constraint) is a bug and stays a plain sqlite3 error.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from featurestore.store.errors import StoreCorrupt, StoreError, StoreUnavailable

# Primary result codes (https://www.sqlite.org/rescode.html); extended codes keep them in
# their low byte, e.g. SQLITE_IOERR_WRITE = 778 = 10 | 3 << 8.
SQLITE_BUSY = 5
SQLITE_LOCKED = 6
SQLITE_READONLY = 8
SQLITE_IOERR = 10
SQLITE_CORRUPT = 11
SQLITE_FULL = 13
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26

BUSY_CODES = frozenset({SQLITE_BUSY, SQLITE_LOCKED})
UNAVAILABLE_CODES = frozenset({SQLITE_READONLY, SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN})
CORRUPT_CODES = frozenset({SQLITE_CORRUPT, SQLITE_NOTADB})

_REMEDY = "move it away (or restore a backup) and start again"


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: worth retrying."""
    code = primary_code(exc)
    if code is not None:
        return code in BUSY_CODES
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def store_error(exc: sqlite3.Error, path: str | Path) -> StoreError | None:
    """The store error `exc` stands for, or None when it is a bug (raise it as it is)."""
    code = primary_code(exc)
    if code == SQLITE_NOTADB:
        return StoreCorrupt(path, f"not a SQLite database ({exc}); {_REMEDY}")
    if code in CORRUPT_CODES:
        return StoreCorrupt(path, f"the SQLite file is damaged ({exc}); {_REMEDY}")
    if code == SQLITE_FULL:
        return StoreUnavailable(path, f"cannot write: {exc} (free some space)")
    if code in UNAVAILABLE_CODES:
        name = getattr(exc, "sqlite_errorname", "")
        return StoreUnavailable(path, f"cannot use the store: {exc} ({name})")
    return None
