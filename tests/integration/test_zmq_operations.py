"""Every ZeroMQ operation end to end through a real broker and two real workers (SPEC §5, §6),
with the time semantics of SPEC §4: a response's `timestamp` is the T of its features, a
cached answer keeps the T of its computation, and `as_of` = that T gives identical features.

Values are checked bit for bit against the one feature engine run in this process on a read
of the same store. Each test uses its own entities, so the module's cache state never leaks
from one test into another (tests may run in any order, on any xdist worker).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import pytest
from integration_support import (
    DAY_MS,
    DEMO_END_MS,
    demo_counts,
    entity,
    expected_matrix,
    full_vector,
    identical,
    vector,
)

from featurestore.definitions import shipped_definitions
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import definitions, feature_set
from featurestore.ops.launcher import Stack
from featurestore.timestamps import now_ms
from featurestore.wire.client import AsyncClient, Client
from featurestore.wire.frames import Op

MISSING = "user_missing_0"  # listed in demo_entities.csv, has no events
BEFORE_ANY_EVENT_MS = DEMO_END_MS - 100 * DAY_MS  # the demo spans the 90 days before its end


def stats_delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in ("cache_hits", "cache_misses", "total_computes")}


# ----------------------------------------------------------------------------- get
def test_get_cold_then_cached_is_bit_identical(client: Client, demo_dir: Path) -> None:
    # Given an entity nobody asked for yet
    eid = entity(10)
    # When it is asked twice
    before = now_ms()
    cold = client.get(eid)
    after = now_ms()
    hot = client.get(eid)
    # Then the first answer was computed as of a T taken during the request, the second is the
    # cached vector with the T of that computation, and both equal the engine's numbers
    assert cold["entity_id"] == eid
    assert cold["version"] == "v1"
    assert cold["cached"] is False
    assert before <= cold["timestamp"] <= after
    assert hot["cached"] is True
    assert hot["timestamp"] == cold["timestamp"]
    assert identical(full_vector(hot["features"]), full_vector(cold["features"]))
    expected, found = expected_matrix(demo_dir, [eid], cold["timestamp"])
    assert found.tolist() == [True]
    assert identical(full_vector(cold["features"]), expected[0])
    assert isinstance(cold["features"]["day_of_week"], int)
    assert isinstance(hot["features"]["entity_hash"], int)


def test_as_of_the_timestamp_repeats_the_answer_and_is_not_cached(client: Client) -> None:
    eid, other = entity(11), entity(12)
    online = client.get(eid)
    cached = client.get(eid)
    assert cached["cached"] is True
    before = client.stats()

    again = client.get(eid, as_of=online["timestamp"])

    assert again["cached"] is False
    assert again["timestamp"] == online["timestamp"]
    assert identical(full_vector(again["features"]), full_vector(cached["features"]))
    after = client.stats()
    assert stats_delta(before, after) == {"cache_hits": 0, "cache_misses": 0, "total_computes": 1}
    assert after["cache_stats"]["size"] == before["cache_stats"]["size"]
    # An as_of answer is never written to the cache: the next online get is cold.
    client.get(other, as_of=online["timestamp"])
    assert client.get(other)["cached"] is False


def test_as_of_an_iso_string_equals_epoch_ms(client: Client, demo_dir: Path) -> None:
    eid = entity(13)
    as_of = DEMO_END_MS - 10 * DAY_MS + 123
    by_ms = client.get(eid, as_of=as_of)
    by_iso = client.get(eid, as_of="2025-12-22T00:00:00.123Z")
    assert by_ms["timestamp"] == by_iso["timestamp"] == as_of
    assert identical(full_vector(by_ms["features"]), full_vector(by_iso["features"]))
    expected, _ = expected_matrix(demo_dir, [eid], as_of)
    assert identical(full_vector(by_ms["features"]), expected[0])
    assert by_ms["features"]["trend_7d"] is not None  # December data: the windows are filled


def test_versions_are_served_and_cached_separately(client: Client, demo_dir: Path) -> None:
    eid = entity(14)
    v1 = client.get(eid)
    v2_cold = client.get(eid, version="v2")
    v2_hot = client.get(eid, version="v2")
    assert (v1["cached"], v2_cold["cached"], v2_hot["cached"]) == (False, False, True)
    assert v2_cold["version"] == v2_hot["version"] == "v2"
    assert v2_hot["timestamp"] == v2_cold["timestamp"]
    expected, _ = expected_matrix(demo_dir, [eid], v2_cold["timestamp"], "v2")
    assert identical(full_vector(v2_hot["features"], "v2"), expected[0])
    # The demo ends eleven months before now: v2's 30-day window is empty, v1's is not.
    assert v2_cold["features"]["value_mean"] is None
    assert v1["features"]["value_mean"] is not None


def test_feature_selection_keeps_the_requested_order(client: Client) -> None:
    eid = entity(15)
    names = ["z_score", "value_mean", "day_of_week", "entity_hash"]
    full = client.get(eid)
    picked = client.get(eid, features=names)
    assert picked["cached"] is True
    assert list(picked["features"]) == names
    columns = feature_set("v1").index_of(names)
    assert identical(vector(picked["features"]), full_vector(full["features"])[columns])
    batch = client.batch([eid, entity(16)], features=names, arrays=True)
    assert batch.names == names
    assert batch.values.shape == (2, len(names))
    assert identical(batch.values[0], full_vector(full["features"])[columns])


def test_unknown_entity_and_no_event_before_t_are_not_found(client: Client) -> None:
    with pytest.raises(ServiceError) as missing:
        client.get(MISSING)
    assert missing.value.code is Code.ENTITY_NOT_FOUND
    assert missing.value.extra["entity_id"] == MISSING
    with pytest.raises(ServiceError) as early:
        client.get(entity(17), as_of=BEFORE_ANY_EVENT_MS)
    assert early.value.code is Code.ENTITY_NOT_FOUND


# ---------------------------------------------------------------------------- batch
def test_batch_cold_then_cached_is_bit_identical(client: Client, demo_dir: Path) -> None:
    ids = [entity(i) for i in range(20, 60)] + [MISSING, entity(20)]  # a duplicate, a miss
    before = now_ms()
    cold = client.batch(ids, arrays=True)
    after = now_ms()
    hot = client.batch(ids, arrays=True)

    found = np.array([e != MISSING for e in ids])
    assert before <= cold.timestamp <= after
    assert cold.entity_ids == ids
    assert cold.found.tolist() == found.tolist()
    assert not cold.cached.any()
    assert (cold.timestamps == cold.timestamp).all()
    # Hits carry the T of their computation; the not-found row is computed again as of the
    # new request's T.
    assert hot.cached.tolist() == found.tolist()
    assert hot.timestamp >= cold.timestamp
    assert (hot.timestamps[found] == cold.timestamp).all()
    assert (hot.timestamps[~found] == hot.timestamp).all()
    assert identical(hot.values, cold.values)
    assert np.isnan(cold.values[~found]).all()
    expected, expected_found = expected_matrix(demo_dir, ids, cold.timestamp)
    assert expected_found.tolist() == found.tolist()
    assert identical(cold.values, expected)


def test_batch_items_carry_their_own_timestamp(client: Client) -> None:
    hit_id, miss_id = entity(60), entity(61)
    single = client.get(hit_id)
    items = client.batch([hit_id, miss_id, MISSING])
    hit, miss, nothing = items
    assert hit == {
        "entity_id": hit_id,
        "features": single["features"],
        "status": "ok",
        "cached": True,
        "timestamp": single["timestamp"],
    }
    assert (miss["entity_id"], miss["status"], miss["cached"]) == (miss_id, "ok", False)
    assert miss["timestamp"] > single["timestamp"]
    assert nothing == {
        "entity_id": MISSING,
        "features": None,
        "status": "not_found",
        "cached": False,
        "timestamp": miss["timestamp"],
    }
    # The single get of the batch-computed entity is now a hit with the batch's T.
    again = client.get(miss_id)
    assert (again["cached"], again["timestamp"]) == (True, miss["timestamp"])
    assert again["features"] == miss["features"]


def test_batch_as_of_is_computed_not_cached(client: Client, demo_dir: Path) -> None:
    ids = [entity(i) for i in range(62, 70)]
    as_of = DEMO_END_MS - 3 * DAY_MS
    before = client.stats()
    batch = client.batch(ids, as_of=as_of, arrays=True)
    after = client.stats()
    assert not batch.cached.any()
    assert batch.timestamp == as_of
    assert (batch.timestamps == as_of).all()
    expected, _ = expected_matrix(demo_dir, ids, as_of)
    assert identical(batch.values, expected)
    assert stats_delta(before, after) == {
        "cache_hits": 0,
        "cache_misses": 0,
        "total_computes": len(ids),
    }
    assert client.get(ids[0])["cached"] is False


def test_batch_as_frame(client: Client, demo_dir: Path) -> None:
    ids = [entity(70), MISSING, entity(71)]
    frame = client.batch(ids, as_frame=True)
    assert isinstance(frame, pd.DataFrame)
    names = feature_set("v1").names
    assert list(frame.columns) == ["entity_id", "timestamp", *names, "status", "cached"]
    assert frame["entity_id"].tolist() == ids
    assert frame["status"].tolist() == ["ok", "not_found", "ok"]
    assert str(frame["day_of_week"].dtype) == "Int64"
    assert frame["day_of_week"].isna().tolist() == [False, True, False]
    expected, _ = expected_matrix(demo_dir, ids, int(frame["timestamp"].iloc[0]))
    as_floats = frame[names].astype("float64").to_numpy()
    assert identical(as_floats, expected)


# ----------------------------------------------------------------------- historical
def _rows() -> tuple[list[str], list[int]]:
    stamps = [DEMO_END_MS - 30 * DAY_MS, DEMO_END_MS - 7 * DAY_MS + 5 * 3_600_000, DEMO_END_MS]
    ids = [entity(i) for i in range(72, 80) for _ in stamps]
    times = [t for _ in range(72, 80) for t in stamps]
    return [*ids, entity(72), MISSING], [*times, BEFORE_ANY_EVENT_MS, DEMO_END_MS]


def test_historical_rows_are_point_in_time(client: Client, demo_dir: Path) -> None:
    ids, stamps = _rows()
    rows = [{"entity_id": e, "timestamp": t} for e, t in zip(ids, stamps, strict=True)]
    before = client.stats()
    result = client.historical(rows, arrays=True)
    after = client.stats()
    expected, found = expected_matrix(demo_dir, ids, stamps)
    assert result.entity_ids == ids
    assert result.timestamps.tolist() == stamps
    assert result.found.tolist() == found.tolist() == [True] * (len(ids) - 2) + [False, False]
    assert identical(result.values, expected)
    assert stats_delta(before, after) == {
        "cache_hits": 0,
        "cache_misses": 0,
        "total_computes": len(ids) - 2,
    }
    # Items: request order, each row's own timestamp, null features when not found
    items = client.historical(rows)
    assert [(i["entity_id"], i["timestamp"], i["status"]) for i in items] == [
        (e, t, "ok" if f else "not_found") for e, t, f in zip(ids, stamps, found, strict=True)
    ]
    assert items[-1]["features"] is None
    assert identical(full_vector(items[0]["features"]), expected[0])


def test_historical_get_and_batch_agree_for_the_same_entity_and_t(client: Client) -> None:
    eid = entity(80)
    as_of = DEMO_END_MS - 2 * DAY_MS + 777
    single = client.get(eid, as_of=as_of)
    batch = client.batch([eid], as_of=as_of, arrays=True)
    historical = client.historical([{"entity_id": eid, "timestamp": as_of}], arrays=True)
    assert identical(full_vector(single["features"]), batch.values[0])
    assert identical(batch.values, historical.values)


def test_historical_v2_and_data_frames(client: Client, demo_dir: Path) -> None:
    ids, stamps = _rows()
    frame_in = pd.DataFrame(
        {"entity_id": ids, "timestamp": pd.to_datetime(stamps, unit="ms", utc=True)}
    )
    frame = client.historical(frame_in, version="v2", as_frame=True)
    names = feature_set("v2").names
    assert list(frame.columns) == ["entity_id", "timestamp", *names, "status"]
    assert frame["timestamp"].tolist() == stamps
    expected, _ = expected_matrix(demo_dir, ids, stamps, "v2")
    assert identical(frame[names].astype("float64").to_numpy(), expected)


# ------------------------------------------------------------- broker's own operations
def test_stats_count_each_lookup(client: Client) -> None:
    x, y = entity(81), entity(82)
    ids = [x, x, y, MISSING]
    before = client.stats()
    client.batch(ids)
    middle = client.stats()
    client.batch(ids)
    after = client.stats()
    assert stats_delta(before, middle) == {"cache_hits": 0, "cache_misses": 4, "total_computes": 2}
    assert stats_delta(middle, after) == {"cache_hits": 3, "cache_misses": 1, "total_computes": 0}
    assert after["cache_hit_rate"] == after["cache_stats"]["hit_rate"]
    hits, misses = after["cache_hits"], after["cache_misses"]
    assert after["cache_hit_rate"] == pytest.approx(hits / (hits + misses))
    assert sorted(w["id"] for w in after["workers"]) == ["0", "1"]
    assert sum(w["computes"] for w in after["workers"]) == after["total_computes"]
    assert set(after["cache_stats"]) == {
        "size",
        "max_size",
        "hit_rate",
        "utilization",
        "evictions",
        "expirations",
        "memory_bytes",
    }


def test_health(client: Client, stack: Stack) -> None:
    health = client.health()
    assert health["status"] == "ok"
    assert health["workers"] == {"alive": 2, "expected": 2}
    assert (health["broker"], health["drift"], health["cache"]) == ("ok", "disabled", "ok")
    assert set(health["memory"]) == {"broker", "worker-0", "worker-1"}
    assert all(isinstance(rss, int) and rss > 0 for rss in health["memory"].values())
    assert health["uptime_s"] > 0


def test_definitions(client: Client) -> None:
    answer = client.definitions()
    assert answer == msgspec.to_builtins(definitions(shipped_definitions(), ("v1", "v2")))
    assert answer["versions"] == ["v1", "v2"]


def test_clear_empties_the_cache(client: Client) -> None:
    eid = entity(83)
    first = client.get(eid)
    assert client.get(eid)["cached"] is True
    cleared = client.clear()["cleared"]
    assert cleared >= 1
    assert client.stats()["cache_stats"]["size"] == 0
    after = client.get(eid)
    assert after["cached"] is False
    assert after["timestamp"] >= first["timestamp"]


def test_delete_removes_events_and_cached_vectors(client: Client, demo_dir: Path) -> None:
    eid = entity(290)  # no other test reads it
    count = demo_counts(demo_dir)[eid]
    assert count > 0
    client.get(eid)
    assert client.get(eid)["cached"] is True
    assert client.delete(eid) == {"deleted_events": count}
    with pytest.raises(ServiceError) as gone:
        client.get(eid)
    assert gone.value.code is Code.ENTITY_NOT_FOUND
    assert client.batch([eid])[0]["status"] == "not_found"
    assert client.delete(eid) == {"deleted_events": 0}
    assert client.delete("nobody_at_all") == {"deleted_events": 0}


def test_drift_operations_when_monitoring_is_disabled(client: Client) -> None:
    report = client.drift_report()
    assert report["status"] == "disabled"
    assert client.drift_baseline(action="reset")["status"] == "disabled"


# -------------------------------------------------------------------- one connection
def test_many_requests_in_flight_on_one_connection(client: Client, demo_dir: Path) -> None:
    ids = [entity(100 + i % 50) for i in range(200)]
    stamps = [DEMO_END_MS - (i % 17) * DAY_MS - i for i in range(200)]
    request_ids = [
        client.submit(Op.GET, {"entity_id": e, "as_of": t})
        for e, t in zip(ids, stamps, strict=True)
    ]
    replies = client.collect(list(reversed(request_ids)))[::-1]
    expected, _ = expected_matrix(demo_dir, ids, stamps)
    for index, reply in enumerate(replies):
        assert reply.ok, reply.body
        assert reply.request_id  # the client's own, one per request
        assert (reply.body["entity_id"], reply.body["timestamp"]) == (ids[index], stamps[index])
        assert identical(full_vector(reply.body["features"]), expected[index])


def test_async_client_runs_requests_concurrently(stack: Stack, demo_dir: Path) -> None:
    ids = [entity(150 + i) for i in range(30)]
    as_of = DEMO_END_MS - DAY_MS

    async def scenario() -> tuple[list[dict], object]:
        async with AsyncClient(stack.frontend) as fs:
            gets = [fs.get(e, as_of=as_of) for e in ids]
            batch = fs.batch(ids, as_of=as_of, arrays=True)
            *singles, matrix = await asyncio.gather(*gets, batch)
            return singles, matrix

    singles, matrix = asyncio.run(scenario())
    expected, _ = expected_matrix(demo_dir, ids, as_of)
    assert identical(np.stack([full_vector(s["features"]) for s in singles]), expected)
    assert identical(matrix.values, expected)
