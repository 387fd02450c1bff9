"""`ChangeListener`: follows the shared store's change log and keeps this host's cache fresh
(SPEC §15; the contract with gateway and broker: `featurestore/nearcache.py`).

A separate process rather than a thread of the broker: the broker's one poll loop answers
ZeroMQ cache hits, and applying a large catch-up (tens of thousands of invalidations) or
waiting on a database that went away must never stall it or share its interpreter lock; a
listener that hangs or dies costs nothing but its lease, which then runs out by itself and
turns every lookup into a computation from the store, and supervisord restarts it alone.

The loop, on one autocommit connection that LISTENs on the change channel:
- `poll`: note the time C, read the head of the change log, apply every change after the
  position (the last change applied, kept in the cache segment so that a restarted
  listener resumes where the last one stopped), then renew the lease with C: every change
  committed before C is applied. A segment no listener took over yet (a new cache, or one
  dropped and made again) and a log pruned past the position (away longer than
  CHANGE_LOG_RETENTION_MS) cannot be caught up: the whole cache is cleared, and the position
  jumps to the head. So does a change of every entity (a forgotten version).
- between polls it waits for a NOTIFY (one per commit, carrying the sequence number) or for
  RENEW_FRACTION of MAX_STALENESS_MS, whichever comes first, so an idle store still renews
  the lease in time and a commit is applied within milliseconds.
- a lost connection (the server restarted, the network, `pg_terminate_backend`) is made again
  with a growing pause; the lease is NOT revoked: the hits it still covers are within the
  bound (nothing newer than C can be missing from them), and they keep being served while the
  database is away, as SPEC §15 asks. SIGTERM stops it between two polls.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import psycopg

from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.nearcache import (
    STATE_CATCHING_UP,
    STATE_CONNECTING,
    STATE_DISCONNECTED,
    STATE_LIVE,
    STATE_STOPPED,
    W_ADOPTED,
    W_CHANGES,
    W_CLEARS,
    W_CONFIRMED_NS,
    W_INVALIDATED,
    W_PID,
    W_POSITION,
    W_RECONNECTS,
    W_STATE,
)
from featurestore.store import changes
from featurestore.store.pg_connection import Connector, Kind, classify
from featurestore.store.pg_schema import ensure_schema
from shm import FeatureCache

log = logging.getLogger("listener")

RENEW_FRACTION = 0.25  # the lease is renewed at least every quarter of MAX_STALENESS_MS
MIN_RENEW_S = 0.005
PAGE_ROWS = 1000  # change-log rows read per query during a catch-up
INVALIDATE_CHUNK = 10_000  # entities per invalidation (one writer-lock hold)
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0


class LogGap(Exception):
    """The change log no longer holds every change after the position, or a change in it
    is of every entity: the cache is cleared instead of invalidated."""


class ChangeListener:
    def __init__(self, settings: Settings, cache: FeatureCache, connector: Connector) -> None:
        self.settings = settings
        self.cache = cache
        self.connector = connector
        self.renew_s = max(MIN_RENEW_S, settings.max_staleness_ms * RENEW_FRACTION / 1000)
        self.stop = threading.Event()
        self.backoff_s = BACKOFF_FIRST_S

    @classmethod
    def start(cls, settings: Settings) -> ChangeListener:
        return cls(settings, open_cache(settings), Connector.of(settings, "listener"))

    # ------------------------------------------------------------------ status words
    def _set(self, **words: int) -> None:
        self.cache.set_holder_words({_WORDS[name]: value for name, value in words.items()})

    def _add(self, name: str, count: int = 1) -> None:
        index = _WORDS[name]
        self.cache.set_holder_words({index: self.cache.holder_words()[index] + count})

    # --------------------------------------------------------------------------- loop
    def stop_on_signals(self) -> ChangeListener:
        """SIGTERM or SIGINT (main thread only) stops `run` between two polls."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        return self

    def run(self) -> None:
        """Follow until `stop` is set (StoreCorrupt propagates: the process stops)."""
        self._set(pid=os.getpid(), state=STATE_CONNECTING)
        log.info(
            "listener of %s for cache %s (MAX_STALENESS_MS=%d)",
            self.connector.name,
            self.cache.name,
            self.settings.max_staleness_ms,
        )
        try:
            while not self.stop.is_set():
                self.session()
        finally:
            self._set(state=STATE_STOPPED)
            self.cache.close()

    def session(self) -> None:
        """One connection's life: connect, LISTEN, catch up, then follow until it breaks."""
        try:
            with self.connector.connect() as conn:
                ensure_schema(conn, self.connector.name)  # StoreCorrupt: stop (EXIT_DATA)
                conn.execute(f"LISTEN {changes.CHANNEL}")
                self._set(state=STATE_CATCHING_UP)
                self.poll(conn)
                self._set(state=STATE_LIVE)
                log.info("caught up at change %d; following", self.cache.holder_words()[W_POSITION])
                self.backoff_s = BACKOFF_FIRST_S
                while not self.stop.is_set():
                    self.wait_for_changes(conn)
                    if not self.stop.is_set():
                        self.poll(conn)
        except psycopg.Error as exc:
            if classify(exc) is Kind.BUG:
                raise
            self.lost(exc)

    def wait_for_changes(self, conn: psycopg.Connection) -> None:
        """Until a NOTIFY comes (then also take the others already there) or renew_s."""
        for _ in conn.notifies(timeout=self.renew_s, stop_after=1):
            pass
        for _ in conn.notifies(timeout=0):
            pass

    def lost(self, exc: psycopg.Error) -> None:
        self._set(state=STATE_DISCONNECTED)
        self._add("reconnects")
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        log.warning(
            "%s: connection lost or refused (%s); hits are served until the lease runs out, "
            "reconnecting in %.2f s",
            self.connector.name,
            problem,
            self.backoff_s,
        )
        self.stop.wait(self.backoff_s)
        self.backoff_s = min(BACKOFF_MAX_S, self.backoff_s * 2)

    # ------------------------------------------------------------------------- apply
    def poll(self, conn: psycopg.Connection) -> None:
        """Apply every change committed before now, then renew the lease with now."""
        confirmed = time.monotonic_ns()
        head = changes.head(conn)
        words = self.cache.holder_words()
        position = words[W_POSITION]
        if not words[W_ADOPTED] or head < position:
            self.clear("taking over this cache" if not words[W_ADOPTED] else "the store is new")
        elif head > position:
            try:
                self.catch_up(conn, position, head)
            except LogGap as gap:
                self.clear(str(gap))
        self._set(adopted=1, position=head, confirmed_ns=confirmed)
        self.cache.renew_lease(confirmed)

    def catch_up(self, conn: psycopg.Connection, position: int, head: int) -> None:
        """Invalidate the entities of the changes (position, head]; LogGap if one is gone."""
        expected = position + 1
        pending: list[str] = []
        while expected <= head:
            rows = changes.read_after(conn, expected - 1, head, PAGE_ROWS)
            for seq, entity_ids in rows:
                if seq != expected:
                    break
                if entity_ids is None:
                    raise LogGap(f"change {seq} is of every entity (a version was forgotten)")
                pending.extend(entity_ids)
                expected += 1
            if not rows or expected <= rows[-1][0]:
                raise LogGap(
                    f"the change log no longer holds change {expected} (pruned after "
                    "CHANGE_LOG_RETENTION_MS)"
                )
            if len(pending) > self.cache.max_size:
                raise LogGap(f"{len(pending)} entities changed: clearing is cheaper")
        for start in range(0, len(pending), INVALIDATE_CHUNK):
            self.cache.invalidate_many(pending[start : start + INVALIDATE_CHUNK])
        self._add("changes", head - position)
        self._add("invalidated", len(pending))

    def clear(self, why: str) -> None:
        cleared = self.cache.clear()
        self._add("clears")
        log.warning("cache cleared (%d entries): %s", cleared, why)


_WORDS = {
    "adopted": W_ADOPTED,
    "state": W_STATE,
    "position": W_POSITION,
    "pid": W_PID,
    "confirmed_ns": W_CONFIRMED_NS,
    "reconnects": W_RECONNECTS,
    "clears": W_CLEARS,
    "changes": W_CHANGES,
    "invalidated": W_INVALIDATED,
}
