"""The event stores the store tests run against, side by side (SPEC §15: the store tests run
against both backends): a SQLite file in a private DATA_DIR, or a PostgreSQL database with
an empty `featurestore` schema. A `Target` opens stores on it (several connections, other
processes: `settings` is picklable) and reads its tables as an operator would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg

from featurestore.config import Settings
from featurestore.store.base import EventStore
from featurestore.store.batch import EVENT_DTYPE
from featurestore.store.factory import open_event_store
from featurestore.store.pg_schema import SCHEMA
from featurestore.store.sqlite import DB_FILENAME

BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class Target:
    backend: str
    settings: Settings

    @classmethod
    def make(cls, backend: str, data_dir: Path, pg_url: str | None = None, **env: str) -> Target:
        variables = {"DATA_DIR": str(data_dir), **env}
        if backend == "postgresql":
            assert pg_url is not None
            variables["STORE_URL"] = pg_url
        return cls(backend, Settings.from_env(variables))

    def open(self, **overrides) -> EventStore:
        """A new store object (its own connection) on this target."""
        settings = self.settings
        if overrides:
            settings = Settings.from_env({**settings.as_env(), **overrides})
        return open_event_store(settings, role="test")

    def reset(self) -> None:
        """An empty store: no file, or no `featurestore` schema."""
        if self.backend == "postgresql":
            with psycopg.connect(self.settings.store_url, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    def sql(self, query: str, args: Sequence = ()) -> list[tuple]:
        """A query with `?` placeholders on the store's tables, by another connection."""
        if self.backend == "postgresql":
            with psycopg.connect(
                self.settings.store_url, autocommit=True, options=f"-c search_path={SCHEMA}"
            ) as conn:
                cursor = conn.execute(query.replace("?", "%s"), tuple(args))
                return cursor.fetchall() if cursor.description else []
        import sqlite3

        conn = sqlite3.connect(Path(self.settings.data_dir) / DB_FILENAME, isolation_level=None)
        try:
            return conn.execute(query, tuple(args)).fetchall()
        finally:
            conn.close()

    def raw_segments(self, entity: str | None = None) -> list[tuple[str, int, np.ndarray]]:
        """(entity_id, first_seq, records) of every stored segment, straight from the table."""
        query = "SELECT entity_id, first_seq, events FROM segments"
        args: tuple = ()
        if entity is not None:
            query += " WHERE entity_id = ?"
            args = (entity,)
        found = self.sql(query + " ORDER BY entity_id, first_seq", args)
        return [(e, s, np.frombuffer(bytes(blob), dtype=EVENT_DTYPE)) for e, s, blob in found]
