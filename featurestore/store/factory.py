"""Opening the event store of a process's settings: the one place that picks the backend
(the embedded SQLite store of DATA_DIR) and hands it the event schema of the definitions the
process serves, so every role and command stores and reads the same fields."""

from __future__ import annotations

from featurestore.config import Settings
from featurestore.store.sqlite import SqliteEventStore


def open_event_store(settings: Settings) -> SqliteEventStore:
    """The store of these settings, created on first use; StoreCorrupt / StoreUnavailable when
    it cannot be used, SchemaMismatch when the definitions' fields do not fit it."""
    defs = settings.definitions
    return SqliteEventStore(
        settings.data_dir,
        request_id_retention_ms=settings.request_id_retention_ms,
        schema=defs.schema,
        schema_source=defs.source,
    )
