"""What the PostgreSQL store records about its own contents (SPEC §14 on a shared store): its
record layout (`fields`), the labels of each categorical field (`labels`), and the versions
served from it (`versions`). The rules are the SQLite store's (`layout.py`, `labels.py`);
what is particular here is that several hosts change these tables at once, so every change
takes the `counters` row lock first (the one that orders the store's writes, `pg_schema.py`).
"""

from __future__ import annotations

import numpy as np
import psycopg

from featurestore.definitions.model import EventSchema
from featurestore.store.errors import SchemaMismatch
from featurestore.store.labels import LabelBook
from featurestore.store.layout import RecordLayout, StoredField, reconcile
from featurestore.store.pg_schema import SCHEMA
from featurestore.timestamps import now_ms

WRITE_LOCK = f"SELECT 1 FROM {SCHEMA}.counters WHERE id = 1 FOR UPDATE"


# ---------------------------------------------------------------------------- the layout
def stored_fields(conn: psycopg.Connection | psycopg.Cursor) -> tuple[StoredField, ...]:
    rows = conn.execute(
        f"SELECT name, kind, required FROM {SCHEMA}.fields ORDER BY position"
    ).fetchall()
    return tuple(StoredField(name, kind, bool(required)) for name, kind, required in rows)


def adopt_layout(conn: psycopg.Connection, schema: EventSchema, source: str) -> RecordLayout:
    """Record the schema's fields in a new store, or check them against the stored ones
    (appending new optional fields, relaxing required ones): `layout.reconcile`, in one
    transaction under the write lock (two hosts adding a field at once add it once)."""
    with conn.transaction():
        conn.execute(WRITE_LOCK)
        stored = stored_fields(conn)
        layout = reconcile(stored, schema, source)
        for position, f in enumerate(layout.fields):
            if position >= len(stored) or stored[position] != f:
                conn.execute(
                    f"INSERT INTO {SCHEMA}.fields (position, name, kind, required) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (position) DO UPDATE SET "
                    "name = excluded.name, kind = excluded.kind, required = excluded.required",
                    (position, f.name, f.kind, f.required),
                )
    return layout


def in_layout(records: np.ndarray, layout: RecordLayout) -> np.ndarray:
    """Records of a wider layout (fields another host added since this one opened the
    store) in this process's layout: the fields it knows, in its order."""
    out = np.empty(records.size, dtype=layout.dtype)
    for name in out.dtype.names:
        out[name] = records[name]
    return out


# ---------------------------------------------------------------------------- the labels
class PgLabels:
    """The labels of each categorical field, as one connection knows them."""

    def __init__(self, fields: tuple[str, ...]) -> None:
        self.book = LabelBook(fields)

    def refresh(self, cur: psycopg.Cursor | psycopg.Connection, field: str) -> None:
        self.book.learn(
            field,
            cur.execute(
                f"SELECT label, name FROM {SCHEMA}.labels WHERE field = %s AND label >= %s "
                "ORDER BY label",
                (field, self.book.known(field)),
            ).fetchall(),
        )

    def labels_for(self, cur: psycopg.Cursor, field: str, values: np.ndarray) -> np.ndarray:
        """Labels of a field's values; new names get the next labels under the write lock
        (held to the commit), after reading what other hosts committed meanwhile."""
        self.refresh(cur, field)
        if self.book.unknown(field, values):
            cur.execute(WRITE_LOCK)
            self.refresh(cur, field)
            new = self.book.unknown(field, values)
            if new:
                rows = self.book.assign(field, new)
                cur.execute(
                    f"INSERT INTO {SCHEMA}.labels (field, label, name) "
                    "SELECT * FROM unnest(%s::text[], %s::int4[], %s::text[])",
                    ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]),
                )
        return self.book.encode(field, values)

    def names(self, conn: psycopg.Connection) -> dict[str, list[str]]:
        for field in self.book.fields:
            self.refresh(conn, field)
        return {field: list(names) for field, names in self.book.names.items()}

    def forget(self) -> None:
        self.book.forget()


# -------------------------------------------------------------------------- the versions
def served_versions(conn: psycopg.Connection) -> dict[str, tuple[str, int]]:
    """Each served version: (its content hash, when first served: its serving epoch)."""
    rows = conn.execute(
        f"SELECT name, content_hash, first_served_ms FROM {SCHEMA}.versions"
    ).fetchall()
    return {name: (digest, int(first)) for name, digest, first in rows}


def record_versions(conn: psycopg.Connection, hashes: dict[str, str], source: str) -> None:
    """Inside a transaction: record versions about to be served; SchemaMismatch naming the
    version and both hashes when one was served before (from any host) with another one."""
    conn.execute(WRITE_LOCK)
    recorded = served_versions(conn)
    for name, digest in hashes.items():
        if name in recorded and recorded[name][0] != digest:
            raise SchemaMismatch(
                f"{source}: version {name!r} was served with definition "
                f"{recorded[name][0][:16]} and is now {digest[:16]}: a served version is "
                "immutable; give the changed definition a new name, or drop the old "
                f"one with `featurestore definitions forget {name}`"
            )
    missing = [(name, digest) for name, digest in hashes.items() if name not in recorded]
    if missing:
        conn.execute(
            f"INSERT INTO {SCHEMA}.versions (name, content_hash, first_served_ms) "
            "SELECT n, h, %s FROM unnest(%s::text[], %s::text[]) AS t(n, h)",
            (now_ms(), [m[0] for m in missing], [m[1] for m in missing]),
        )


def forget_version(conn: psycopg.Connection, name: str) -> bool:
    deleted = conn.execute(f"DELETE FROM {SCHEMA}.versions WHERE name = %s", (name,))
    return deleted.rowcount > 0


# A service's processes name their connections by role (`pg_connection.Connector.of`).
SERVICE_ROLES = r"^featurestore-(worker-[0-9]+|drift|listener)$"


def service_connections(conn: psycopg.Connection) -> list[str]:
    """The connections of service processes to this database, from any host but this
    connection, as `featurestore-worker-0 from 10.0.0.7` (the address is shown to a role
    allowed to see it; a local socket has none)."""
    rows = conn.execute(
        "SELECT application_name, host(client_addr) FROM pg_catalog.pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        "AND application_name ~ %s ORDER BY 1, 2",
        (SERVICE_ROLES,),
    ).fetchall()
    return [name if addr is None else f"{name} from {addr}" for name, addr in rows]
