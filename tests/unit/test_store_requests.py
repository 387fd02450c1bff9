"""Idempotency by ingest request id (SPEC §3, §11) on both backends (a SQLite file, a
PostgreSQL database): a repeat with the same events is answered from a small stored row and
stores nothing, a repeat with other events is a conflict and stores nothing, expired ids are
pruned in bounded batches, and a SQLite store written by schema 1 (the whole answer per id)
is migrated when it is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from store_targets import Target

from featurestore.errors import Code, ServiceError
from featurestore.offline.files import (
    EVENT_OPTIONAL,
    EVENT_REQUIRED,
    read_chunks,
    validate_event_frame,
)
from featurestore.store.base import EventStore
from featurestore.store.batch import EVENT_DTYPE
from featurestore.store.columns import EventColumns
from featurestore.store.requests import events_digest
from featurestore.store.schema import APPLICATION_ID, SCHEMA_VERSION
from featurestore.store.sqlite import DB_FILENAME, SqliteEventStore
from featurestore.timestamps import now_ms
from featurestore.validation.events import validate_events

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY_MS = 86_400_000
RETENTION_MS = DAY_MS


def columns(events: list[dict[str, Any]]) -> EventColumns:
    return validate_events(events, max_events=100_000, max_future_ms=300_000)


def ev(entity: str, ts: Any, value: Any, category: str | None = None, event_id=None) -> dict:
    out: dict[str, Any] = {"entity_id": entity, "timestamp": ts, "value": value}
    if category is not None:
        out["category"] = category
    if event_id is not None:
        out["event_id"] = event_id
    return out


def sql(data_dir: Path, query: str, args: tuple = ()) -> list[tuple]:
    """A query straight on the file (another connection, as an operator would)."""
    conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


def age_request(target: Target, request_id: str, by_ms: int) -> None:
    target.sql(
        "UPDATE requests SET created_ms = created_ms - ? WHERE request_id = ?",
        (by_ms, request_id),
    )


def state(store: EventStore) -> tuple:
    """Everything an ingest could change, as plain values."""
    batch = store.read(store.entity_ids())
    return (
        store.counts(),
        store.category_names(),
        batch.entity_ids,
        batch.value.tolist(),
        batch.seq.tolist(),
    )


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(store_target: Target):
    opened = store_target.open(REQUEST_ID_RETENTION_MS=str(RETENTION_MS))
    yield opened
    opened.close()


FIRST = [
    ev("a", T0, 1.0, "x", "e1"),
    ev("b", T0, 2.0, "y"),
    ev("a", T0, 3.0, "x", "e1"),  # a duplicate within the request
    ev("c", T0, 4.0, event_id="e0"),  # a duplicate of an event stored before
]


# ----------------------------------------------------------------------------- replays
def test_same_request_id_and_events_return_the_original_answer_and_store_nothing(
    store: EventStore, store_target: Target
) -> None:
    # Given an ingest under request id "req-1", after one that stored event id e0
    store.ingest(columns([ev("c", T0, 0.5, event_id="e0")]))
    first = store.ingest(columns(FIRST), request_id="req-1")
    assert (first.accepted, first.duplicates, first.replayed) == (2, 2, False)
    assert first.entity_ids == ["a", "b"]
    before = state(store)

    # When the same events come again under the same id (a retry, a re-dispatch), also
    # through another connection
    replay = store.ingest(columns(FIRST), request_id="req-1")
    other = store_target.open(REQUEST_ID_RETENTION_MS=str(RETENTION_MS))
    try:
        again = other.ingest(columns(FIRST), request_id="req-1")
    finally:
        other.close()

    # Then: the original answer, nothing stored, and every entity of the request to
    # invalidate (the first attempt may have died before it invalidated)
    for answer in (replay, again):
        assert answer.replayed is True
        assert answer.body() == first.body() == {"accepted": 2, "duplicates": 2}
        assert answer.stored_now == 0
        assert answer.entity_ids == ["a", "b", "c"]
    assert state(store) == before


def test_the_digest_is_of_the_events_not_of_their_spelling(tmp_path: Path) -> None:
    # Given the same events as JSON would spell them in several ways, and as a CSV file
    plain = [ev("a", T0, 1.0, "x", "e1"), ev("b", T0 + 1, 2.0)]
    spelled = [
        ev("a", "2024-01-01T00:00:00Z", 1, "x", "e1"),
        {**ev("b", "2024-01-01T00:00:00.001+00:00", 2.0), "category": None, "event_id": None},
    ]
    csv = tmp_path / "events.csv"
    csv.write_text(f"entity_id,timestamp,value,category,event_id\na,{T0},1,x,e1\nb,{T0 + 1},2,,\n")
    (chunk,) = read_chunks(csv, EVENT_REQUIRED, EVENT_OPTIONAL)
    from_file = validate_event_frame(csv, chunk, 0, now_ms())

    # Then they have one digest, and any real difference changes it
    digest = events_digest(columns(plain))
    assert events_digest(columns(spelled)) == digest
    assert events_digest(from_file) == digest
    variants = [
        [plain[1], plain[0]],  # another order: other sequence numbers
        [ev("a", T0, 1.0, "x", "e1"), ev("b", T0 + 1, 2.5)],
        [ev("a", T0, 1.0, "x", "e1"), ev("b", T0 + 2, 2.0)],
        [ev("a", T0, 1.0, "x", "e1"), ev("b", T0 + 1, 2.0, "x")],
        [ev("a", T0, 1.0, "x"), ev("b", T0 + 1, 2.0)],
        [ev("a", T0, 1.0, "x", "e1"), ev("bb", T0 + 1, 2.0)],
        [ev("a", T0, 1.0, "x", "e1")],
    ]
    digests = {events_digest(columns(v)) for v in variants}
    assert len(digests) == len(variants) and digest not in digests


# ---------------------------------------------------------------------------- conflicts
@pytest.mark.parametrize(
    "body",
    [
        [ev("a", T0, 1.0, "x", "e1"), ev("b", T0, 2.0, "y")],  # one event fewer
        [ev("z", T0, 9.0, "new", "e9")],  # entirely other events
        [*FIRST[:3], ev("c", T0, 4.0, event_id="e0b")],  # one event id changed
    ],
)
def test_another_body_under_a_used_request_id_is_a_conflict_and_stores_nothing(
    store: EventStore, body: list[dict]
) -> None:
    # Given an ingest under request id "req-1"
    store.ingest(columns(FIRST), request_id="req-1")
    before = state(store)

    # When other events come under the same id
    with pytest.raises(ServiceError) as raised:
        store.ingest(columns(body), request_id="req-1")

    # Then: 409 request_id_conflict naming the id, and nothing stored (no label, no event id)
    assert raised.value.code is Code.REQUEST_ID_CONFLICT
    assert raised.value.http_status == 409
    assert "'req-1'" in raised.value.message
    assert state(store) == before
    fresh = store.ingest(columns(body), request_id="req-2")  # under a new id it is stored
    assert fresh.replayed is False and fresh.accepted >= 1


# ------------------------------------------------------------------------------ pruning
def test_pruning_removes_only_expired_request_ids_in_bounded_batches(
    store: EventStore, store_target: Target
) -> None:
    # Given five request ids, three of them older than the retention
    for n in range(5):
        store.ingest(columns([ev(f"e{n}", T0, float(n))]), request_id=f"req-{n}")
    for n in range(3):
        age_request(store_target, f"req-{n}", RETENTION_MS + 1000 * (3 - n))

    # When the service prunes with a batch of two
    assert store.prune_requests(limit=2) == 2
    kept = store_target.sql("SELECT request_id FROM requests ORDER BY 1")
    assert kept == [("req-2",), ("req-3",), ("req-4",)]  # the oldest went first
    assert store.prune_requests(limit=2) == 1
    assert store.prune_requests(limit=2) == 0

    # Then the pruned ids are new again, the kept ones are still replays
    assert store.ingest(columns([ev("n", T0, 9.0)]), request_id="req-0").replayed is False
    assert store.ingest(columns([ev("e3", T0, 3.0)]), request_id="req-3").replayed is True


def test_an_expired_request_id_is_new_even_before_it_is_pruned(
    store: EventStore, store_target: Target
) -> None:
    store.ingest(columns([ev("a", T0, 1.0)]), request_id="old")
    age_request(store_target, "old", RETENTION_MS + 1)

    renewed = store.ingest(columns([ev("b", T0, 2.0)]), request_id="old")  # no conflict

    assert (renewed.replayed, renewed.accepted) == (False, 1)
    assert store.ingest(columns([ev("b", T0, 2.0)]), request_id="old").replayed is True
    assert store.prune_requests() == 0  # the row was renewed, not kept old


def test_the_stored_answer_of_a_10000_event_ingest_is_one_small_row(
    store: EventStore, store_target: Target
) -> None:
    # Given one ingest of 10,000 events of 10,000 entities (schema 1 stored a 2.5 MB row)
    events = [ev(f"user_{i:06d}", T0 + i, float(i), f"c{i % 9}", f"ev-{i}") for i in range(10_000)]
    result = store.ingest(columns(events), request_id="bulk-0001")
    assert result.accepted == 10_000

    # Then its row holds the id, a 16-byte digest and two numbers
    (row,) = store_target.sql(
        "SELECT request_id, created_ms, digest, accepted, duplicates FROM requests"
    )
    size = sum(len(v) if isinstance(v, str | bytes) else 8 for v in row)
    assert size <= 64, row
    assert row[0] == "bulk-0001" and row[-2:] == (10_000, 0)
    replay = store.ingest(columns(events), request_id="bulk-0001")
    assert replay.replayed and len(replay.entity_ids) == 10_000


# ---------------------------------------------------------------------------- migration
# The schema of the code before schema 2, as it created a store.
SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS categories (label INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS entities (
    entity_id TEXT PRIMARY KEY, n_events INTEGER NOT NULL, n_segments INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    entity_id TEXT NOT NULL, first_seq INTEGER NOT NULL, n INTEGER NOT NULL,
    events BLOB NOT NULL, event_ids TEXT NOT NULL, UNIQUE (entity_id, first_seq)
);
CREATE TABLE IF NOT EXISTS event_ids (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY, created_ms INTEGER NOT NULL, response BLOB NOT NULL
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', 1), ('next_seq', 1);
"""


def write_schema_1_store(data_dir: Path, requests: list[tuple[str, int, dict]]) -> None:
    """A store as schema 1 wrote it: WAL, no application id, entity "a" with two events (one
    with event id "e1", category "x"), and the given (request id, created_ms, answer) rows."""
    data_dir.mkdir(parents=True)
    conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA_1)
    records = np.zeros(2, dtype=EVENT_DTYPE)
    records["ts"] = [T0, T0 + 1]
    records["seq"] = [1, 2]
    records["value"] = [1.5, 2.5]
    records["category"] = [0, -1]
    conn.execute("INSERT INTO categories VALUES (0, 'x')")
    conn.execute("INSERT INTO segments VALUES ('a', 1, 2, ?, 'e1')", (records.tobytes(),))
    conn.execute("INSERT INTO entities VALUES ('a', 2, 1)")
    conn.execute("INSERT INTO event_ids VALUES ('e1')")
    conn.execute("UPDATE meta SET value = 3 WHERE key = 'next_seq'")
    conn.executemany(
        "INSERT INTO requests VALUES (?, ?, ?)",
        [(rid, created, orjson.dumps(answer)) for rid, created, answer in requests],
    )
    conn.close()


def test_a_schema_1_store_is_migrated_when_opened(data_dir: Path) -> None:
    # Given a store written by schema 1: a recent request with its whole answer (entity list
    # of 10,000 ids) and one older than the retention
    big = {"accepted": 10_000, "duplicates": 3, "entity_ids": [f"u{i}" for i in range(10_000)]}
    old = {"accepted": 1, "duplicates": 0, "entity_ids": ["a"]}
    write_schema_1_store(data_dir, [("recent", now_ms() - 1000, big), ("old", T0, old)])

    # When today's code opens it
    store = SqliteEventStore(data_dir, request_id_retention_ms=RETENTION_MS)
    try:
        # Then it is schema 2, ours, its events and labels intact, the recent request kept
        # as two numbers (digest unknown: any repeat is a replay), the old one dropped
        assert sql(data_dir, "SELECT value FROM meta WHERE key = 'schema_version'") == [
            (SCHEMA_VERSION,)
        ]
        assert sql(data_dir, "PRAGMA application_id") == [(APPLICATION_ID,)]
        assert store.read(["a"]).value.tolist() == [1.5, 2.5]
        assert store.category_names() == ["x"]
        rows = sql(data_dir, "SELECT request_id, digest, accepted, duplicates FROM requests")
        assert rows == [("recent", None, 10_000, 3)]
        replay = store.ingest(columns([ev("a", T0, 9.0)]), request_id="recent")
        assert (replay.replayed, replay.body()) == (True, {"accepted": 10_000, "duplicates": 3})
        # and it goes on as a schema 2 store
        assert store.ingest(columns([ev("a", T0, 1.0, event_id="e1")])).duplicates == 1
        fresh = store.ingest(columns([ev("b", T0, 3.0, "y")]), request_id="new")
        assert fresh.accepted == 1 and store.read(["b"]).seq.tolist() == [3]
        assert store.category_names() == ["x", "y"]
    finally:
        store.close()
    reopened = SqliteEventStore(data_dir, request_id_retention_ms=RETENTION_MS)
    reopened.close()
