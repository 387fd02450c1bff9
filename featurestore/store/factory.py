"""The one place that chooses the event store of a process: SQLite under DATA_DIR (STORE_URL
empty) or the PostgreSQL server of STORE_URL. Every role and CLI command opens its store here.

The backends are imported only when chosen: a SQLite deployment never loads psycopg.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.config import Settings, redact_url
from featurestore.store.base import EventStore

SQLITE_FILENAME = "events.sqlite3"  # the SQLite store's file in DATA_DIR (sqlite.DB_FILENAME)


def open_store(settings: Settings, role: str = "cli") -> EventStore:
    """The store of these settings, created on first use. `role` names the connection on a
    PostgreSQL server (`featurestore-<role>` in pg_stat_activity). StoreCorrupt if what is
    there is not a usable store, StoreUnavailable if it cannot be opened now."""
    if settings.shared_store:
        from featurestore.store.postgres import open_postgres_store

        return open_postgres_store(settings, role)
    from featurestore.store.sqlite import SqliteEventStore

    return SqliteEventStore(
        settings.data_dir, request_id_retention_ms=settings.request_id_retention_ms
    )


def store_name(settings: Settings) -> str:
    """The store as messages name it: its URL without the password, or its file."""
    if settings.shared_store:
        return redact_url(settings.store_url)
    return str(Path(settings.data_dir) / SQLITE_FILENAME)
