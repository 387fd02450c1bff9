"""The embedded event store: SQLite in WAL mode, events packed per entity as NumPy records.

Layout (the durable source of truth; the schema, its checks and migrations: `schema.py`):
- `segments(entity_id, first_seq, n, events BLOB, event_ids TEXT, n_fields)`: each ingest
  appends, per entity it touches, one segment holding that entity's new events as packed
  records of the store's layout (`layout.py`) sorted by (ts, seq), and their event ids
  joined by newlines (ids cannot contain control characters). An entity with more than
  `MAX_SEGMENTS` segments is compacted into one in the same transaction, so a read is a
  handful of blob fetches per entity and never one Python object per event.
- `entities(entity_id, n_events, n_segments)`, `event_ids(event_id)` (idempotency by event id),
  `requests(request_id, created_ms, digest, accepted, duplicates)` (idempotency by request id,
  `requests.py`), `labels(field, label, name)` (per categorical field), `fields(position,
  name, kind, required)` (the record layout, `layout.py`), `versions(name, content_hash,
  first_served_ms)` (served versions), `meta(key, value)` (the next sequence number).

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
from featurestore.definitions.model import EventSchema, schema_or_shipped
from featurestore.ops.permissions import create_private_file, private_dir
from featurestore.store import requests
from featurestore.store.base import IngestResult
from featurestore.store.batch import EventBatch
from featurestore.store.columns import EventColumns
from featurestore.store.errors import SchemaMismatch, StoreCorrupt, StoreError, StoreUnavailable
from featurestore.store.factory import SQLITE_FILENAME
from featurestore.store.labels import LabelBook
from featurestore.store.layout import RecordLayout, StoredField, reconcile
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
        schema: EventSchema | None = None,
        schema_source: str = "the definitions",
    ) -> None:
        """`schema`: the event fields to serve (default: the shipped file's), reconciled with
        the fields the store holds at open (`layout.reconcile`; SchemaMismatch if they do not
        fit)."""
        self.path = Path(data_dir) / DB_FILENAME
        self.request_id_retention_ms = request_id_retention_ms
        schema = schema_or_shipped(schema)
        self._schema, self._schema_source = schema, schema_source
        self.layout = RecordLayout(())
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
            self._adopt_schema(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _adopt_schema(self, conn: sqlite3.Connection) -> None:
        """Record the schema's fields in a new store, or check them against the stored ones
        (appending new optional fields, relaxing required ones)."""
        rows = conn.execute("SELECT name, kind, required FROM fields ORDER BY position").fetchall()
        stored = tuple(StoredField(n, k, bool(r)) for n, k, r in rows)
        self.layout = reconcile(stored, self._schema, self._schema_source)
        for position, f in enumerate(self.layout.fields):
            if position >= len(stored) or stored[position] != f:
                conn.execute(
                    "INSERT OR REPLACE INTO fields (position, name, kind, required) "
                    "VALUES (?, ?, ?, ?)",
                    (position, f.name, f.kind, int(f.required)),
                )
        self._book.reset(self.layout.categorical)

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
        n_new = int(keep.sum())
        first_seq = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (first_seq + n_new,))
        labels = {
            name: self._labels_for(
                conn, name, np.asarray(events.categorical_column(name), dtype=object)[keep]
            )
            for name in self.layout.categorical
        }
        records = event_records(events, keep, self.layout, labels, first_seq=first_seq, now_ms=now)
        event_ids = np.asarray(events.event_id, dtype=object)[keep]
        touched = append_segments(
            conn, entity_ids, records, event_ids, self.layout, compact=compact
        )
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

    def _labels_for(self, conn: sqlite3.Connection, field: str, values: np.ndarray) -> np.ndarray:
        """Labels of a categorical field's values (None -> NO_LABEL), assigning new ones in
        order of first appearance, contiguously, inside the current transaction."""
        self._refresh_labels(conn, field)
        new = self._book.unknown(field, values)
        if new:
            conn.executemany(
                "INSERT INTO labels (field, label, name) VALUES (?, ?, ?)",
                self._book.assign(field, new),
            )
        return self._book.encode(field, values)

    def _refresh_labels(self, conn: sqlite3.Connection, field: str) -> None:
        rows = conn.execute(
            "SELECT label, name FROM labels WHERE field = ? AND label >= ? ORDER BY label",
            (field, self._book.known(field)),
        ).fetchall()
        self._book.learn(field, rows)

    def compact(self, entity_ids: Sequence[str] | None = None) -> int:
        """Compact every entity with more than one segment (or those given); how many."""

        def body(conn: sqlite3.Connection) -> int:
            if entity_ids is None:
                query = "SELECT entity_id FROM entities WHERE n_segments > 1"
                targets = [r[0] for r in conn.execute(query)]
            else:
                targets = list(entity_ids)
            for start in range(0, len(targets), COMPACT_BATCH):
                compact_entities(conn, targets[start : start + COMPACT_BATCH], self.layout)
            return len(targets)

        return self._write(body)

    # ------------------------------------------------------------------------- reads
    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch:
        """Every event of each requested entity (duplicates allowed), or those with ts <= T."""
        wanted = list(dict.fromkeys(entity_ids))
        rows = self._retry(
            lambda: self._conn.execute(
                "SELECT entity_id, first_seq, events, n_fields FROM segments "
                "WHERE entity_id IN (SELECT value FROM json_each(?))",
                (orjson.dumps(wanted),),
            ).fetchall()
        )
        layout = self.layout
        current = layout.n_fields
        blobs: dict[str, list[tuple[int, bytes, int]]] = {}
        for entity, first_seq, events, n_fields in rows:
            blobs.setdefault(entity, []).append((first_seq, events, n_fields))
        packed: dict[str, bytes] = {}
        for entity, parts in blobs.items():
            if len(parts) == 1 and parts[0][2] == current:
                packed[entity] = parts[0][1]
            else:
                parts.sort()
                merged = merge_segments([layout.records(p[1], p[2]) for p in parts])
                packed[entity] = merged.tobytes()
        batch = EventBatch.from_records(
            list(entity_ids), [packed.get(e, b"") for e in entity_ids], layout.dtype
        )
        return batch if as_of_ms is None else batch.until(as_of_ms)

    def label_names(self) -> dict[str, list[str]]:
        """Label names of every categorical field, indexed by label (0 ... k-1)."""

        def refresh() -> None:
            for field in self.layout.categorical:
                self._refresh_labels(self._conn, field)

        self._retry(refresh)
        return {field: list(names) for field, names in self._book.names.items()}

    def category_names(self) -> list[str]:
        """Label names of the `category` field (the default schema's)."""
        return self.label_names().get("category", [])

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
            labels = self._conn.execute("SELECT count(*) FROM labels").fetchone()[0]
            return {"entities": entities, "events": events, "categories": labels}

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

    # ------------------------------------------------------------------ served versions
    def served_versions(self) -> dict[str, tuple[str, int]]:
        """Each version served from this store: (its content hash, when first served). The
        time also names the version's serving epoch: `forget` and serving it again start a
        new one (drift baselines of an older epoch are discarded)."""
        rows = self._retry(
            lambda: self._conn.execute(
                "SELECT name, content_hash, first_served_ms FROM versions"
            ).fetchall()
        )
        return {name: (digest, first) for name, digest, first in rows}

    def record_versions(self, hashes: dict[str, str], source: str = "the definitions") -> None:
        """Record versions about to be served; SchemaMismatch naming the version and both
        hashes when one was served before with another definition (versions are immutable)."""

        def body(conn: sqlite3.Connection) -> None:
            recorded = dict(conn.execute("SELECT name, content_hash FROM versions").fetchall())
            for name, digest in hashes.items():
                if name in recorded and recorded[name] != digest:
                    raise SchemaMismatch(
                        f"{source}: version {name!r} was served with definition "
                        f"{recorded[name][:16]} and is now {digest[:16]}: a served version is "
                        "immutable; give the changed definition a new name, or drop the old "
                        f"one with `featurestore definitions forget {name}`"
                    )
            conn.executemany(
                "INSERT OR IGNORE INTO versions (name, content_hash, first_served_ms) "
                "VALUES (?, ?, ?)",
                [(name, digest, now_ms()) for name, digest in hashes.items()],
            )

        self._write(body)

    def forget_version(self, name: str) -> bool:
        """Drop a recorded version (it may be served again with any definition)."""

        def body(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM versions WHERE name = ?", (name,)).rowcount > 0

        return self._write(body)

    def service_connections(self) -> list[str]:
        """None to list: one host, whose running service DATA_DIR's stack lock names."""
        return []

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
    data_dir: str | Path,
    *,
    request_id_retention_ms: int = DEFAULT_REQUEST_ID_RETENTION_MS,
    schema: EventSchema | None = None,
    schema_source: str = "the definitions",
) -> SqliteEventStore:
    """The SQLite store of a data directory (created on first use); StoreCorrupt if the file
    there is not a usable store, StoreUnavailable if it cannot be opened now, SchemaMismatch
    if `schema` does not fit its fields. Processes and commands choose their store with
    `featurestore.store.factory.open_event_store(settings)`."""
    return SqliteEventStore(
        data_dir,
        request_id_retention_ms=request_id_retention_ms,
        schema=schema,
        schema_source=schema_source,
    )


__all__ = [
    "DB_FILENAME",
    "MAX_SEGMENTS",
    "SchemaMismatch",
    "SqliteEventStore",
    "StoreCorrupt",
    "StoreError",
    "StoreUnavailable",
    "open_store",
]
