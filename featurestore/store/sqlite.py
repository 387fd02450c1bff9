"""The embedded event store: SQLite in WAL mode, events packed per entity as NumPy records.

Layout (the durable source of truth; the schema, its checks and migrations: `schema.py`):
- `segments(entity_id, first_seq, n, events BLOB, event_ids TEXT)`: each ingest appends, per
  entity it touches, one segment holding that entity's new events as packed `EVENT_DTYPE`
  records sorted by (ts, seq), and their event ids joined by newlines (ids cannot contain
  control characters). An entity with more than `MAX_SEGMENTS` segments is compacted into one
  in the same transaction, so a read is a handful of blob fetches per entity and never one
  Python object per event.
- `entities(entity_id, n_events, n_segments)`, `event_ids(event_id)` (idempotency by event id),
  `requests(request_id, created_ms, digest, accepted, duplicates)` (idempotency by request id,
  `requests.py`), `categories(label, name)`, `meta(key, value)` (the next sequence number).

Writers serialise on SQLite's write lock (BEGIN IMMEDIATE) and retry until a deadline, so
"database is locked" never reaches a caller; readers never block in WAL mode. Every other
SQLite failure that is not a bug becomes `StoreUnavailable` (disk full: the transaction is
rolled back whole) or `StoreCorrupt` (not a database, not ours, damaged): `errors.py`.
The file and its -wal/-shm are created 0600 (SQLite gives those two the mode of the file).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
import pandas as pd

from featurestore.config import VARIABLES
from featurestore.ops.permissions import create_private_file, private_dir
from featurestore.store import requests
from featurestore.store.base import IngestResult
from featurestore.store.batch import EventBatch
from featurestore.store.columns import EventColumns
from featurestore.store.errors import StoreCorrupt, StoreError, StoreUnavailable
from featurestore.store.factory import SQLITE_FILENAME
from featurestore.store.labels import LabelBook
from featurestore.store.schema import check_identity, ensure_schema
from featurestore.store.segments import (
    ID_SEPARATOR,
    MAX_SEGMENTS,
    append_segments,
    compact_entities,
    event_records,
    merge_segments,
)
from featurestore.store.sqlite_errors import is_busy, store_error
from featurestore.timestamps import now_ms

DB_FILENAME = SQLITE_FILENAME
PAGE_SIZE = 16384
COMPACT_BATCH = 2000
BUSY_TIMEOUT_MS = 2000
LOCK_DEADLINE_S = 120.0
DEFAULT_REQUEST_ID_RETENTION_MS: int = VARIABLES["REQUEST_ID_RETENTION_MS"].default
MIN_FREE_BYTES = 8 * 1024 * 1024  # below this the store does not call itself writable again

T = TypeVar("T")

_INSERT_IDS = "{verb} INTO event_ids (event_id) SELECT value FROM json_each(?) ORDER BY 1"


class SqliteEventStore:
    """The SQLite event store of one `DATA_DIR`; one connection per process (or thread)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        request_id_retention_ms: int = DEFAULT_REQUEST_ID_RETENTION_MS,
    ) -> None:
        self.path = Path(data_dir) / DB_FILENAME
        self.request_id_retention_ms = request_id_retention_ms
        self._book = LabelBook()
        try:
            private_dir(self.path.parent)
            create_private_file(self.path)  # before SQLite creates it with the umask's mode
        except OSError as exc:
            raise StoreUnavailable(self.path, f"cannot create the store: {exc.strerror}") from exc
        self._conn = self._retry(self._connect)
        try:
            self._retry(self._initialise)
        except BaseException:
            self._conn.close()
            raise

    # ----------------------------------------------------------------- connection plumbing
    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)

    def _initialise(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        check_identity(conn, self.path)  # before anything writes to a file that is not ours
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # effective only on a new database
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreUnavailable(self.path, "cannot switch SQLite to WAL mode")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=1073741824")
        conn.execute("BEGIN IMMEDIATE")
        try:
            ensure_schema(conn, self.path, self._retention_cutoff_ms())
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _retention_cutoff_ms(self) -> int:
        """Request ids stored before this are forgotten."""
        return now_ms() - self.request_id_retention_ms

    def _rollback(self) -> None:
        """End a failed transaction (SQLite may have rolled it back already, e.g. on a full
        disk); a failing ROLLBACK cannot hide the error that brought us here."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _retry(self, operation: Callable[[], T]) -> T:
        """Run `operation`, retrying while another process holds the lock, until a deadline;
        a SQLite failure that is not a bug becomes StoreUnavailable or StoreCorrupt."""
        deadline = time.monotonic() + LOCK_DEADLINE_S
        while True:
            try:
                return operation()
            except sqlite3.Error as exc:
                if is_busy(exc) and time.monotonic() <= deadline:
                    self._rollback()
                    continue
                error = store_error(exc, self.path)
                if error is None:
                    raise
                self._rollback()
                raise error from exc

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body` in one write transaction (BEGIN IMMEDIATE ... COMMIT), retried when busy.
        Any failure rolls the whole transaction back."""

        def attempt() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                self._book.forget()  # labels cached in a rolled-back transaction
                raise
            return result

        return self._retry(attempt)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------- ingest
    def ingest(
        self, events: EventColumns, request_id: str | None = None, *, compact: bool = True
    ) -> IngestResult:
        """Store validated events atomically; duplicates by event id skipped. A request id
        seen before with the same events returns the original answer and stores nothing;
        with other events it is a `request_id_conflict` (requests.py).

        `compact=False` leaves long segment chains for a later `compact()` (bulk loads)."""
        digest = None if request_id is None else requests.events_digest(events)
        return self._write(lambda conn: self._ingest(conn, events, request_id, digest, compact))

    def _ingest(
        self,
        conn: sqlite3.Connection,
        events: EventColumns,
        request_id: str | None,
        digest: bytes | None,
        compact: bool,
    ) -> IngestResult:
        now = now_ms()
        if request_id is not None:
            cutoff = now - self.request_id_retention_ms
            replay = requests.replayed(conn, request_id, digest, events.entity_id, cutoff)
            if replay is not None:
                return replay
        keep = self._new_event_mask(conn, events.event_id)
        entity_ids = np.asarray(events.entity_id, dtype=object)[keep]
        labels = self._labels_for(conn, np.asarray(events.category, dtype=object)[keep])
        n_new = int(keep.sum())
        first_seq = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (first_seq + n_new,))
        records = event_records(events, keep, labels, first_seq, now)
        event_ids = np.asarray(events.event_id, dtype=object)[keep]
        touched = append_segments(conn, entity_ids, records, event_ids, compact)
        result = IngestResult(n_new, len(events) - n_new, touched)
        if request_id is not None:
            requests.record(conn, request_id, digest, result, now)
        return result

    def _new_event_mask(
        self, conn: sqlite3.Connection, event_ids: Sequence[str | None]
    ) -> np.ndarray:
        """True for events to store: no event id, or an id seen neither before nor earlier here."""
        ids = pd.Series(event_ids, dtype=object)
        has_id = ids.notna().to_numpy()
        if not has_id.any():
            return np.ones(len(ids), dtype=bool)
        keep = ~(has_id & ids.duplicated(keep="first").to_numpy())
        candidates = orjson.dumps(ids[has_id & keep].tolist())
        expected = int((has_id & keep).sum())
        # Fast path: every id is new. Sorted inserts keep the B-tree writes sequential.
        conn.execute("SAVEPOINT event_ids")
        before = conn.total_changes
        conn.execute(_INSERT_IDS.format(verb="INSERT OR IGNORE"), (candidates,))
        if conn.total_changes - before == expected:
            conn.execute("RELEASE event_ids")
            return keep
        conn.execute("ROLLBACK TO event_ids")
        conn.execute("RELEASE event_ids")
        stored = conn.execute(
            "SELECT value FROM json_each(?) WHERE value IN (SELECT event_id FROM event_ids)",
            (candidates,),
        ).fetchall()
        keep &= ~ids.isin([r[0] for r in stored]).to_numpy()
        conn.execute(
            _INSERT_IDS.format(verb="INSERT"), (orjson.dumps(ids[has_id & keep].tolist()),)
        )
        return keep

    def _labels_for(self, conn: sqlite3.Connection, categories: np.ndarray) -> np.ndarray:
        """Labels of `categories` (None -> NO_CATEGORY), assigning new ones in order of first
        appearance, contiguously, inside the current transaction (which holds the write lock)."""
        self._refresh_categories(conn)
        new = self._book.unknown(categories)
        if new:
            conn.executemany(
                "INSERT INTO categories (label, name) VALUES (?, ?)", self._book.assign(new)
            )
        return self._book.encode(categories)

    def _refresh_categories(self, conn: sqlite3.Connection) -> None:
        self._book.learn(
            conn.execute(
                "SELECT label, name FROM categories WHERE label >= ? ORDER BY label",
                (self._book.known,),
            ).fetchall()
        )

    def compact(self, entity_ids: Sequence[str] | None = None) -> int:
        """Compact every entity with more than one segment (or those given); how many."""

        def body(conn: sqlite3.Connection) -> int:
            if entity_ids is None:
                query = "SELECT entity_id FROM entities WHERE n_segments > 1"
                targets = [r[0] for r in conn.execute(query)]
            else:
                targets = list(entity_ids)
            for start in range(0, len(targets), COMPACT_BATCH):
                compact_entities(conn, targets[start : start + COMPACT_BATCH])
            return len(targets)

        return self._write(body)

    # ------------------------------------------------------------------------- reads
    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch:
        """Every event of each requested entity (duplicates allowed), or those with ts <= T."""
        wanted = list(dict.fromkeys(entity_ids))
        rows = self._retry(
            lambda: self._conn.execute(
                "SELECT entity_id, first_seq, events FROM segments "
                "WHERE entity_id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(wanted),),
            ).fetchall()
        )
        blobs: dict[str, list[tuple[int, bytes]]] = {}
        for entity, first_seq, events in rows:
            blobs.setdefault(entity, []).append((first_seq, events))
        packed: dict[str, bytes] = {}
        for entity, parts in blobs.items():
            if len(parts) == 1:
                packed[entity] = parts[0][1]
            else:
                parts.sort()
                packed[entity] = merge_segments([p[1] for p in parts]).tobytes()
        batch = EventBatch.from_records(list(entity_ids), [packed.get(e, b"") for e in entity_ids])
        return batch if as_of_ms is None else batch.until(as_of_ms)

    def category_names(self) -> list[str]:
        self._retry(lambda: self._refresh_categories(self._conn))
        return list(self._book.names)

    def entity_ids(self) -> list[str]:
        rows = self._retry(
            lambda: self._conn.execute(
                "SELECT entity_id FROM entities ORDER BY entity_id"
            ).fetchall()
        )
        return [r[0] for r in rows]

    def counts(self) -> dict[str, int]:
        def query() -> dict[str, int]:
            entities, events = self._conn.execute(
                "SELECT count(*), coalesce(sum(n_events), 0) FROM entities"
            ).fetchone()
            categories = self._conn.execute("SELECT count(*) FROM categories").fetchone()[0]
            return {"entities": entities, "events": events, "categories": categories}

        return self._retry(query)

    # ------------------------------------------------------------------------- delete
    def delete(self, entity_id: str) -> int:
        """Remove the entity's events and their event ids; how many events were removed."""

        def body(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "SELECT n, event_ids FROM segments WHERE entity_id = ?", (entity_id,)
            ).fetchall()
            ids = [i for _, text in rows if text for i in text.split(ID_SEPARATOR)]
            if ids:
                conn.execute(
                    "DELETE FROM event_ids WHERE event_id IN (SELECT value FROM json_each(?))",
                    (orjson.dumps(ids),),
                )
            conn.execute("DELETE FROM segments WHERE entity_id = ?", (entity_id,))
            conn.execute("DELETE FROM entities WHERE entity_id = ?", (entity_id,))
            return sum(n for n, _ in rows)

        return self._write(body)

    def prune_requests(self, limit: int = requests.PRUNE_BATCH) -> int:
        """Forget up to `limit` request ids older than the retention (their retries are long
        over), oldest first; how many. Takes the write lock only when there is work."""
        cutoff = self._retention_cutoff_ms()
        if not self._retry(lambda: requests.has_expired(self._conn, cutoff)):
            return 0
        return self._write(lambda conn: requests.prune(conn, cutoff, limit))

    def prune_changes(self, limit: int = 0) -> int:
        """No change log: one host, whose writers invalidate its cache themselves."""
        return 0

    def check_writable(self) -> None:
        """StoreUnavailable unless the store's file system has room (MIN_FREE_BYTES) and a
        small write commits: how a store that hit a full disk finds out it may write again."""
        try:
            stat = os.statvfs(self.path.parent)
        except OSError as exc:
            raise StoreUnavailable(self.path, f"cannot use the store: {exc.strerror}") from exc
        free = stat.f_bavail * stat.f_frsize
        if free < MIN_FREE_BYTES:
            raise StoreUnavailable(
                self.path, f"cannot write: only {free:,} bytes free on its file system"
            )
        self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('write_checked_ms', ?)",
                (now_ms(),),
            )
        )


def open_store(
    data_dir: str | Path, *, request_id_retention_ms: int = DEFAULT_REQUEST_ID_RETENTION_MS
) -> SqliteEventStore:
    """The SQLite store of a data directory (created on first use); StoreCorrupt if the file
    there is not a usable store, StoreUnavailable if it cannot be opened now. Processes and
    commands choose their store with `featurestore.store.factory.open_store(settings)`."""
    return SqliteEventStore(data_dir, request_id_retention_ms=request_id_retention_ms)


__all__ = [
    "DB_FILENAME",
    "MAX_SEGMENTS",
    "SqliteEventStore",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]
