"""The embedded event store: SQLite in WAL mode, events packed per entity as NumPy records.

Layout (the durable source of truth):
- `segments(entity_id, first_seq, n, events BLOB, event_ids TEXT)`: each ingest appends, per
  entity it touches, one segment holding that entity's new events as packed `EVENT_DTYPE`
  records sorted by (ts, seq), and their event ids joined by newlines (ids cannot contain
  control characters). An entity with more than `MAX_SEGMENTS` segments is compacted into one
  in the same transaction, so a read is a handful of blob fetches per entity and never one
  Python object per event.
- `entities(entity_id, n_events, n_segments)`, `event_ids(event_id)` (idempotency by event id),
  `requests(request_id, response)` (idempotency by request id), `categories(label, name)`,
  `meta(key, value)` (the next sequence number).

Writers serialise on SQLite's write lock (BEGIN IMMEDIATE) and retry until a deadline, so
"database is locked" never reaches a caller; readers never block in WAL mode.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson
import pandas as pd

from featurestore.store.base import IngestResult
from featurestore.store.batch import EVENT_DTYPE, NO_CATEGORY, EventBatch
from featurestore.timestamps import now_ms
from featurestore.validation import EventColumns

DB_FILENAME = "events.sqlite3"
SCHEMA_VERSION = 1
PAGE_SIZE = 16384
MAX_SEGMENTS = 8
COMPACT_BATCH = 2000
BUSY_TIMEOUT_MS = 2000
LOCK_DEADLINE_S = 120.0
REQUEST_RETENTION_MS = 7 * 86_400_000
ID_SEPARATOR = "\n"

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS categories (label INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS entities (
    entity_id TEXT PRIMARY KEY, n_events INTEGER NOT NULL, n_segments INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    entity_id TEXT NOT NULL, first_seq INTEGER NOT NULL, n INTEGER NOT NULL,
    events BLOB NOT NULL, event_ids TEXT NOT NULL, UNIQUE (entity_id, first_seq)
);
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, response BLOB NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1), ('next_seq', 1);
"""
_JSON_IDS = "(SELECT value FROM json_each(?))"  # a JSON array parameter as a set of ids
_INSERT_IDS = "{verb} INTO event_ids (event_id) SELECT value FROM json_each(?) ORDER BY 1"
_INSERT_SEGMENT = (
    "INSERT INTO segments (entity_id, first_seq, n, events, event_ids) VALUES (?, ?, ?, ?, ?)"
)


class StoreError(RuntimeError):
    """The store cannot be opened or used (a clear, operator-facing message)."""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class SqliteEventStore:
    """The SQLite event store of one `DATA_DIR`; one connection per process (or thread)."""

    def __init__(self, data_dir: str | Path) -> None:
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILENAME
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._names: list[str] = []
        self._labels: dict[str, int] = {}
        self._retry(self._initialise)

    # ----------------------------------------------------------------- connection plumbing
    def _initialise(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # effective only on a new database
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch SQLite to WAL mode")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("PRAGMA mmap_size=1073741824")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[
                0
            ]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version}, expected {SCHEMA_VERSION}")

    def _retry(self, operation: Callable[[], T]) -> T:
        """Run `operation`, retrying while another process holds the lock, until a deadline."""
        deadline = time.monotonic() + LOCK_DEADLINE_S
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")

    def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run `body` in one write transaction (BEGIN IMMEDIATE ... COMMIT), retried when busy."""

        def attempt() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(self._conn)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._forget_categories()  # labels cached in a rolled-back transaction
                raise
            return result

        return self._retry(attempt)

    def close(self) -> None:
        self._conn.close()

    # ------------------------------------------------------------------------- ingest
    def ingest(
        self, events: EventColumns, request_id: str | None = None, *, compact: bool = True
    ) -> IngestResult:
        """Store validated events atomically; duplicates by event id and request id skipped.

        `compact=False` leaves long segment chains for a later `compact()` (bulk loads)."""
        return self._write(lambda conn: self._ingest(conn, events, request_id, compact))

    def _ingest(
        self,
        conn: sqlite3.Connection,
        events: EventColumns,
        request_id: str | None,
        compact: bool,
    ) -> IngestResult:
        if request_id is not None:
            row = conn.execute(
                "SELECT response FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
            if row is not None:
                saved = orjson.loads(row[0])
                return IngestResult(
                    saved["accepted"], saved["duplicates"], saved["entity_ids"], replayed=True
                )
        keep = self._new_event_mask(conn, events.event_id)
        entity_ids = np.asarray(events.entity_id, dtype=object)[keep]
        labels = self._labels_for(conn, np.asarray(events.category, dtype=object)[keep])
        n_new = int(keep.sum())
        first_seq = conn.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()[0]
        conn.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (first_seq + n_new,))
        records = np.empty(n_new, dtype=EVENT_DTYPE)
        records["ts"] = events.ts[keep]
        records["seq"] = np.arange(first_seq, first_seq + n_new, dtype=np.int64)
        records["ingested_at"] = now_ms()
        records["value"] = events.value[keep]
        records["category"] = labels
        event_ids = np.asarray(events.event_id, dtype=object)[keep]
        touched = self._append_segments(conn, entity_ids, records, event_ids, compact)
        result = IngestResult(n_new, len(events) - n_new, touched)
        if request_id is not None:
            saved = {
                "accepted": result.accepted,
                "duplicates": result.duplicates,
                "entity_ids": touched,
            }
            conn.execute(
                "INSERT INTO requests (request_id, created_ms, response) VALUES (?, ?, ?)",
                (request_id, now_ms(), orjson.dumps(saved)),
            )
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
        appearance, contiguously, inside the current transaction."""
        self._refresh_categories(conn)
        present = pd.Series(categories, dtype=object)
        new = [c for c in pd.unique(present.dropna()) if c not in self._labels]
        if new:
            start = len(self._names)
            conn.executemany(
                "INSERT INTO categories (label, name) VALUES (?, ?)",
                [(start + i, name) for i, name in enumerate(new)],
            )
            self._names.extend(new)
            self._labels.update({name: start + i for i, name in enumerate(new)})
        return present.map(self._labels).fillna(NO_CATEGORY).to_numpy(dtype=np.int32)

    def _forget_categories(self) -> None:
        self._names = []
        self._labels = {}

    def _refresh_categories(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT label, name FROM categories WHERE label >= ? ORDER BY label",
            (len(self._names),),
        ).fetchall()
        for label, name in rows:
            self._names.append(name)
            self._labels[name] = label

    def _append_segments(
        self,
        conn: sqlite3.Connection,
        entity_ids: np.ndarray,
        records: np.ndarray,
        event_ids: np.ndarray,
        compact: bool,
    ) -> list[str]:
        """Append one segment per entity (records sorted by ts, seq); compact long chains."""
        if records.size == 0:
            return []
        codes, uniques = pd.factorize(entity_ids)
        order = np.lexsort((records["seq"], records["ts"], codes))
        records = records[order]
        codes = codes[order]
        counts = np.bincount(codes, minlength=len(uniques))
        bounds = np.concatenate(([0], np.cumsum(counts)))
        first_seqs = np.minimum.reduceat(records["seq"], bounds[:-1]).tolist()
        id_text = _ids_per_entity(event_ids[order], codes, len(uniques))
        blob = records.tobytes()
        size = EVENT_DTYPE.itemsize
        touched = [str(u) for u in uniques]
        spans = bounds.tolist()
        conn.executemany(
            _INSERT_SEGMENT,
            (
                (
                    entity,
                    first_seqs[i],
                    spans[i + 1] - spans[i],
                    blob[spans[i] * size : spans[i + 1] * size],
                    id_text[i],
                )
                for i, entity in enumerate(touched)
            ),
        )
        conn.executemany(
            "INSERT INTO entities (entity_id, n_events, n_segments) VALUES (?, ?, 1) "
            "ON CONFLICT (entity_id) DO UPDATE SET n_events = n_events + excluded.n_events, "
            "n_segments = n_segments + 1",
            zip(touched, counts.tolist(), strict=True),
        )
        if compact:
            self._compact(conn, self._long_chains(conn, touched))
        return touched

    def _long_chains(self, conn: sqlite3.Connection, entity_ids: list[str]) -> list[str]:
        rows = conn.execute(
            "SELECT entity_id FROM entities WHERE n_segments > ? "
            "AND entity_id IN (SELECT value FROM json_each(?))",
            (MAX_SEGMENTS, orjson.dumps(entity_ids)),
        ).fetchall()
        return [r[0] for r in rows]

    def _compact(self, conn: sqlite3.Connection, entity_ids: list[str]) -> None:
        """Merge every segment of each entity into one (inside the current transaction)."""
        if not entity_ids:
            return
        payload = orjson.dumps(entity_ids)
        rows = conn.execute(
            "SELECT entity_id, first_seq, events, event_ids FROM segments "
            "WHERE entity_id IN (SELECT value FROM json_each(?)) ORDER BY entity_id, first_seq",
            (payload,),
        ).fetchall()
        merged = []
        for entity, group in itertools.groupby(rows, key=lambda r: r[0]):
            parts = list(group)
            events = _merge_segments([p[2] for p in parts])
            ids = ID_SEPARATOR.join(p[3] for p in parts if p[3])
            merged.append((entity, parts[0][1], events.size, events.tobytes(), ids))
        conn.execute(f"DELETE FROM segments WHERE entity_id IN {_JSON_IDS}", (payload,))
        conn.executemany(_INSERT_SEGMENT, merged)
        conn.execute(
            f"UPDATE entities SET n_segments = 1 WHERE entity_id IN {_JSON_IDS}", (payload,)
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
                self._compact(conn, targets[start : start + COMPACT_BATCH])
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
                packed[entity] = _merge_segments([p[1] for p in parts]).tobytes()
        batch = EventBatch.from_records(list(entity_ids), [packed.get(e, b"") for e in entity_ids])
        return batch if as_of_ms is None else batch.until(as_of_ms)

    def category_names(self) -> list[str]:
        self._retry(lambda: self._refresh_categories(self._conn))
        return list(self._names)

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

    def prune_requests(self, older_than_ms: int = REQUEST_RETENTION_MS) -> int:
        """Forget request ids older than the retention (their retries are long over)."""
        cutoff = now_ms() - older_than_ms
        return self._write(
            lambda conn: (
                conn.execute("DELETE FROM requests WHERE created_ms < ?", (cutoff,)).rowcount
            )
        )


def _ids_per_entity(event_ids: np.ndarray, codes: np.ndarray, n_entities: int) -> list[str]:
    """Each entity's event ids joined by ID_SEPARATOR ("" where it has none); `codes` sorted."""
    present = pd.notna(event_ids)
    if not present.any():
        return [""] * n_entities
    ids = event_ids[present].tolist()
    bounds = np.searchsorted(codes[present], np.arange(n_entities + 1)).tolist()
    return [ID_SEPARATOR.join(ids[bounds[i] : bounds[i + 1]]) for i in range(n_entities)]


def _merge_segments(blobs: list[bytes]) -> np.ndarray:
    """Segments (each sorted by ts, seq; in sequence order) merged into (ts, seq) order."""
    merged = np.frombuffer(b"".join(blobs), dtype=EVENT_DTYPE)
    return merged[np.argsort(merged["ts"], kind="stable")]


def open_store(data_dir: str | Path) -> SqliteEventStore:
    """The event store of a data directory (created on first use)."""
    return SqliteEventStore(data_dir)
