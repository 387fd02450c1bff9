"""What can go wrong with an event store that is not a bug, in two kinds with distinct cures.

- `StoreUnavailable`: the store cannot take writes now (disk full, file too large, an I/O
  error, the file gone or read-only). Nothing was half-stored; the same request succeeds once
  the operator frees space. Workers answer 503 `store_unavailable` with `retry_after_s` and
  report the store `unavailable` in `/health` until a write succeeds again.
- `StoreCorrupt`: the file is not a database, not ours, damaged, or of a newer schema than
  this code knows. Starting again does not help: processes stop with `EXIT_DATA` and one line
  that names the file and what is wrong.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.config import ConfigError

STORE_RETRY_AFTER_S = 5  # what a caller refused with `store_unavailable` is asked to wait


class StoreError(RuntimeError):
    """The store cannot be opened or used; `str()` is one operator-facing line."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = str(path)
        self.problem = problem


class StoreUnavailable(StoreError):
    """The store cannot take writes (or be read) now; nothing was half-stored."""


class StoreCorrupt(StoreError):
    """The store file is not a database, not ours, damaged or of an unknown schema."""


class SchemaMismatch(ConfigError):
    """The definitions' event fields do not fit the fields the store holds (a field removed,
    its kind changed, an existing optional field made required, a new field required), or a
    served version's definition changed under its recorded name. A configuration error: the
    process stops with EXIT_CONFIG and this message."""
