"""The SQLite store's schema: how a file is recognised as ours, created, and migrated.

A store file carries `PRAGMA application_id = APPLICATION_ID` and `meta.schema_version`.
Opening a file:
- empty (a new or zero-length file): the schema is created, with the application id;
- ours at SCHEMA_VERSION: used as it is; at an older version: migrated in one transaction
  (schema 1, written before the application id existed, is recognised by its tables);
- anything else is refused with `StoreCorrupt` naming what it is: not a database (SQLite's
  own check), another application's database, a damaged schema, or a schema newer than this
  code knows (upgrade featurestore, do not let an old one write to it).

Schema history:
1. `requests(request_id, created_ms, response)`: the whole answer, entity list included.
2. `requests(request_id, created_ms, digest, accepted, duplicates)` + an index on created_ms:
   a body digest (a reused id with another body is a conflict) and a small answer; rows
   older than the retention are pruned by the service. Migration keeps the unexpired rows
   of schema 1 with a NULL digest (their bodies are unknown: a repeat is a replay).
3. Event fields as data (SPEC §14): `fields(position, name, kind, required)` (the store's
   record layout, `layout.py`), `labels(field, label, name)` (labels per categorical field,
   replacing `categories`), `segments.n_fields` (the fields a segment was written with) and
   `versions(name, content_hash, first_served_ms)` (served versions are immutable). Migration:
   the fields of Part I (`value` required, `category`), its categories as labels of
   `category`, every segment written with those 2 fields.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from featurestore.store.errors import StoreCorrupt

APPLICATION_ID = 0x46536576  # "FSev"
SCHEMA_VERSION = 3
TABLES = frozenset({"meta", "entities", "segments", "event_ids", "requests"})  # every version

REQUESTS_TABLE = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, digest BLOB,
    accepted INTEGER NOT NULL, duplicates INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS requests_by_age ON requests (created_ms);
"""

FIELDS_TABLES = """
CREATE TABLE IF NOT EXISTS fields (
    position INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
    required INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    field TEXT NOT NULL, label INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (field, label), UNIQUE (field, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY, content_hash TEXT NOT NULL, first_served_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""

CREATE = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entities (
    entity_id TEXT PRIMARY KEY, n_events INTEGER NOT NULL, n_segments INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    entity_id TEXT NOT NULL, first_seq INTEGER NOT NULL, n INTEGER NOT NULL,
    events BLOB NOT NULL, event_ids TEXT NOT NULL, n_fields INTEGER NOT NULL,
    UNIQUE (entity_id, first_seq)
);
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
{REQUESTS_TABLE}
{FIELDS_TABLES}
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', {SCHEMA_VERSION}),
    ('next_seq', 1);
PRAGMA application_id = {APPLICATION_ID};
"""

# Schema 1 -> 2: the answer shrinks to two numbers, a digest column (unknown: NULL) appears,
# and only the rows still inside the retention are carried over (parameter: the cutoff).
_MIGRATE_1_TO_2 = (
    "ALTER TABLE requests RENAME TO requests_v1",
    REQUESTS_TABLE,
    "INSERT INTO requests (request_id, created_ms, digest, accepted, duplicates) "
    "SELECT request_id, created_ms, NULL, "
    "coalesce(json_extract(CAST(response AS TEXT), '$.accepted'), 0), "
    "coalesce(json_extract(CAST(response AS TEXT), '$.duplicates'), 0) "
    "FROM requests_v1 WHERE created_ms >= :cutoff",
    "DROP TABLE requests_v1",
)
# Schema 2 -> 3: Part I's two fields, its categories as labels of `category`.
_MIGRATE_2_TO_3 = (
    FIELDS_TABLES,
    "INSERT INTO fields (position, name, kind, required) "
    "VALUES (0, 'value', 'numeric', 1), (1, 'category', 'categorical', 0)",
    "INSERT INTO labels (field, label, name) SELECT 'category', label, name FROM categories",
    "DROP TABLE categories",
    "ALTER TABLE segments ADD COLUMN n_fields INTEGER NOT NULL DEFAULT 2",
)
MIGRATIONS: dict[int, tuple[str, ...]] = {1: _MIGRATE_1_TO_2, 2: _MIGRATE_2_TO_3}


def _script(conn: sqlite3.Connection, sql: str, params: dict | None = None) -> None:
    """Run `;`-separated statements one by one (executescript would COMMIT)."""
    for statement in sql.split(";"):
        if statement.strip():
            conn.execute(statement, params or {})


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def check_identity(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database that is not a featurestore store (before anything writes to it)."""
    application_id = conn.execute("PRAGMA application_id").fetchone()[0]
    tables = _tables(conn)
    if application_id not in (0, APPLICATION_ID):
        raise StoreCorrupt(
            path,
            f"not a featurestore event store (SQLite application_id {application_id:#010x}, "
            f"ours is {APPLICATION_ID:#010x}); use another DATA_DIR",
        )
    if not tables:
        return  # a new store
    missing = TABLES - tables
    if missing and application_id == 0:
        listed = ", ".join(sorted(tables)[:5])
        raise StoreCorrupt(
            path,
            f"a SQLite database of another application (tables: {listed}); use another DATA_DIR",
        )
    if missing:
        raise StoreCorrupt(
            path, f"damaged featurestore schema (missing tables: {', '.join(sorted(missing))})"
        )


def ensure_schema(conn: sqlite3.Connection, path: Path, retention_cutoff_ms: int) -> int:
    """Inside a write transaction: create or migrate the schema; the version found."""
    check_identity(conn, path)  # again: another process may have created it meanwhile
    if not _tables(conn):
        _script(conn, CREATE)
        return SCHEMA_VERSION
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    found = None if row is None else row[0]
    if not isinstance(found, int) or found < 1:
        raise StoreCorrupt(path, f"damaged featurestore schema (schema_version {found!r})")
    if found > SCHEMA_VERSION:
        raise StoreCorrupt(
            path,
            f"schema version {found} is newer than this featurestore knows ({SCHEMA_VERSION}); "
            "upgrade featurestore",
        )
    for version in range(found, SCHEMA_VERSION):
        for sql in MIGRATIONS[version]:
            _script(conn, sql, {"cutoff": retention_cutoff_ms})
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (version + 1,))
    if found < SCHEMA_VERSION:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    return found
