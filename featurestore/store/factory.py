"""Opening the event store of a process's settings: the one place that picks the backend —
the embedded SQLite store of DATA_DIR (STORE_URL empty) or the PostgreSQL database of
STORE_URL (a store several hosts share, SPEC §15) — and hands it the event schema of the
definitions the process serves, so every role and command stores and reads the same fields.

The PostgreSQL backend is imported only when chosen: a SQLite deployment never loads psycopg.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.config import Settings, redact_url
from featurestore.store.base import EventStore

SQLITE_FILENAME = "events.sqlite3"  # the SQLite store's file in DATA_DIR (sqlite.DB_FILENAME)


def open_event_store(settings: Settings, *, role: str = "cli") -> EventStore:
    """The store of these settings, created on first use; StoreCorrupt / StoreUnavailable when
    it cannot be used, SchemaMismatch when the definitions' fields do not fit it. `role` names
    the connection on a PostgreSQL server (`featurestore-<role>` in pg_stat_activity)."""
    defs = settings.definitions
    if settings.shared_store:
        from featurestore.store.pg_connection import Connector
        from featurestore.store.postgres import PostgresEventStore

        return PostgresEventStore(
            Connector.of(settings, role),
            request_id_retention_ms=settings.request_id_retention_ms,
            change_log_retention_ms=settings.change_log_retention_ms,
            schema=defs.schema,
            schema_source=defs.source,
        )
    from featurestore.store.sqlite import SqliteEventStore

    return SqliteEventStore(
        settings.data_dir,
        request_id_retention_ms=settings.request_id_retention_ms,
        schema=defs.schema,
        schema_source=defs.source,
    )


def store_name(settings: Settings) -> str:
    """The store as messages name it: its URL without the password, or its file."""
    if settings.shared_store:
        return redact_url(settings.store_url)
    return str(Path(settings.data_dir) / SQLITE_FILENAME)
