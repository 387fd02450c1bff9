"""PostgreSQL connections of the event store and of the listener (psycopg 3): a deadline on
every connect and every statement, failures sorted into the store's kinds, retries inside.

- `connect`: `connect_timeout` (STORE_CONNECT_TIMEOUT_MS), `statement_timeout`
  (STORE_STATEMENT_TIMEOUT_MS) and `lock_timeout` for every statement, an idle-in-transaction
  timeout, TCP keepalives and `tcp_user_timeout` so that a server that vanished without a
  word is noticed, and an `application_name` naming the role (`featurestore-worker-0`...).
- `classify`: what a psycopg error means. A transaction that lost a conflict (serialization
  failure, deadlock, lock timeout) is RETRY: run again, always safe. A lost or refused
  connection (server down, restarting, shut down, network) is RECONNECT. A server that cannot
  take the work (disk full, too many connections, read-only, a statement timeout, bad
  credentials or privileges) is UNAVAILABLE; damaged data or a missing table of ours,
  CORRUPT; anything else is a bug and is raised as it is.
- `Session`: one connection, opened on first use and again after it broke, that runs a
  function in a transaction (`write`) or in autocommit (`read`), retrying RETRY until
  RETRY_DEADLINE_S and RECONNECT until RECONNECT_DEADLINE_S, then `StoreUnavailable`. A write
  is retried after a lost connection only when it is `replayable` (idempotent by request id,
  or refused before it committed), because a COMMIT whose answer was lost may have happened.

The URL's password never appears in a message: they name the store by `redact_url`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

import psycopg

from featurestore.config import Settings, redact_url
from featurestore.store.errors import StoreCorrupt, StoreError, StoreUnavailable

log = logging.getLogger("store")
T = TypeVar("T")

RETRY_DEADLINE_S = 30.0  # conflicts (deadlocks, serialization failures) retried this long
RECONNECT_DEADLINE_S = 2.0  # a lost server is waited for this long, then StoreUnavailable
BACKOFF_FIRST_S = 0.02
BACKOFF_MAX_S = 0.25
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
KEEPALIVE_IDLE_S = 5
KEEPALIVE_INTERVAL_S = 2
KEEPALIVE_COUNT = 3


class Kind(Enum):
    RETRY = "retry"  # the transaction lost a conflict: run it again
    RECONNECT = "reconnect"  # the connection is gone or refused
    UNAVAILABLE = "unavailable"  # the server cannot do it now
    CORRUPT = "corrupt"  # our data is damaged
    BUG = "bug"


RETRY_STATES = frozenset({"40001", "40P01", "55P03"})  # serialization, deadlock, lock timeout
RECONNECT_STATES = frozenset({"57P01", "57P02", "57P03"})  # admin/crash shutdown, starting up
CORRUPT_STATES = frozenset({"XX001", "XX002", "42P01"})  # data/index corrupted, no such table
UNAVAILABLE_CLASSES = ("53", "28", "3D")  # resources, authorisation, no such database
UNAVAILABLE_STATES = frozenset({"57014", "25006", "42501", "57P04", "58030"})


def classify(exc: psycopg.Error, conn: psycopg.Connection | None = None) -> Kind:
    state = exc.sqlstate or ""
    if state:
        return _state_kind(state)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return Kind.RECONNECT  # the connection failed or broke: no server answer at all
    return Kind.RECONNECT if conn is not None and conn.broken else Kind.BUG


def _state_kind(state: str) -> Kind:
    """What a server's SQLSTATE means for the store."""
    if state in RETRY_STATES:
        return Kind.RETRY
    if state in RECONNECT_STATES or state.startswith("08"):
        return Kind.RECONNECT
    if state in CORRUPT_STATES:
        return Kind.CORRUPT
    if state in UNAVAILABLE_STATES or state.startswith(UNAVAILABLE_CLASSES):
        return Kind.UNAVAILABLE
    return Kind.BUG


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def store_error(exc: psycopg.Error, name: str, kind: Kind) -> StoreError:
    """The StoreError of a classified failure (every kind but BUG)."""
    problem = _first_line(exc)
    if kind is Kind.CORRUPT:
        return StoreCorrupt(name, f"the PostgreSQL store is damaged ({problem})")
    if kind is Kind.RECONNECT:
        return StoreUnavailable(name, f"cannot reach the PostgreSQL server ({problem})")
    return StoreUnavailable(name, f"the PostgreSQL server cannot take this now ({problem})")


@dataclass(frozen=True)
class Connector:
    """How to open a connection: the URL and the deadlines of the settings."""

    url: str
    connect_timeout_ms: int
    statement_timeout_ms: int
    application_name: str = "featurestore"

    @classmethod
    def of(cls, settings: Settings, role: str) -> Connector:
        return cls(
            settings.store_url,
            settings.store_connect_timeout_ms,
            settings.store_statement_timeout_ms,
            f"featurestore-{role}",
        )

    @property
    def name(self) -> str:
        """The store as messages and logs name it (no password)."""
        return redact_url(self.url)

    def connect(self, *, autocommit: bool = True) -> psycopg.Connection:
        statement_ms = self.statement_timeout_ms
        options = (
            f"-c statement_timeout={statement_ms} -c lock_timeout={statement_ms} "
            f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
        )
        return psycopg.connect(
            self.url,
            autocommit=autocommit,
            connect_timeout=max(1, round(self.connect_timeout_ms / 1000)),
            application_name=self.application_name,
            options=options,
            keepalives=1,
            keepalives_idle=KEEPALIVE_IDLE_S,
            keepalives_interval=KEEPALIVE_INTERVAL_S,
            keepalives_count=KEEPALIVE_COUNT,
            tcp_user_timeout=statement_ms + self.connect_timeout_ms,
        )


class Session:
    """One connection of one thread, (re)opened when needed; `read` and `write` run a
    function on it with the retries described above."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.name = connector.name
        self._conn: psycopg.Connection | None = None
        self._sent = False
        self.on_connect: Callable[[psycopg.Connection], None] | None = None

    def connection(self) -> psycopg.Connection:
        conn = self._conn
        if conn is None or conn.closed:
            conn = self.connector.connect()
            self._conn = conn
            if self.on_connect is not None:
                self.on_connect(conn)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def read(self, body: Callable[[psycopg.Connection], T]) -> T:
        """`body(conn)` in autocommit (each statement its own snapshot); always retried."""
        return self._run(body, write=False, replayable=True)

    def write(
        self,
        body: Callable[[psycopg.Connection], T],
        *,
        replayable: bool = True,
        on_rollback: Callable[[], None] | None = None,
    ) -> T:
        """`body(conn)` in one transaction (all or nothing). `on_rollback` runs after every
        attempt that did not commit (to forget what the attempt cached)."""
        return self._run(body, write=True, replayable=replayable, on_rollback=on_rollback)

    def _attempt(self, body, write: bool):
        self._sent = False
        conn = self.connection()
        self._sent = True  # from here on a write may have reached the server
        if not write:
            return body(conn)
        with conn.transaction():
            return body(conn)

    def _run(
        self,
        body: Callable[[psycopg.Connection], T],
        *,
        write: bool,
        replayable: bool,
        on_rollback: Callable[[], None] | None = None,
    ) -> T:
        started = time.monotonic()
        backoff = BACKOFF_FIRST_S
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(body, write)
            except psycopg.Error as exc:
                if on_rollback is not None:
                    on_rollback()
                kind = classify(exc, self._conn)
                if kind is Kind.BUG:
                    raise
                if kind is Kind.RECONNECT:
                    self.close()
                waited = time.monotonic() - started
                if self._again(kind, waited, write, replayable or not self._sent):
                    if attempt == 2 or log.isEnabledFor(logging.DEBUG):
                        log.warning("%s: %s; retrying", self.name, _first_line(exc))
                    time.sleep(backoff)  # backoff: the server is restarting or busy
                    backoff = min(BACKOFF_MAX_S, backoff * 2)
                    continue
                raise store_error(exc, self.name, kind) from None
            except BaseException:
                if on_rollback is not None:
                    on_rollback()
                raise

    @staticmethod
    def _again(kind: Kind, waited_s: float, write: bool, replayable: bool) -> bool:
        if kind is Kind.RETRY:
            return waited_s < RETRY_DEADLINE_S
        if kind is Kind.RECONNECT:
            return waited_s < RECONNECT_DEADLINE_S and (replayable or not write)
        return False
