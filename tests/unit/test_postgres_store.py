"""What only the PostgreSQL store has to show (the rules both backends share are in
test_event_store.py and test_store_requests.py): its schema created once and versioned, a
database that is not ours refused, a server that is gone answered with StoreUnavailable in
bounded time and never with its password, a restart survived, a deadlock retried inside,
one request id claimed by two hosts at once stored once, a host serving fewer fields than
another reading and compacting without losing them, and new names of two fields from two
hosts at once labelled contiguously."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from definitions_text import render
from pg_support import Databases
from store_targets import Target

from featurestore.config import Settings
from featurestore.definitions import load_definitions
from featurestore.ops.pgserver import free_port
from featurestore.store import changes
from featurestore.store.batch import NO_LABEL
from featurestore.store.errors import StoreCorrupt, StoreUnavailable
from featurestore.store.factory import open_event_store, store_name
from featurestore.store.pg_connection import RECONNECT_DEADLINE_S, Connector, Session
from featurestore.store.pg_schema import SCHEMA, SCHEMA_VERSION
from featurestore.store.segments import MAX_SEGMENTS
from featurestore.validation.events import validate_events

T0 = 1_704_067_200_000
THREAD_TIMEOUT_S = 60


def columns(events: list[dict]):
    return validate_events(events, max_events=100_000, max_future_ms=300_000)


def ev(entity: str, value: float, category: str | None = None, event_id=None) -> dict:
    out: dict = {"entity_id": entity, "timestamp": T0, "value": value}
    if category is not None:
        out["category"] = category
    if event_id is not None:
        out["event_id"] = event_id
    return out


@pytest.fixture
def target(pg_url: str, tmp_path: Path) -> Target:
    made = Target.make("postgresql", tmp_path / "data", pg_url)
    made.reset()
    return made


# ------------------------------------------------------------------------------ schema
def test_the_schema_is_created_on_first_use_once_and_versioned(target: Target) -> None:
    stores = []
    errors: list[BaseException] = []

    def open_one() -> None:
        try:
            stores.append(target.open())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]  # at once
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    assert not errors and len(stores) == 4
    for store in stores:
        store.close()
    assert target.sql("SELECT value FROM meta WHERE key = 'schema_version'") == [(SCHEMA_VERSION,)]
    assert target.sql("SELECT id, next_seq, change_seq FROM counters") == [(1, 1, 0)]


def test_a_newer_schema_stops_the_process_with_a_clear_message(target: Target) -> None:
    target.open().close()
    target.sql("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreCorrupt, match="newer than this featurestore knows"):
        target.open()


def test_a_database_that_is_not_ours_is_refused(target: Target, pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
        conn.execute(f"CREATE TABLE {SCHEMA}.orders (id int)")
    with pytest.raises(StoreCorrupt, match="another application"):
        target.open()
    target.reset()
    target.open().close()
    target.sql("UPDATE meta SET value = 7 WHERE key = 'application_id'")
    with pytest.raises(StoreCorrupt, match="not a featurestore event store"):
        target.open()
    target.reset()
    target.open().close()
    target.sql("DROP TABLE changes")
    with pytest.raises(StoreCorrupt, match="missing tables: changes"):
        target.open()


# ------------------------------------------------------------------------ availability
def test_a_server_that_is_not_there_is_store_unavailable_in_bounded_time_and_no_secret(
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(
        {
            "DATA_DIR": str(tmp_path),
            "STORE_URL": f"postgresql://fs:hunter2secret@127.0.0.1:{free_port()}/features",
            "STORE_CONNECT_TIMEOUT_MS": "500",
        }
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        open_event_store(settings)
    assert time.monotonic() - started < RECONNECT_DEADLINE_S + 3
    message = str(caught.value)
    assert "hunter2secret" not in message
    assert message.startswith("postgresql://fs@127.0.0.1:")
    assert "cannot reach the PostgreSQL server" in message
    assert store_name(settings) == settings.store_url.replace(":hunter2secret", "")


def test_a_store_survives_a_server_restart_and_says_unavailable_while_it_is_down(
    target: Target, postgres: Databases
) -> None:
    if not postgres.restartable:
        pytest.skip("FS_TEST_POSTGRES_URL: the server is not ours to restart")
    store = target.open()
    try:
        store.ingest(columns([ev("a", 1.0)]), request_id="before")
        # When the server crashes and comes back: the same store object reconnects by itself
        postgres.restart(mode="immediate")
        assert store.read(["a"]).value.tolist() == [1.0]
        assert store.ingest(columns([ev("a", 2.0)]), request_id="after").accepted == 1
        # While it is down: StoreUnavailable (reads and idempotent writes), nothing hangs
        postgres.stop(mode="fast")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ingest(columns([ev("a", 3.0)]), request_id="during")
        with pytest.raises(StoreUnavailable):
            store.check_writable()
        assert time.monotonic() - started < 2 * RECONNECT_DEADLINE_S + 5
    finally:
        if postgres.restartable and postgres.server.process is None:
            postgres.start_again()
        store.close()
    reopened = target.open()
    try:
        reopened.check_writable()
        assert reopened.read(["a"]).value.tolist() == [1.0, 2.0]  # "during" was not stored
        assert reopened.ingest(columns([ev("a", 3.0)]), request_id="during").accepted == 1
    finally:
        reopened.close()


def test_a_deadlock_is_retried_inside_and_never_reaches_the_caller(
    target: Target, pg_url: str
) -> None:
    # Given two sessions whose transactions lock two rows in opposite orders, at once
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE locks (id int PRIMARY KEY, n int)")
        conn.execute("INSERT INTO locks VALUES (1, 0), (2, 0)")
    barrier = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)
    attempts = {0: 0, 1: 0}
    outcomes: dict[int, object] = {}

    def run(side: int) -> None:
        session = Session(Connector(pg_url, 2000, 10_000, "deadlock-test"))
        first, second = (1, 2) if side == 0 else (2, 1)

        def body(conn: psycopg.Connection) -> str:
            attempts[side] += 1
            conn.execute("UPDATE locks SET n = n + 1 WHERE id = %s", (first,))
            if attempts[side] == 1:
                barrier.wait()  # both hold their first row: the second updates deadlock
            conn.execute("UPDATE locks SET n = n + 1 WHERE id = %s", (second,))
            return "done"

        try:
            outcomes[side] = session.write(body)
        except BaseException as exc:
            outcomes[side] = exc
        finally:
            session.close()

    threads = [threading.Thread(target=run, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)

    # Then PostgreSQL broke the deadlock, the loser ran again, both committed once
    assert outcomes == {0: "done", 1: "done"}
    assert sorted(attempts.values()) == [1, 2]
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT n FROM locks ORDER BY id").fetchall() == [(2,), (2,)]


# ------------------------------------------------------------------------------- writes
def test_one_request_id_claimed_by_two_hosts_at_once_is_stored_once(target: Target) -> None:
    # Given events without event ids (only the request id can tell a repeat), sent by two
    # hosts at the same moment under one request id, many times
    hosts = [target.open(), target.open()]
    rounds = 20
    barrier = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)
    replays: list[list[bool]] = [[], []]

    def send(side: int) -> None:
        for r in range(rounds):
            events = columns([ev(f"e{r}", float(r)), ev(f"e{r}", float(r) + 0.5)])
            barrier.wait()
            replays[side].append(hosts[side].ingest(events, request_id=f"rid-{r}").replayed)

    threads = [threading.Thread(target=send, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    try:
        # Then every request was stored by exactly one of them; the other replayed it
        assert [sorted((replays[0][r], replays[1][r])) for r in range(rounds)] == [
            [False, True]
        ] * rounds
        assert hosts[0].counts()["events"] == 2 * rounds
        seqs = hosts[1].read([f"e{r}" for r in range(rounds)]).seq
        assert sorted(seqs.tolist()) == list(range(1, 2 * rounds + 1))  # contiguous
    finally:
        for host in hosts:
            host.close()


def test_every_write_logs_its_entities_with_a_contiguous_change_sequence(
    target: Target,
) -> None:
    store = target.open()
    try:
        first = [ev("a", 1.0), ev("b", 2.0), ev("a", 3.0)]
        store.ingest(columns(first), request_id="one")
        assert store.ingest(columns(first), request_id="one").replayed  # no change
        store.ingest(columns([ev("c", 1.0, event_id="x")]))
        store.ingest(columns([ev("c", 1.0, event_id="x")]))  # all duplicates: no change
        store.delete("a")
        store.delete("nobody")  # logged too: every host forgets it (harmless)
        store.compact()  # not a change of data
    finally:
        store.close()
    logged = target.sql("SELECT seq, entity_ids FROM changes ORDER BY seq")
    assert logged == [(1, ["a", "b"]), (2, ["c"]), (3, ["a"]), (4, ["nobody"])]
    assert target.sql("SELECT change_seq FROM counters") == [(4,)]


def test_pruning_the_change_log_keeps_what_is_inside_the_retention(target: Target) -> None:
    store = target.open(CHANGE_LOG_RETENTION_MS="60000")
    try:
        for n in range(5):
            store.ingest(columns([ev(f"e{n}", 1.0)]))
        target.sql("UPDATE changes SET committed_ms = committed_ms - 120000 WHERE seq <= 3")
        assert store.prune_changes(limit=2) == 2
        assert store.prune_changes(limit=2) == 1
        assert store.prune_changes(limit=2) == 0
        assert [r[0] for r in target.sql("SELECT seq FROM changes ORDER BY seq")] == [4, 5]
        with psycopg.connect(target.settings.store_url) as conn:
            assert changes.head(conn) == 5
    finally:
        store.close()


# ---------------------------------------------------------------------------- the layout
def _definitions(path: Path, fields: dict) -> str:
    path.write_text(render(fields, {"v1": [{"name": "events", "op": "count"}]}))
    return str(path)


NARROW = {"value": {"kind": "numeric", "required": True}, "category": {"kind": "categorical"}}
WIDE = {**NARROW, "amount": {"kind": "numeric"}, "merchant": {"kind": "categorical"}}


def test_a_host_still_on_fewer_fields_reads_and_compacts_without_losing_another_hosts_field(
    target: Target, tmp_path: Path
) -> None:
    # Given host A serving the narrow definitions, then host B adding two optional fields
    narrow, wide = (
        _definitions(tmp_path / "a.toml", NARROW),
        _definitions(tmp_path / "b.toml", WIDE),
    )
    a = target.open(FEATURES_FILE=narrow)
    b = target.open(FEATURES_FILE=wide)
    wide_schema = load_definitions(wide).schema
    try:
        b.ingest(
            validate_events(
                [{"entity_id": "e", "timestamp": T0, "value": 1.0, "amount": 5.0, "merchant": "m"}],
                10,
                300_000,
                schema=wide_schema,
            )
        )
        # When A reads B's wider segment, appends narrow ones and compacts the entity
        assert a.read(["e"]).value.tolist() == [1.0]
        assert set(a.read(["e"]).numeric) == {"value"}
        for n in range(MAX_SEGMENTS):  # the last one takes the entity past MAX_SEGMENTS
            a.ingest(columns([{**ev("e", float(n + 2), "c"), "timestamp": T0 + n + 1}]))
        assert target.sql("SELECT count(*), min(n_fields) FROM segments") == [(1, 4)]
        # Then B still reads its own fields, and A's events lack them
        batch = b.read(["e"])
        assert batch.value.tolist() == [float(n) for n in range(1, MAX_SEGMENTS + 2)]
        assert batch.numeric["amount"][0] == 5.0 and np.isnan(batch.numeric["amount"][1:]).all()
        assert batch.labels["merchant"].tolist() == [0] + [NO_LABEL] * MAX_SEGMENTS
        assert batch.labels["category"].tolist() == [NO_LABEL] + [0] * MAX_SEGMENTS
        assert a.read(["e"]).value.tolist() == batch.value.tolist()
    finally:
        a.close()
        b.close()


def test_new_names_of_two_fields_from_two_hosts_at_once_get_contiguous_labels(
    target: Target, tmp_path: Path
) -> None:
    wide = _definitions(tmp_path / "b.toml", WIDE)
    schema = load_definitions(wide).schema
    hosts = [target.open(FEATURES_FILE=wide), target.open(FEATURES_FILE=wide)]
    rounds = 15
    barrier = threading.Barrier(2, timeout=THREAD_TIMEOUT_S)
    failures: list[BaseException] = []

    def send(side: int) -> None:
        try:
            for r in range(rounds):
                events = [
                    {
                        "entity_id": f"h{side}",
                        "timestamp": T0 + r,
                        "value": 1.0,
                        "category": f"c{r}-{k}",
                        "merchant": f"m{(r + side) % 7}-{side}",
                    }
                    for k in range(3)
                ]
                barrier.wait()
                hosts[side].ingest(validate_events(events, 10, 300_000, schema=schema))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=send, args=(side,)) for side in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_TIMEOUT_S)
    try:
        assert not failures, failures
        for field, expected in (("category", 3 * rounds), ("merchant", 14)):
            stored = target.sql(
                "SELECT label, name FROM labels WHERE field = ? ORDER BY 1", (field,)
            )
            assert [r[0] for r in stored] == list(range(expected))  # contiguous, no gap
            assert len({r[1] for r in stored}) == expected  # one label per name
        names = hosts[0].label_names()
        assert hosts[1].label_names() == names
        for side in (0, 1):
            batch = hosts[1 - side].read([f"h{side}"])
            merchants = [names["merchant"][label] for label in batch.labels["merchant"]]
            assert merchants == [
                f"m{(r + side) % 7}-{side}" for r in range(rounds) for _ in range(3)
            ]
    finally:
        for host in hosts:
            host.close()
