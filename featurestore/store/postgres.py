"""The PostgreSQL event store (STORE_URL=postgresql://...): one store that several hosts share
(SPEC §15), with every rule of SPEC §3.

Layout: the packed per-entity segments of `segments.py`, as in the SQLite store, with the
record layout of the definitions' event fields (the schema, its versioning and the table of
serialised counters: `pg_schema.py`; fields, labels per categorical field and served
versions: `pg_catalog.py`). An ingest appends one
segment per entity it touches with one binary COPY, and an entity past MAX_SEGMENTS
segments is compacted into one in the same transaction, so a read of 1,000 entities is one
indexed query returning a few thousand byte strings, never one row per event.

One ingest is one transaction (READ COMMITTED), in this order:
1. the request id is claimed (`pg_requests.py`): a repeat waits for, then replays, the first;
2. event ids are inserted (ON CONFLICT DO NOTHING, in sorted order): what comes back is new;
   an id another transaction is inserting at the same moment waits for that one's outcome;
3. new names of a categorical field, if any, take the `counters` row lock, read the labels
   committed meanwhile and get the next labels: contiguous whatever the number of hosts;
4. `counters` gives the first event sequence number and the change sequence number (its row
   lock, held to the commit, is what orders these commits: short, taken last);
5. segments (COPY), entities, compaction, the change log row and its NOTIFY (`changes.py`),
   the request's answer; COMMIT.
A delete takes the `counters` lock first, then removes the entity's rows and logs the change;
so does forgetting a served version, whose change is of every entity (every host's listener
clears its cache: no vector of the old definition survives anywhere).

Failures (`pg_connection.py`): conflicts are retried inside, a lost server is waited for a
little (a write only when it is idempotent by request id), then StoreUnavailable; damaged
data is StoreCorrupt. One connection per store object (per worker thread).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
import psycopg

from featurestore.config import VARIABLES
from featurestore.definitions.model import EventSchema, schema_or_shipped
from featurestore.store import changes, pg_catalog, pg_requests, requests
from featurestore.store.base import IngestResult
from featurestore.store.batch import EventBatch
from featurestore.store.columns import EventColumns
from featurestore.store.layout import RecordLayout
from featurestore.store.pg_catalog import PgLabels
from featurestore.store.pg_connection import Connector, Session
from featurestore.store.pg_schema import SCHEMA, ensure_schema
from featurestore.store.segments import (
    ID_SEPARATOR,
    MAX_SEGMENTS,
    Segments,
    event_records,
    merge_parts,
    merge_segments,
    pack_segments,
)
from featurestore.timestamps import now_ms

COMPACT_BATCH = 2000
DEFAULT_REQUEST_ID_RETENTION_MS: int = VARIABLES["REQUEST_ID_RETENTION_MS"].default
DEFAULT_CHANGE_LOG_RETENTION_MS: int = VARIABLES["CHANGE_LOG_RETENTION_MS"].default
SEGMENT_COLUMNS = ("text", "int8", "int4", "bytea", "text", "int4")
_COPY_SEGMENTS = (
    f"COPY {SCHEMA}.segments (entity_id, first_seq, n, events, event_ids, n_fields) "
    "FROM STDIN (FORMAT BINARY)"
)

_NEW_EVENT_IDS = (
    f"INSERT INTO {SCHEMA}.event_ids (event_id) "
    'SELECT id FROM unnest(%s::text[]) AS t(id) ORDER BY id COLLATE "C" '
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)
_TAKE_SEQUENCES = (
    f"UPDATE {SCHEMA}.counters SET next_seq = next_seq + %s, change_seq = change_seq + 1 "
    "WHERE id = 1 RETURNING next_seq - %s, change_seq"
)
_ADD_ENTITIES = (
    f"INSERT INTO {SCHEMA}.entities AS e (entity_id, n_events, n_segments) "
    'SELECT id, n, 1 FROM unnest(%s::text[], %s::int8[]) AS t(id, n) ORDER BY id COLLATE "C" '
    "ON CONFLICT (entity_id) DO UPDATE SET n_events = e.n_events + excluded.n_events, "
    "n_segments = e.n_segments + 1 RETURNING entity_id, n_segments"
)
_READ = (
    f"SELECT entity_id, first_seq, events, n_fields FROM {SCHEMA}.segments "
    "WHERE entity_id = ANY(%s)"
)


class PostgresEventStore:
    """The event store in a PostgreSQL database; one connection per object (and thread)."""

    def __init__(
        self,
        connector: Connector,
        *,
        request_id_retention_ms: int = DEFAULT_REQUEST_ID_RETENTION_MS,
        change_log_retention_ms: int = DEFAULT_CHANGE_LOG_RETENTION_MS,
        schema: EventSchema | None = None,
        schema_source: str = "the definitions",
    ) -> None:
        """`schema`: the event fields to serve (default: the shipped file's), reconciled with
        the fields the store holds at open (`layout.reconcile`; SchemaMismatch if they do not
        fit)."""
        schema = schema_or_shipped(schema)
        self.session = Session(connector)
        self.name = connector.name
        self.path = self.name  # what messages name the store by (as SqliteEventStore.path)
        self.request_id_retention_ms = request_id_retention_ms
        self.change_log_retention_ms = change_log_retention_ms
        try:
            self.session.read(lambda conn: ensure_schema(conn, self.name))
            self.layout: RecordLayout = self.session.read(
                lambda conn: pg_catalog.adopt_layout(conn, schema, schema_source)
            )
        except BaseException:
            self.session.close()
            raise
        self._labels = PgLabels(tuple(self.layout.categorical))

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------------- ingest
    def ingest(
        self, events: EventColumns, request_id: str | None = None, *, compact: bool = True
    ) -> IngestResult:
        """Store validated events in one transaction; duplicates by event id skipped; a
        request id seen before replays its answer (or is a `request_id_conflict`).

        `compact=False` leaves long segment chains for a later `compact()` (bulk loads)."""
        digest = None if request_id is None else requests.events_digest(events)
        return self.session.write(
            lambda conn: self._ingest(conn, events, request_id, digest, compact),
            replayable=request_id is not None,
            on_rollback=self._labels.forget,
        )

    def _ingest(
        self,
        conn: psycopg.Connection,
        events: EventColumns,
        request_id: str | None,
        digest: bytes | None,
        compact: bool,
    ) -> IngestResult:
        now = now_ms()
        cur = conn.cursor()
        if request_id is not None:
            cutoff = now - self.request_id_retention_ms
            replay = pg_requests.claim(
                cur, request_id, digest, events.entity_id, now_ms=now, cutoff_ms=cutoff
            )
            if replay is not None:
                return replay
        keep = self._new_event_mask(cur, events.event_id)
        n_new = int(np.count_nonzero(keep))
        touched: list[str] = []
        if n_new:
            labels = {
                name: self._labels.labels_for(
                    cur, name, np.asarray(events.categorical_column(name), dtype=object)[keep]
                )
                for name in self.layout.categorical
            }
            first_seq, change_seq = cur.execute(_TAKE_SEQUENCES, (n_new, n_new)).fetchone()
            records = event_records(
                events, keep, self.layout, labels, first_seq=first_seq, now_ms=now
            )
            segments = pack_segments(
                np.asarray(events.entity_id, dtype=object)[keep],
                records,
                np.asarray(events.event_id, dtype=object)[keep],
                self.layout.n_fields,
            )
            touched = self._append(cur, segments, compact)
            changes.append(cur, change_seq, touched, now)
        result = IngestResult(n_new, len(events) - n_new, touched)
        if request_id is not None:
            pg_requests.record(cur, request_id, result)
        return result

    def _new_event_mask(self, cur: psycopg.Cursor, event_ids: Sequence[str | None]) -> np.ndarray:
        """True for events to store: no event id, or an id neither stored before (by any
        transaction that committed) nor earlier in this request."""
        ids = pd.Series(event_ids, dtype=object)
        has_id = ids.notna().to_numpy()
        if not has_id.any():
            return np.ones(len(ids), dtype=bool)
        keep = ~(has_id & ids.duplicated(keep="first").to_numpy())
        candidates = ids[has_id & keep].tolist()
        inserted = cur.execute(_NEW_EVENT_IDS, (candidates,)).fetchall()
        if len(inserted) < len(candidates):
            new = {r[0] for r in inserted}
            keep &= ~(has_id & ~ids.isin(new).to_numpy())
        return keep

    def _append(self, cur: psycopg.Cursor, segments: Segments, compact: bool) -> list[str]:
        """One new segment per entity (binary COPY), the entities' counts, and compaction of
        the entities that now have more than MAX_SEGMENTS segments."""
        _copy_segments(cur, segments.rows())
        chains = cur.execute(_ADD_ENTITIES, (segments.entity_ids, segments.counts)).fetchall()
        if compact:
            self._compact(cur, [entity for entity, n in chains if n > MAX_SEGMENTS])
        return segments.entity_ids

    def _compact(self, cur: psycopg.Cursor, entity_ids: list[str]) -> None:
        """Merge every segment of each entity into one, the entities' rows locked first (in
        key order) so that no segment appended meanwhile is lost, in the layout the store
        records now (a host that opened the store before another added a field compacts
        into the wider layout, never dropping that field)."""
        if not entity_ids:
            return
        layout = self._stored_layout(cur)
        locked = cur.execute(
            f"SELECT entity_id FROM {SCHEMA}.entities WHERE entity_id = ANY(%s) "
            'ORDER BY entity_id COLLATE "C" FOR UPDATE',
            (entity_ids,),
        ).fetchall()
        targets = [r[0] for r in locked]
        rows = cur.execute(
            f"SELECT entity_id, first_seq, events, event_ids, n_fields FROM {SCHEMA}.segments "
            "WHERE entity_id = ANY(%s) ORDER BY entity_id, first_seq",
            (targets,),
        ).fetchall()
        merged, old_keys, old_seqs = [], [], []
        for entity, group in itertools.groupby(rows, key=lambda r: r[0]):
            parts = [(r[1], bytes(r[2]), r[3], r[4]) for r in group]
            old_keys += [entity] * len(parts)
            old_seqs += [p[0] for p in parts]
            merged.append((entity, *merge_parts(parts, layout)))
        cur.execute(
            f"DELETE FROM {SCHEMA}.segments WHERE (entity_id, first_seq) IN "
            "(SELECT * FROM unnest(%s::text[], %s::int8[]))",
            (old_keys, old_seqs),
        )
        _copy_segments(cur, merged)
        cur.execute(
            f"UPDATE {SCHEMA}.entities SET n_segments = 1 WHERE entity_id = ANY(%s)",
            ([m[0] for m in merged],),
        )

    def compact(self, entity_ids: Sequence[str] | None = None) -> int:
        """Compact every entity with more than one segment (or those given); how many."""
        if entity_ids is None:
            query = f"SELECT entity_id FROM {SCHEMA}.entities WHERE n_segments > 1"
            targets = [r[0] for r in self.session.read(lambda c: c.execute(query).fetchall())]
        else:
            targets = list(dict.fromkeys(entity_ids))
        for start in range(0, len(targets), COMPACT_BATCH):
            batch = targets[start : start + COMPACT_BATCH]
            self.session.write(lambda conn, batch=batch: self._compact(conn.cursor(), batch))
        return len(targets)

    # ------------------------------------------------------------------------- reads
    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch:
        """Every event of each requested entity (duplicates allowed), or those with ts <= T:
        one query (one snapshot), segments as binary byte strings."""
        wanted = list(dict.fromkeys(entity_ids))

        def query(conn: psycopg.Connection) -> list:
            with conn.cursor(binary=True) as cur:
                return cur.execute(_READ, (wanted,)).fetchall()

        layout = self.layout
        current = layout.n_fields
        blobs: dict[str, list[tuple[int, bytes, int]]] = {}
        wider = False
        for entity, first_seq, events, n_fields in self.session.read(query):
            blobs.setdefault(entity, []).append((first_seq, events, n_fields))
            wider |= n_fields > current
        stored = self.session.read(self._stored_layout) if wider else layout
        packed: dict[str, bytes] = {}
        for entity, parts in blobs.items():
            if len(parts) == 1 and parts[0][2] == current:
                packed[entity] = parts[0][1]
                continue
            parts.sort()
            merged = merge_segments([stored.records(p[1], p[2]) for p in parts])
            if stored is not layout:
                merged = pg_catalog.in_layout(merged, layout)
            packed[entity] = merged.tobytes()
        batch = EventBatch.from_records(
            list(entity_ids), [packed.get(e, b"") for e in entity_ids], layout.dtype
        )
        return batch if as_of_ms is None else batch.until(as_of_ms)

    def _stored_layout(self, conn: psycopg.Connection | psycopg.Cursor) -> RecordLayout:
        """The layout the store records now (all its fields, this process's or not)."""
        return RecordLayout(pg_catalog.stored_fields(conn))

    def label_names(self) -> dict[str, list[str]]:
        """Label names of every categorical field, indexed by label (0 ... k-1)."""
        return self.session.read(self._labels.names)

    def category_names(self) -> list[str]:
        """Label names of the `category` field (the default schema's)."""
        return self.label_names().get("category", [])

    def entity_ids(self) -> list[str]:
        query = f"SELECT entity_id FROM {SCHEMA}.entities ORDER BY entity_id"
        return [r[0] for r in self.session.read(lambda c: c.execute(query).fetchall())]

    def counts(self) -> dict[str, int]:
        def query(conn: psycopg.Connection) -> dict[str, int]:
            entities, events = conn.execute(
                f"SELECT count(*), coalesce(sum(n_events), 0) FROM {SCHEMA}.entities"
            ).fetchone()
            labels = conn.execute(f"SELECT count(*) FROM {SCHEMA}.labels").fetchone()[0]
            return {"entities": int(entities), "events": int(events), "categories": labels}

        return self.session.read(query)

    # ------------------------------------------------------------------------- delete
    def delete(self, entity_id: str) -> int:
        """Remove the entity's events and their event ids; how many events were removed.
        Logged as a change (every host invalidates it), even when there was nothing."""

        def body(conn: psycopg.Connection) -> int:
            cur = conn.cursor()
            (change_seq,) = cur.execute(_TAKE_SEQUENCES, (0, 0)).fetchone()[1:]
            rows = cur.execute(
                f"SELECT n, event_ids FROM {SCHEMA}.segments WHERE entity_id = %s", (entity_id,)
            ).fetchall()
            ids = [i for _, text in rows if text for i in text.split(ID_SEPARATOR)]
            if ids:
                cur.execute(f"DELETE FROM {SCHEMA}.event_ids WHERE event_id = ANY(%s)", (ids,))
            cur.execute(f"DELETE FROM {SCHEMA}.segments WHERE entity_id = %s", (entity_id,))
            cur.execute(f"DELETE FROM {SCHEMA}.entities WHERE entity_id = %s", (entity_id,))
            changes.append(cur, change_seq, [entity_id], now_ms())
            return sum(n for n, _ in rows)

        return self.session.write(body)

    # ------------------------------------------------------------------ served versions
    def served_versions(self) -> dict[str, tuple[str, int]]:
        """Each version served from this store (by any host): (its content hash, when first
        served). The time also names the version's serving epoch: `forget` and serving it
        again start a new one (drift baselines of an older epoch are discarded)."""
        return self.session.read(pg_catalog.served_versions)

    def record_versions(self, hashes: dict[str, str], source: str = "the definitions") -> None:
        """Record versions about to be served; SchemaMismatch naming the version and both
        hashes when one was served before with another definition (versions are immutable)."""
        self.session.write(lambda conn: pg_catalog.record_versions(conn, hashes, source))

    def forget_version(self, name: str) -> bool:
        """Drop a recorded version (it may be served again with any definition), logged as a
        change of every entity: each host's listener clears its cache when it applies it."""

        def body(conn: psycopg.Connection) -> bool:
            cur = conn.cursor()
            (change_seq,) = cur.execute(_TAKE_SEQUENCES, (0, 0)).fetchone()[1:]
            if not pg_catalog.forget_version(conn, name):
                raise _NothingForgotten  # rolls the change sequence number back
            changes.append(cur, change_seq, None, now_ms())
            return True

        try:
            return self.session.write(body)
        except _NothingForgotten:
            return False

    def service_connections(self) -> list[str]:
        """The service processes (of any host) connected to the store now, as
        `featurestore-worker-0 from 10.0.0.7`: what must stop before a version is forgotten."""
        return self.session.read(pg_catalog.service_connections)

    # ------------------------------------------------------------------------- upkeep
    def prune_requests(self, limit: int = requests.PRUNE_BATCH) -> int:
        """Forget up to `limit` request ids older than the retention, oldest first."""
        cutoff = now_ms() - self.request_id_retention_ms
        if not self.session.read(lambda conn: pg_requests.has_expired(conn, cutoff)):
            return 0
        return self.session.write(lambda conn: pg_requests.prune(conn, cutoff, limit))

    def prune_changes(self, limit: int = changes.PRUNE_BATCH) -> int:
        """Forget up to `limit` change-log rows older than CHANGE_LOG_RETENTION_MS."""
        cutoff = now_ms() - self.change_log_retention_ms
        if not self.session.read(lambda conn: changes.has_expired(conn, cutoff)):
            return 0
        return self.session.write(lambda conn: changes.prune(conn, cutoff, limit))

    def check_writable(self) -> None:
        """StoreUnavailable unless a small write commits now (the server is back)."""
        self.session.write(
            lambda conn: conn.execute(
                f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ('write_checked_ms', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (now_ms(),),
            )
        )


class _NothingForgotten(Exception):
    """No such version: the transaction of `forget_version` is rolled back."""


def _copy_segments(cur: psycopg.Cursor, rows: list[tuple]) -> None:
    """`segments` rows with one binary COPY."""
    with cur.copy(_COPY_SEGMENTS) as copy:
        copy.set_types(SEGMENT_COLUMNS)
        for row in rows:
            copy.write_row(row)
