"""The event store (SPEC §3), on both backends (a SQLite file, a PostgreSQL database: SPEC
§15): ordering, sequence numbers, reads as of T, compaction, idempotency by event id (by
request id: test_store_requests.py), category labels, delete, and two processes (two
"hosts" on PostgreSQL) writing at once, new categories included."""

from __future__ import annotations

import multiprocessing
import traceback
from collections import Counter
from typing import Any

import numpy as np
import pytest
from store_targets import Target

from featurestore.errors import ServiceError
from featurestore.store.base import EventStore
from featurestore.store.batch import NO_CATEGORY, EventBatch
from featurestore.store.columns import EventColumns
from featurestore.store.segments import MAX_SEGMENTS
from featurestore.timestamps import now_ms
from featurestore.validation.events import validate_events

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
PROCESS_TIMEOUT_S = 90


def columns(events: list[dict[str, Any]]) -> EventColumns:
    return validate_events(events, max_events=100_000, max_future_ms=300_000)


def ev(entity: str, ts: int, value: float, category: str | None = None, event_id=None) -> dict:
    out: dict[str, Any] = {"entity_id": entity, "timestamp": ts, "value": value}
    if category is not None:
        out["category"] = category
    if event_id is not None:
        out["event_id"] = event_id
    return out


def rows(batch: EventBatch, i: int) -> dict[str, list]:
    """Entity i of a batch as plain lists."""
    lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
    return {
        "ts": batch.ts[lo:hi].tolist(),
        "seq": batch.seq[lo:hi].tolist(),
        "value": batch.value[lo:hi].tolist(),
        "category": batch.category[lo:hi].tolist(),
    }


@pytest.fixture
def store(store_target: Target):
    opened = store_target.open()
    yield opened
    opened.close()


# ---------------------------------------------------------------------------- round trip
def test_round_trip_orders_by_time_then_sequence(store: EventStore, store_target: Target) -> None:
    before = now_ms()
    first = store.ingest(
        columns(
            [
                ev("a", T0 + 30, 3.0, "x"),
                ev("b", T0 + 10, -1.0),
                ev("a", T0 + 10, 1.0, "y"),
                ev("a", T0 + 20, 2.0),
            ]
        )
    )
    second = store.ingest(columns([ev("a", T0 + 5, 0.5, "y"), ev("b", T0 + 10, -2.0, "x")]))
    after = now_ms()
    assert first.body() == {"accepted": 4, "duplicates": 0}
    assert first.entity_ids == ["a", "b"]
    assert first.replayed is False
    assert (second.accepted, second.duplicates, sorted(second.entity_ids)) == (2, 0, ["a", "b"])

    batch = store.read(["a", "b"])
    assert batch.entity_ids == ["a", "b"]
    assert batch.offsets.tolist() == [0, 4, 6]
    assert rows(batch, 0) == {
        "ts": [T0 + 5, T0 + 10, T0 + 20, T0 + 30],
        "seq": [5, 3, 4, 1],
        "value": [0.5, 1.0, 2.0, 3.0],
        "category": [1, 1, NO_CATEGORY, 0],
    }
    assert rows(batch, 1) == {
        "ts": [T0 + 10, T0 + 10],
        "seq": [2, 6],
        "value": [-1.0, -2.0],
        "category": [NO_CATEGORY, 0],
    }
    assert batch.ts.dtype == np.int64 and batch.seq.dtype == np.int64
    assert batch.value.dtype == np.float64 and batch.category.dtype == np.int32
    assert store.category_names() == ["x", "y"]
    assert store.counts() == {"entities": 2, "events": 6, "categories": 2}
    assert store.entity_ids() == ["a", "b"]

    stamped = np.concatenate([r for _, _, r in store_target.raw_segments()])
    assert ((stamped["ingested_at"] >= before) & (stamped["ingested_at"] <= after)).all()


def test_sequence_numbers_increase_across_commits_in_array_order(store: EventStore) -> None:
    seen: list[int] = []
    for request in range(4):
        store.ingest(columns([ev("e", T0 + 100 - request * 10 - k, float(k)) for k in range(3)]))
        batch = store.read(["e"])
        newest = sorted(batch.seq.tolist())[-3:]
        seen.extend(newest)
    assert seen == list(range(1, 13))
    batch = store.read(["e"])
    # Reversed times inside each request: read order is by time, sequence follows arrays.
    by_seq = dict(zip(batch.seq.tolist(), batch.value.tolist(), strict=True))
    assert [by_seq[s] for s in range(1, 13)] == [0.0, 1.0, 2.0] * 4


def test_read_of_many_entities_with_duplicates_and_unknown_ids(store: EventStore) -> None:
    store.ingest(
        columns([ev("a", T0, 1.0), ev("b", T0 + 1, 2.0), ev("b", T0 + 2, 3.0), ev("c", T0, 9.0)])
    )
    batch = store.read(["b", "nobody", "a", "b", "zz", "b"])
    assert batch.entity_ids == ["b", "nobody", "a", "b", "zz", "b"]
    assert batch.lengths.tolist() == [2, 0, 1, 2, 0, 2]
    assert [rows(batch, i)["value"] for i in range(6)] == [
        [2.0, 3.0],
        [],
        [1.0],
        [2.0, 3.0],
        [],
        [2.0, 3.0],
    ]
    empty = store.read([])
    assert empty.entity_ids == [] and empty.offsets.tolist() == [0] and empty.ts.size == 0
    unknown = store.read(["x", "y"])
    assert unknown.offsets.tolist() == [0, 0, 0] and unknown.value.size == 0


def test_read_as_of_keeps_events_at_or_before_t(store: EventStore) -> None:
    store.ingest(columns([ev("a", T0 + t, float(t)) for t in (50, 10, 30, 30, 20)]))
    store.ingest(columns([ev("b", T0 + 40, 4.0), ev("b", T0 + 5, 0.5)]))
    full = store.read(["a", "b"])
    assert rows(full, 0)["value"] == [10.0, 20.0, 30.0, 30.0, 50.0]
    cases = {
        T0 + 4: ([], []),
        T0 + 5: ([], [0.5]),
        T0 + 29: ([10.0, 20.0], [0.5]),
        T0 + 30: ([10.0, 20.0, 30.0, 30.0], [0.5]),
        T0 + 50: ([10.0, 20.0, 30.0, 30.0, 50.0], [0.5, 4.0]),
    }
    for as_of, (a_values, b_values) in cases.items():
        batch = store.read(["a", "b", "a"], as_of_ms=as_of)
        assert rows(batch, 0)["value"] == a_values, as_of
        assert rows(batch, 1)["value"] == b_values, as_of
        assert rows(batch, 2)["value"] == a_values, as_of
        assert (batch.ts <= as_of).all()


def test_data_survives_close_and_reopen(store_target: Target) -> None:
    first = store_target.open()
    first.ingest(columns([ev("a", T0, 1.0, "x"), ev("a", T0 + 1, 2.0, "y")]))
    expected = rows(first.read(["a"]), 0)
    first.close()
    second = store_target.open()
    try:
        assert rows(second.read(["a"]), 0) == expected
        assert second.category_names() == ["x", "y"]
        second.ingest(columns([ev("a", T0 + 2, 3.0)]))
        assert rows(second.read(["a"]), 0)["seq"] == [1, 2, 3]
    finally:
        second.close()


# ----------------------------------------------------------------- equal times, compaction
def test_equal_timestamps_keep_insertion_order_across_ingests_and_compaction(
    store: EventStore, store_target: Target
) -> None:
    raw_segments = store_target.raw_segments
    expected_early: list[float] = []
    expected_late: list[float] = []
    requests = MAX_SEGMENTS + 2
    for r in range(requests):
        store.ingest(
            columns(
                [
                    ev("e", T0 + 100, r * 10.0),
                    ev("e", T0 + 50, r * 10.0 + 1),
                    ev("e", T0 + 100, r * 10.0 + 2),
                    ev("other", T0 + 100, -1.0),
                ]
            )
        )
        expected_early.append(r * 10.0 + 1)
        expected_late.extend([r * 10.0, r * 10.0 + 2])
        segments = len(raw_segments("e"))
        if r + 1 <= MAX_SEGMENTS:
            assert segments == r + 1
        else:  # the (MAX_SEGMENTS + 1)-th segment triggers compaction into one
            assert segments == r + 1 - MAX_SEGMENTS
        batch = store.read(["e"])
        assert rows(batch, 0)["value"] == expected_early + expected_late
        assert rows(batch, 0)["ts"] == [T0 + 50] * (r + 1) + [T0 + 100] * (2 * (r + 1))
        seq = np.asarray(rows(batch, 0)["seq"])
        assert (np.diff(seq[: r + 1]) > 0).all() and (np.diff(seq[r + 1 :]) > 0).all()

    assert len(raw_segments("e")) == 2
    assert store.compact() == 2  # "e" and "other" both have several segments now
    assert len(raw_segments("e")) == 1
    assert len(raw_segments("other")) == 1
    assert store.compact() == 0
    ((_, first_seq, records),) = raw_segments("e")
    assert first_seq == 1
    order = np.lexsort((records["seq"], records["ts"]))
    assert order.tolist() == list(range(records.size))  # one segment, in (ts, seq) order
    batch = store.read(["e", "other"])
    assert rows(batch, 0)["value"] == expected_early + expected_late
    assert rows(batch, 1)["value"] == [-1.0] * requests
    assert store.counts()["events"] == 4 * requests


# ---------------------------------------------------------------------------- idempotency
def test_duplicate_event_ids_within_a_request_first_wins(store: EventStore) -> None:
    result = store.ingest(
        columns(
            [
                ev("a", T0, 1.0, event_id="x"),
                ev("a", T0 + 1, 2.0, event_id="y"),
                ev("b", T0 + 2, 3.0, event_id="x"),
                ev("a", T0 + 3, 4.0),
                ev("a", T0 + 4, 5.0),
            ]
        )
    )
    assert result.body() == {"accepted": 4, "duplicates": 1}
    assert result.entity_ids == ["a"]
    batch = store.read(["a", "b"])
    assert rows(batch, 0)["value"] == [1.0, 2.0, 4.0, 5.0]
    assert rows(batch, 0)["seq"] == [1, 2, 3, 4]  # a duplicate consumes no sequence number
    assert rows(batch, 1)["value"] == []


def test_duplicate_event_ids_across_requests_are_skipped(store: EventStore) -> None:
    store.ingest(columns([ev("a", T0, 1.0, event_id="x"), ev("a", T0 + 1, 2.0, event_id="y")]))
    result = store.ingest(
        columns(
            [
                ev("a", T0 + 2, 20.0, event_id="y"),
                ev("b", T0 + 3, 30.0, event_id="z"),
                ev("c", T0 + 3, 40.0, event_id="x"),
            ]
        )
    )
    assert result.body() == {"accepted": 1, "duplicates": 2}
    assert result.entity_ids == ["b"]
    again = store.ingest(columns([ev("b", T0 + 3, 30.0, event_id="z")]))
    assert again.body() == {"accepted": 0, "duplicates": 1}
    assert again.entity_ids == []
    assert store.counts() == {"entities": 2, "events": 3, "categories": 0}
    batch = store.read(["a", "b", "c"])
    assert [rows(batch, i)["value"] for i in range(3)] == [[1.0, 2.0], [30.0], []]


def test_events_without_ids_are_never_duplicates(store: EventStore) -> None:
    for _ in range(2):
        assert store.ingest(columns([ev("a", T0, 1.0)])).body() == {
            "accepted": 1,
            "duplicates": 0,
        }
    assert rows(store.read(["a"]), 0)["value"] == [1.0, 1.0]


# Replays, conflicts, pruning and the schema migration of request ids: test_store_requests.py


# --------------------------------------------------------------------------------- labels
def test_labels_are_contiguous_in_order_of_first_appearance(
    store: EventStore, store_target: Target
) -> None:
    store.ingest(
        columns(
            [
                ev("a", T0 + 3, 1.0, "beta"),
                ev("a", T0 + 1, 1.0),
                ev("b", T0 + 2, 1.0, "alpha"),
                ev("a", T0 + 0, 1.0, "beta"),
                ev("c", T0 + 9, 1.0, "gamma"),
            ]
        )
    )
    assert store.category_names() == ["beta", "alpha", "gamma"]
    store.ingest(columns([ev("a", T0, 1.0, "delta"), ev("a", T0, 1.0, "alpha")]))
    assert store.category_names() == ["beta", "alpha", "gamma", "delta"]
    batch = store.read(["a", "b", "c"])
    assert rows(batch, 0)["category"] == [0, 3, 1, NO_CATEGORY, 0]
    assert rows(batch, 1)["category"] == [1]
    assert rows(batch, 2)["category"] == [2]

    store.close()
    reopened = store_target.open()
    try:
        assert reopened.category_names() == ["beta", "alpha", "gamma", "delta"]
        reopened.ingest(columns([ev("z", T0, 1.0, "epsilon"), ev("z", T0, 1.0, "beta")]))
        assert reopened.category_names() == ["beta", "alpha", "gamma", "delta", "epsilon"]
        assert rows(reopened.read(["z"]), 0)["category"] == [4, 0]
    finally:
        reopened.close()


def test_labels_are_shared_between_connections(store_target: Target) -> None:
    one = store_target.open()
    two = store_target.open()
    try:
        one.ingest(columns([ev("a", T0, 1.0, "p")]))
        two.ingest(columns([ev("a", T0, 1.0, "q"), ev("a", T0, 1.0, "p")]))
        one.ingest(columns([ev("a", T0, 1.0, "r"), ev("a", T0, 1.0, "q")]))
        assert one.category_names() == two.category_names() == ["p", "q", "r"]
        assert rows(two.read(["a"]), 0)["category"] == [0, 1, 0, 2, 1]
    finally:
        one.close()
        two.close()


def test_duplicate_events_consume_no_label(store: EventStore) -> None:
    store.ingest(columns([ev("a", T0, 1.0, "first", event_id="e1")]))
    result = store.ingest(
        columns(
            [
                ev("a", T0, 1.0, "only_in_duplicate", event_id="e1"),
                ev("a", T0, 1.0, "dup_within", event_id="e2"),
                ev("a", T0, 1.0, "second", event_id="e2"),
            ]
        )
    )
    assert result.body() == {"accepted": 1, "duplicates": 2}
    assert store.category_names() == ["first", "dup_within"]
    store.ingest(columns([ev("a", T0, 1.0, "third")]))
    assert store.category_names() == ["first", "dup_within", "third"]


def test_rejected_request_stores_nothing_and_consumes_no_label(store: EventStore) -> None:
    with pytest.raises(ServiceError):
        store.ingest(
            columns([ev("a", T0, 1.0, "never"), {"entity_id": "b", "timestamp": T0, "value": "x"}])
        )
    assert store.counts() == {"entities": 0, "events": 0, "categories": 0}
    assert store.category_names() == []
    store.ingest(columns([ev("a", T0, 1.0, "kept")]))
    assert store.category_names() == ["kept"]
    assert rows(store.read(["a"]), 0) == {
        "ts": [T0],
        "seq": [1],
        "value": [1.0],
        "category": [0],
    }


def test_failed_transaction_leaves_no_label_behind(store: EventStore, store_target: Target) -> None:
    # Malformed columns fail inside the write transaction, after labels were assigned.
    broken = EventColumns(
        entity_id=["a", "a"],
        ts=np.array([T0], dtype=np.int64),
        value=np.array([1.0, 2.0]),
        category=["ghost", "ghost"],
        event_id=["g1", None],
    )
    with pytest.raises(IndexError):
        store.ingest(broken, request_id="broken")
    store.ingest(columns([ev("a", T0, 1.0, "real")]))
    assert store.category_names() == ["real"]
    assert rows(store.read(["a"]), 0)["category"] == [0]
    other = store_target.open()
    try:
        assert other.category_names() == ["real"]
        # Neither the event id nor the request id of the failed attempt was kept.
        assert other.ingest(columns([ev("a", T0, 2.0, event_id="g1")])).accepted == 1
        assert other.ingest(columns([ev("a", T0, 3.0)]), request_id="broken").replayed is False
    finally:
        other.close()


# --------------------------------------------------------------------------------- delete
def test_delete_removes_events_and_frees_their_ids(store: EventStore) -> None:
    for r in range(MAX_SEGMENTS + 3):  # several segments, one compaction
        store.ingest(
            columns(
                [
                    ev("gone", T0 + r, float(r), "c", event_id=f"g{r}"),
                    ev("kept", T0 + r, float(-r), event_id=f"k{r}"),
                ]
            )
        )
    store.ingest(columns([ev("gone", T0 + 99, 99.0)]))
    assert store.delete("gone") == MAX_SEGMENTS + 4
    assert store.read(["gone"]).lengths.tolist() == [0]
    assert store.entity_ids() == ["kept"]
    assert store.counts() == {"entities": 1, "events": MAX_SEGMENTS + 3, "categories": 1}
    assert rows(store.read(["kept"]), 0)["value"] == [float(-r) for r in range(MAX_SEGMENTS + 3)]
    assert store.category_names() == ["c"]  # labels are global and persistent

    again = store.ingest(
        columns([ev("gone", T0, 5.0, event_id="g0"), ev("gone", T0, 6.0, event_id="k0")])
    )
    assert again.body() == {"accepted": 1, "duplicates": 1}  # g0 freed, k0 still stored
    assert rows(store.read(["gone"]), 0)["value"] == [5.0]
    assert store.delete("gone") == 1
    assert store.delete("gone") == 0
    assert store.delete("never-existed") == 0


# ----------------------------------------------------------------------------- processes
OWN_REQUESTS = 60
OWN_PER_REQUEST = 50
SHARED_REQUESTS = 10
SHARED_PER_REQUEST = 50
COMMON_REQUESTS = 10
COMMON_PER_REQUEST = 20


def _own_events(proc: int, request: int) -> list[dict]:
    return [
        ev(
            f"shared_{i % 7}" if i % 2 else f"p{proc}_{i % 5}",
            T0 + request * 1000 + i,
            proc * 1e6 + request * 1000 + i,
            f"c{i % 6}" if i % 3 else f"p{proc}c{request % 4}",
            f"p{proc}-{request}-{i}",
        )
        for i in range(OWN_PER_REQUEST)
    ]


def _shared_events(request: int) -> list[dict]:
    return [
        ev(f"shared_{i % 7}", T0 + i, 2e6 + request * 1000 + i, f"s{request % 3}")
        for i in range(SHARED_PER_REQUEST)
    ]


def _common_events(proc: int, request: int) -> list[dict]:
    # Same event ids from both processes (different values): exactly one of each is stored.
    return [
        ev("common", T0 + i, 3e6 + proc * 1e5 + request * 100 + i, event_id=f"common-{request}-{i}")
        for i in range(COMMON_PER_REQUEST)
    ]


def _writer(target: Target, proc: int, barrier, results) -> None:
    """One writer process (one host): many small ingests, some shared with the other."""
    try:
        store = target.open()
        barrier.wait(timeout=PROCESS_TIMEOUT_S)
        own = 0
        shared: list[tuple[int, bool]] = []
        common: list[int] = []
        for request in range(OWN_REQUESTS):
            own += store.ingest(
                columns(_own_events(proc, request)), request_id=f"own-{proc}-{request}"
            ).accepted
            step = request // 6
            if request % 6 == 0:  # the same request ids, in opposite orders
                k = step if proc == 0 else SHARED_REQUESTS - 1 - step
                result = store.ingest(columns(_shared_events(k)), request_id=f"shared-{k}")
                shared.append((k, result.replayed))
            if request % 6 == 3:  # the same event ids under different request ids
                result = store.ingest(
                    columns(_common_events(proc, step)), request_id=f"c-{proc}-{step}"
                )
                common.append(result.accepted)
        store.close()
        results.put({"proc": proc, "own": own, "shared": shared, "common": common})
    except BaseException:
        results.put({"proc": proc, "error": traceback.format_exc()})


@pytest.mark.slow
def test_two_processes_ingest_at_once_and_store_everything_exactly_once(
    store_target: Target,
) -> None:
    store_target.open().close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=(store_target, proc, barrier, results)) for proc in (0, 1)
    ]
    for p in procs:
        p.start()
    try:
        answers = [results.get(timeout=PROCESS_TIMEOUT_S) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=PROCESS_TIMEOUT_S)
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
    errors = [a["error"] for a in answers if "error" in a]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0, 0]

    own_total = OWN_REQUESTS * OWN_PER_REQUEST
    assert sorted(a["own"] for a in answers) == [own_total, own_total]
    # Each shared request id was stored by exactly one process; every other attempt replayed.
    stored_by = Counter(k for a in answers for k, replayed in a["shared"] if not replayed)
    assert stored_by == Counter(range(SHARED_REQUESTS))
    common_accepted = sum(sum(a["common"]) for a in answers)
    assert common_accepted == COMMON_REQUESTS * COMMON_PER_REQUEST

    store = store_target.open()
    try:
        expected_values = Counter(
            [
                e["value"]
                for proc in (0, 1)
                for r in range(OWN_REQUESTS)
                for e in _own_events(proc, r)
            ]
            + [e["value"] for k in range(SHARED_REQUESTS) for e in _shared_events(k)]
        )
        entities = store.entity_ids()
        batch = store.read(entities)
        common_index = entities.index("common")
        common_rows = rows(batch, common_index)
        mask = np.ones(batch.value.size, dtype=bool)
        mask[batch.offsets[common_index] : batch.offsets[common_index + 1]] = False
        assert Counter(batch.value[mask].tolist()) == expected_values
        assert len(common_rows["value"]) == COMMON_REQUESTS * COMMON_PER_REQUEST
        # Each common event id once, from whichever process stored it first.
        assert sorted(int(v) % 100_000 for v in common_rows["value"]) == sorted(
            k * 100 + i for k in range(COMMON_REQUESTS) for i in range(COMMON_PER_REQUEST)
        )
        total = 2 * own_total + SHARED_REQUESTS * SHARED_PER_REQUEST
        total += COMMON_REQUESTS * COMMON_PER_REQUEST
        assert store.counts()["events"] == total
        assert np.unique(batch.seq).size == total  # no sequence number given twice
        assert sorted(batch.seq.tolist()) == list(range(1, total + 1))
        names = store.category_names()
        expected_names = {f"c{i % 6}" for i in range(6) if i % 3} | {f"s{i}" for i in range(3)}
        expected_names |= {f"p{p}c{i}" for p in (0, 1) for i in range(4)}
        assert len(names) == len(set(names)) == len(expected_names)
        assert set(names) == expected_names
        labels = [
            r[0]
            for r in store_target.sql(
                "SELECT label FROM labels WHERE field = 'category' ORDER BY label"
            )
        ]
        assert labels == list(range(len(expected_names)))
        # Every stored event decodes to the category it was sent with: no label was given
        # twice, to two names, or lost in the race of two writers creating names at once
        sent = {
            e["value"]: e.get("category")
            for proc in (0, 1)
            for r in range(OWN_REQUESTS)
            for e in _own_events(proc, r)
        }
        sent.update(
            {
                e["value"]: e.get("category")
                for k in range(SHARED_REQUESTS)
                for e in _shared_events(k)
            }
        )
        decoded = {
            value: None if label == NO_CATEGORY else names[label]
            for value, label in zip(
                batch.value[mask].tolist(), batch.category[mask].tolist(), strict=True
            )
        }
        assert decoded == sent
    finally:
        store.close()
