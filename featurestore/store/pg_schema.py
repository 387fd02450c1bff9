"""The PostgreSQL store's schema: its tables, how a database is recognised as ours, created on
first use and versioned.

Everything lives in the schema `featurestore` of the STORE_URL's database (nothing is
created elsewhere), with `meta.application_id` = the SQLite store's APPLICATION_ID and
`meta.schema_version`. Opening a database:
- no `featurestore` schema, or an empty one: the tables are created, in one transaction
  under an advisory lock, so processes that start at once create them once;
- ours at SCHEMA_VERSION: used as it is; older: migrated in one transaction (none yet);
- a `featurestore` schema with other tables, another application id, missing tables, or a
  schema version newer than this code knows: `StoreCorrupt` naming it (the process stops
  with EXIT_DATA; upgrade featurestore before it writes to a newer store).

Tables (keys in COLLATE "C": strings compare and sort as bytes, as SPEC §3 says):
- `segments(entity_id, first_seq, n, events, event_ids)`: the packed per-entity segments of
  `segments.py` (bulk reads); `events` is stored uncompressed (STORAGE EXTERNAL), so a read
  is a copy, not a decompression;
- `entities(entity_id, n_events, n_segments)`, `event_ids(event_id)`, `requests(...)`,
  `fields(position, name, kind, required)` (the record layout, `layout.py`), `labels(field,
  label, name)` (per categorical field), `versions(name, content_hash, first_served_ms)`
  (served versions are immutable): as in the SQLite store (its schema 3);
- `counters(id = 1, next_seq, change_seq)`: ONE row. Every write that stores or deletes
  events updates it in its transaction, so those transactions commit one after the other in
  the order of their sequence numbers: event sequence numbers and change sequence numbers are
  contiguous and increase across commits, and new category labels are assigned under the same
  row lock (contiguous across hosts);
- `changes(seq, committed_ms, entity_ids)`: the durable change log (`changes.py`;
  `entity_ids` NULL: every entity, a version was forgotten).
"""

from __future__ import annotations

import psycopg

from featurestore.store.errors import StoreCorrupt
from featurestore.store.schema import APPLICATION_ID

SCHEMA = "featurestore"
SCHEMA_VERSION = 1
TABLES = frozenset(
    {
        "meta",
        "counters",
        "fields",
        "labels",
        "versions",
        "entities",
        "segments",
        "event_ids",
        "requests",
        "changes",
    }
)
CREATE_LOCK = 0x46536576_0001  # pg_advisory_xact_lock key of schema creation and migration

CREATE = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"""CREATE TABLE {SCHEMA}.meta (key text COLLATE "C" PRIMARY KEY, value bigint NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.counters (
        id smallint PRIMARY KEY CHECK (id = 1),
        next_seq bigint NOT NULL, change_seq bigint NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.fields (
        position integer PRIMARY KEY, name text COLLATE "C" NOT NULL UNIQUE,
        kind text NOT NULL, required boolean NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.labels (
        field text COLLATE "C" NOT NULL, label integer NOT NULL, name text COLLATE "C" NOT NULL,
        PRIMARY KEY (field, label), UNIQUE (field, name))""",
    f"""CREATE TABLE {SCHEMA}.versions (
        name text COLLATE "C" PRIMARY KEY, content_hash text NOT NULL,
        first_served_ms bigint NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.entities (
        entity_id text COLLATE "C" PRIMARY KEY,
        n_events bigint NOT NULL, n_segments integer NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.segments (
        entity_id text COLLATE "C" NOT NULL, first_seq bigint NOT NULL, n integer NOT NULL,
        events bytea NOT NULL, event_ids text COLLATE "C" NOT NULL, n_fields integer NOT NULL,
        PRIMARY KEY (entity_id, first_seq))""",
    f"ALTER TABLE {SCHEMA}.segments ALTER COLUMN events SET STORAGE EXTERNAL",
    f"""CREATE TABLE {SCHEMA}.event_ids (event_id text COLLATE "C" PRIMARY KEY)""",
    f"""CREATE TABLE {SCHEMA}.requests (
        request_id text COLLATE "C" PRIMARY KEY, created_ms bigint NOT NULL, digest bytea,
        accepted integer NOT NULL, duplicates integer NOT NULL)""",
    f"CREATE INDEX requests_by_age ON {SCHEMA}.requests (created_ms)",
    f"""CREATE TABLE {SCHEMA}.changes (
        seq bigint PRIMARY KEY, committed_ms bigint NOT NULL, entity_ids text[])""",
    f"CREATE INDEX changes_by_age ON {SCHEMA}.changes (committed_ms)",
    f"INSERT INTO {SCHEMA}.counters (id, next_seq, change_seq) VALUES (1, 1, 0)",
    f"""INSERT INTO {SCHEMA}.meta (key, value) VALUES
        ('schema_version', {SCHEMA_VERSION}), ('application_id', {APPLICATION_ID})""",
)
MIGRATIONS: dict[int, tuple[str, ...]] = {}  # version -> statements to the next version


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_catalog.pg_tables WHERE schemaname = %s", (SCHEMA,)
    ).fetchall()
    return {r[0] for r in rows}


def _meta(conn: psycopg.Connection) -> dict[str, int]:
    return dict(conn.execute(f"SELECT key, value FROM {SCHEMA}.meta").fetchall())


def found_version(conn: psycopg.Connection, name: str) -> int | None:
    """The schema version of the store in this database (None: there is none yet);
    StoreCorrupt if what is there is not a featurestore store this code may use."""
    tables = _tables(conn)
    if not tables:
        return None
    if "meta" not in tables:
        listed = ", ".join(sorted(tables)[:5])
        raise StoreCorrupt(
            name,
            f"schema {SCHEMA!r} holds tables of another application ({listed}); "
            "use another database",
        )
    meta = _meta(conn)
    if meta.get("application_id") != APPLICATION_ID:
        raise StoreCorrupt(
            name, f"schema {SCHEMA!r} is not a featurestore event store; use another database"
        )
    version = meta.get("schema_version")
    if not isinstance(version, int) or version < 1:
        raise StoreCorrupt(name, f"damaged featurestore schema (schema_version {version!r})")
    if version > SCHEMA_VERSION:
        raise StoreCorrupt(
            name,
            f"schema version {version} is newer than this featurestore knows "
            f"({SCHEMA_VERSION}); upgrade featurestore",
        )
    missing = TABLES - tables
    if missing:
        raise StoreCorrupt(
            name, f"damaged featurestore schema (missing tables: {', '.join(sorted(missing))})"
        )
    return version


def ensure_schema(conn: psycopg.Connection, name: str) -> int:
    """Create or migrate the schema (an autocommit connection); the version found."""
    version = found_version(conn, name)
    if version == SCHEMA_VERSION:
        return version
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (CREATE_LOCK,))
        version = found_version(conn, name)  # another process may have done it meanwhile
        if version is None:
            for statement in CREATE:
                conn.execute(statement)
            return SCHEMA_VERSION
        for step in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[step]:
                conn.execute(statement)
            conn.execute(
                f"UPDATE {SCHEMA}.meta SET value = %s WHERE key = 'schema_version'", (step + 1,)
            )
    return version
