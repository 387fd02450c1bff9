"""A worker's store upkeep (workers/upkeep.py) on a real store: the state it reports, the
recovery check while the store is unavailable, and pruning in bounded batches, never more
often than due (a worker waits for jobs in between, it never spins)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from featurestore.store.base import STORE_OK, STORE_UNAVAILABLE
from featurestore.store.errors import StoreUnavailable
from featurestore.store.requests import PRUNE_BATCH
from featurestore.store.sqlite import DB_FILENAME, SqliteEventStore
from workers.handlers import Figures
from workers.upkeep import (
    PRUNE_BACKLOG_INTERVAL_S,
    PRUNE_INTERVAL_S,
    RECOVERY_CHECK_INTERVAL_S,
    StoreUpkeep,
)


@pytest.fixture
def store(tmp_path: Path):
    opened = SqliteEventStore(tmp_path)
    yield opened
    opened.close()


def expired_requests(store: SqliteEventStore, count: int) -> None:
    """`count` request ids stored long before the retention (written as the store does)."""
    conn = sqlite3.connect(store.path, isolation_level=None)
    conn.executemany(
        "INSERT INTO requests (request_id, created_ms, digest, accepted, duplicates) "
        "VALUES (?, 0, ?, 1, 0)",
        [(f"old-{n}", bytes(16)) for n in range(count)],
    )
    conn.close()


def test_an_unavailable_store_is_checked_every_interval_not_in_a_spin(
    store: SqliteEventStore,
) -> None:
    figures = Figures()
    upkeep = StoreUpkeep(store, figures)
    upkeep.run_due()  # the first prune, at start
    assert upkeep.timeout_ms() > (PRUNE_INTERVAL_S - 1) * 1000

    # When a write failed for want of space
    upkeep.failed(StoreUnavailable(store.path, "cannot write: database or disk is full"))
    upkeep.next_prune = 0.0  # a prune is overdue meanwhile

    # Then the worker reports it and waits about one check interval, not zero
    assert figures.as_dict()["store"] == STORE_UNAVAILABLE
    assert 0 < upkeep.timeout_ms() <= RECOVERY_CHECK_INTERVAL_S * 1000
    upkeep.run_due()  # not due yet: nothing changes
    assert figures.store == STORE_UNAVAILABLE

    # When the check is due and the store can write (room on the disk, a small commit)
    upkeep.next_check = 0.0
    upkeep.run_due()
    assert figures.store == STORE_OK
    assert upkeep.timeout_ms() > 0


def test_pruning_goes_in_batches_while_a_backlog_lasts(store: SqliteEventStore) -> None:
    # Given more expired request ids than one batch
    expired_requests(store, PRUNE_BATCH + 5)
    upkeep = StoreUpkeep(store, Figures())

    # When the upkeep runs: one batch, then the rest soon, then nothing for an interval
    upkeep.run_due()
    assert upkeep.timeout_ms() <= PRUNE_BACKLOG_INTERVAL_S * 1000
    upkeep.next_prune = 0.0
    upkeep.run_due()
    assert upkeep.timeout_ms() > (PRUNE_INTERVAL_S - 1) * 1000
    conn = sqlite3.connect(Path(store.path).parent / DB_FILENAME)
    assert conn.execute("SELECT count(*) FROM requests").fetchone() == (0,)
    conn.close()
