"""Every endpoint of the HTTP API (SPEC §5) over real HTTP, against a real stack: broker, two
compute workers and the Sanic gateway (two worker processes), started by the test launcher.

Success shapes exactly as §5 (keys, types, integers for int features, `cached`, `timestamp`,
`latency_ms`); values bit-identical to the one feature engine run in this process on a read of
the same store; X-Request-Id echoed or made up; the request id as the ingest id of POST /events;
/metrics as Prometheus text whose counts add up over both gateway processes; /openapi.json a
valid OpenAPI 3 document that the live answers conform to. The error catalogue is in
test_http_errors.py. Each test uses its own entities, so tests may run in any order.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import msgspec
import numpy as np
import psutil
import pytest
from http_support import (
    REQUEST_ID,
    RawHttp,
    as_vector,
    check_feature_types,
    counts_per_server,
    error_json,
    gateway_stack,
    histogram_count,
    http_client,
    ok_json,
    parse_prometheus,
)
from integration_support import DAY_MS, DEMO_END_MS, entity, expected_matrix, identical
from openapi_schema_validator import OAS31Validator
from openapi_schema_validator import validate as validate_instance
from openapi_spec_validator import validate as validate_spec

from featurestore.definitions import shipped_definitions
from featurestore.errors import HTTP_STATUS, Code
from featurestore.features.registry import definitions, feature_set
from featurestore.ops.launcher import Stack, wait_for
from featurestore.timestamps import now_ms

V1 = feature_set("v1").names
V2 = feature_set("v2").names
MISSING = "user_missing_0"  # listed by the demo, has no events
BEFORE_ANY_EVENT_MS = DEMO_END_MS - 100 * DAY_MS
GENERATED_ID = re.compile(r"^[0-9a-f]{16}-[0-9]+$")  # featurestore.wire.envelope.new_request_id
FEATURE_KEYS = {"entity_id", "features", "version", "cached", "latency_ms", "timestamp"}
BATCH_KEYS = {"count", "features", "latency_ms", "avg_latency_per_entity", "timestamp"}
BATCH_ITEM_KEYS = {"entity_id", "features", "status", "cached", "timestamp"}
ROW_KEYS = {"entity_id", "timestamp", "features", "status"}


@pytest.fixture(scope="module")
def stack(demo_dir: Path) -> Iterator[Stack]:
    with gateway_stack(demo_dir, workers=2) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as client:
        yield client


@pytest.fixture(scope="module")
def openapi(api: httpx.Client) -> dict:
    return ok_json(api.get("/openapi.json"))


def conforms(document: dict, schema_name: str, body: object) -> None:
    """`body` is valid against components/schemas/<schema_name> of the served document."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    validate_instance(body, schema, cls=OAS31Validator)


def post_events(api: httpx.Client, events: list[dict], **headers: str) -> dict:
    return ok_json(api.post("/events", json={"events": events}, headers=headers))


def delete(api: httpx.Client, entity_id: str) -> int:
    body = ok_json(api.delete(f"/entities/{quote(entity_id, safe='')}"))
    assert set(body) == {"deleted_events"}
    assert type(body["deleted_events"]) is int
    return body["deleted_events"]


# ----------------------------------------------------------------------- POST /features
def test_features_cold_then_cached(api: httpx.Client, demo_dir: Path, openapi: dict) -> None:
    # Given an entity nobody asked for
    eid = entity(1)
    # When it is asked twice
    before = now_ms()
    cold = ok_json(api.post("/features", json={"entity_id": eid}))
    after = now_ms()
    hot = ok_json(api.post("/features", json={"entity_id": eid}))
    # Then: the shape of §5, computed once as of a T inside the request, then served cached
    for body in (cold, hot):
        assert set(body) == FEATURE_KEYS
        assert (body["entity_id"], body["version"]) == (eid, "v1")
        assert list(body["features"]) == V1
        check_feature_types(body["features"])
        assert type(body["timestamp"]) is int
        assert type(body["latency_ms"]) is float
        assert body["latency_ms"] >= 0
        conforms(openapi, "GetAnswer", body)
    assert (cold["cached"], hot["cached"]) == (False, True)
    assert before <= cold["timestamp"] <= after
    assert hot["timestamp"] == cold["timestamp"]
    assert hot["features"] == cold["features"]
    expected, found = expected_matrix(demo_dir, [eid], cold["timestamp"])
    assert found.tolist() == [True]
    assert identical(as_vector(cold["features"]), expected[0])


def test_features_selection_keeps_the_requested_order(api: httpx.Client) -> None:
    eid = entity(2)
    names = ["z_score", "value_mean", "day_of_week", "entity_hash"]
    full = ok_json(api.post("/features", json={"entity_id": eid}))
    picked = ok_json(api.post("/features", json={"entity_id": eid, "features": names}))
    everything = ok_json(api.post("/features", json={"entity_id": eid, "features": []}))
    assert picked["cached"] is True
    assert list(picked["features"]) == names
    assert picked["features"] == {n: full["features"][n] for n in names}
    assert type(picked["features"]["day_of_week"]) is int
    assert everything["features"] == full["features"]


def test_features_v2_and_as_of(api: httpx.Client, demo_dir: Path) -> None:
    eid = entity(3)
    v2 = ok_json(api.post("/features", json={"entity_id": eid, "version": "v2"}))
    assert (v2["version"], v2["cached"]) == ("v2", False)
    assert list(v2["features"]) == V2
    expected, _ = expected_matrix(demo_dir, [eid], v2["timestamp"], "v2")
    assert identical(as_vector(v2["features"]), expected[0])
    # as_of: computed as of then, not cached; ms, an integral float and ISO-8601 agree
    as_of = DEMO_END_MS - 5 * DAY_MS + 123
    iso = "2025-12-27T00:00:00.123999Z"  # below the millisecond: floored
    answers = [
        ok_json(api.post("/features", json={"entity_id": eid, "as_of": value}))
        for value in (as_of, float(as_of), iso)
    ]
    expected, _ = expected_matrix(demo_dir, [eid], as_of)
    for answer in answers:
        assert (answer["cached"], answer["timestamp"]) == (False, as_of)
        assert identical(as_vector(answer["features"]), expected[0])
    assert ok_json(api.post("/features", json={"entity_id": eid}))["cached"] is False
    # the training/serving guarantee: as_of = an online answer's timestamp repeats it
    online = ok_json(api.post("/features", json={"entity_id": eid}))
    again = ok_json(api.post("/features", json={"entity_id": eid, "as_of": online["timestamp"]}))
    assert (online["cached"], again["cached"]) == (True, False)
    assert again["features"] == online["features"]


# --------------------------------------------------------------------- X-Request-Id
def test_request_id_is_echoed_on_every_kind_of_answer(api: httpx.Client) -> None:
    calls = [
        ("POST", "/features", {"entity_id": entity(4)}, 200),
        ("POST", "/features", {"entity_id": MISSING}, 404),
        ("POST", "/features", {"entity_id": 4}, 400),
        ("POST", "/features/batch", {"entity_ids": [entity(4)]}, 200),
        ("GET", "/health", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/no/such/route", None, 404),
        ("GET", "/features", None, 405),
    ]
    for method, path, body, status in calls:
        given = f"rid-{uuid.uuid4().hex}"
        response = api.request(method, path, json=body, headers={REQUEST_ID: given})
        assert response.status_code == status, (path, response.text)
        assert response.headers[REQUEST_ID] == given, path


def test_request_id_is_made_up_when_absent_or_unusable(api: httpx.Client) -> None:
    made = [api.get("/health").headers[REQUEST_ID] for _ in range(3)]
    assert all(GENERATED_ID.match(rid) for rid in made)
    assert len(set(made)) == 3
    for bad in ("has space", "x" * 129, ""):
        response = api.get("/health", headers={REQUEST_ID: bad})
        body = error_json(response, 400, "invalid_request")
        assert "X-Request-Id" in body["message"]
        assert GENERATED_ID.match(response.headers[REQUEST_ID])
    assert api.get("/health", headers={REQUEST_ID: "x" * 128}).headers[REQUEST_ID] == "x" * 128


def test_request_id_makes_post_events_idempotent(api: httpx.Client) -> None:
    # Given two events without event_id, and one request id
    eid = "http-idempotent-1"
    events = [
        {"entity_id": eid, "timestamp": DEMO_END_MS - DAY_MS, "value": 1.0},
        {"entity_id": eid, "timestamp": DEMO_END_MS - DAY_MS + 1, "value": 3.0},
    ]
    rid = f"ingest-{uuid.uuid4().hex}"
    # When the POST is sent twice with the same X-Request-Id
    first = post_events(api, events, **{REQUEST_ID: rid})
    second = post_events(api, events, **{REQUEST_ID: rid})
    # Then the retry answers the original answer and stores nothing
    assert first == second == {"accepted": 2, "duplicates": 0}
    features = ok_json(api.post("/features", json={"entity_id": eid}))["features"]
    assert features["value_std"] == float(np.std([1.0, 3.0], ddof=1))
    assert features["percentile_rank"] == 1.0
    # while the same events under a new request id are new events (no event_id to dedupe)
    assert post_events(api, events) == {"accepted": 2, "duplicates": 0}
    assert delete(api, eid) == 4


# ------------------------------------------------------------------ POST /features/batch
def test_batch_order_duplicates_not_found_and_cache(
    api: httpx.Client, demo_dir: Path, openapi: dict
) -> None:
    a, b, c = entity(20), entity(21), entity(22)
    ids = [a, MISSING, b, a, c]
    before = now_ms()
    cold = ok_json(api.post("/features/batch", json={"entity_ids": ids}))
    after = now_ms()
    conforms(openapi, "BatchAnswer", cold)
    assert set(cold) == BATCH_KEYS
    assert cold["count"] == len(ids)
    assert before <= cold["timestamp"] <= after
    assert cold["avg_latency_per_entity"] == pytest.approx(cold["latency_ms"] / len(ids), abs=1e-6)
    items = cold["features"]
    assert [i["entity_id"] for i in items] == ids
    assert all(set(i) == BATCH_ITEM_KEYS for i in items)
    assert [i["status"] for i in items] == ["ok", "not_found", "ok", "ok", "ok"]
    assert [i["cached"] for i in items] == [False] * 5
    assert [i["timestamp"] for i in items] == [cold["timestamp"]] * 5
    assert items[1]["features"] is None
    expected, found = expected_matrix(demo_dir, ids, cold["timestamp"])
    assert found.tolist() == [True, False, True, True, True]
    for item, row in zip(items, expected, strict=True):
        if item["features"] is not None:
            assert list(item["features"]) == V1
            check_feature_types(item["features"])
            assert identical(as_vector(item["features"]), row)
    # All hits: answered by the gateway, each item with the T of its computation
    hot = ok_json(api.post("/features/batch", json={"entity_ids": [c, a, b, a]}))
    conforms(openapi, "BatchAnswer", hot)
    assert [i["cached"] for i in hot["features"]] == [True] * 4
    assert [i["timestamp"] for i in hot["features"]] == [cold["timestamp"]] * 4
    assert hot["timestamp"] >= cold["timestamp"]
    assert [i["features"] for i in hot["features"]] == [items[k]["features"] for k in (4, 0, 2, 0)]


def test_batch_selection_version_and_as_of(api: httpx.Client, demo_dir: Path) -> None:
    ids = [entity(23), entity(24)]
    names = ["value_max", "category_encoded", "trend_7d"]
    v2 = ok_json(api.post("/features/batch", json={"entity_ids": ids, "version": "v2"}))
    expected, _ = expected_matrix(demo_dir, ids, v2["timestamp"], "v2")
    for item, row in zip(v2["features"], expected, strict=True):
        assert list(item["features"]) == V2
        assert identical(as_vector(item["features"]), row)
    as_of = DEMO_END_MS - 2 * DAY_MS
    past = ok_json(
        api.post("/features/batch", json={"entity_ids": ids, "features": names, "as_of": as_of})
    )
    assert past["timestamp"] == as_of
    columns = feature_set("v1").index_of(names)
    expected, _ = expected_matrix(demo_dir, ids, as_of)
    for item, row in zip(past["features"], expected, strict=True):
        assert (item["cached"], item["timestamp"]) == (False, as_of)
        assert list(item["features"]) == names
        assert identical(as_vector(item["features"]), row[columns])
        assert type(item["features"]["category_encoded"]) is int


# ------------------------------------------------------------- POST /features/historical
def test_historical_rows_in_order_with_their_own_t(
    api: httpx.Client, demo_dir: Path, openapi: dict
) -> None:
    a, b = entity(30), entity(31)
    given = [
        (a, DEMO_END_MS - DAY_MS, DEMO_END_MS - DAY_MS),
        (a, "2025-12-20T06:30:00.000999", DEMO_END_MS - 12 * DAY_MS + 6 * 3_600_000 + 1_800_000),
        (b, float(DEMO_END_MS - 3 * DAY_MS), DEMO_END_MS - 3 * DAY_MS),
        (MISSING, DEMO_END_MS, DEMO_END_MS),
        (a, BEFORE_ANY_EVENT_MS, BEFORE_ANY_EVENT_MS),
        (a, DEMO_END_MS - DAY_MS, DEMO_END_MS - DAY_MS),  # a duplicate row
    ]
    rows = [{"entity_id": e, "timestamp": t} for e, t, _ in given]
    body = ok_json(api.post("/features/historical", json={"rows": rows}))
    conforms(openapi, "HistoricalAnswer", body)
    assert set(body) == {"count", "rows", "latency_ms"}
    assert body["count"] == len(rows)
    assert all(set(r) == ROW_KEYS for r in body["rows"])
    assert [r["entity_id"] for r in body["rows"]] == [e for e, _, _ in given]
    assert [r["timestamp"] for r in body["rows"]] == [t for _, _, t in given]
    assert [r["status"] for r in body["rows"]] == ["ok", "ok", "ok", "not_found", "not_found", "ok"]
    stamps = [t for _, _, t in given]
    expected, found = expected_matrix(demo_dir, [e for e, _, _ in given], stamps)
    assert found.tolist() == [True, True, True, False, False, True]
    for row, values in zip(body["rows"], expected, strict=True):
        if row["status"] == "not_found":
            assert row["features"] is None
            continue
        assert list(row["features"]) == V1
        check_feature_types(row["features"])
        assert identical(as_vector(row["features"]), values)
    picked = ok_json(
        api.post(
            "/features/historical",
            json={"rows": rows[:1], "features": ["value_mean", "hour_of_day"], "version": "v2"},
        )
    )
    expected_v2, _ = expected_matrix(demo_dir, [a], stamps[:1], "v2")
    columns = feature_set("v2").index_of(["value_mean", "hour_of_day"])
    assert list(picked["rows"][0]["features"]) == ["value_mean", "hour_of_day"]
    assert identical(as_vector(picked["rows"][0]["features"]), expected_v2[0][columns])


# ------------------------------------------------------- POST /events, DELETE /entities
def test_events_are_read_back_at_once_and_deleted(api: httpx.Client) -> None:
    eid = "http-ryw-1"
    t0 = DEMO_END_MS - 2 * DAY_MS
    events = [
        {"entity_id": eid, "timestamp": t0, "value": 1.0, "category": "http_a", "event_id": "hr-1"},
        {"entity_id": eid, "timestamp": t0 + 1, "value": 5.0, "event_id": "hr-2"},
        {"entity_id": eid, "timestamp": "2025-12-30T00:00:00Z", "value": 3, "category": "http_a"},
        {"entity_id": eid, "timestamp": t0 + 2, "value": 7.0, "event_id": "hr-1"},  # dup
    ]
    assert post_events(api, events) == {"accepted": 3, "duplicates": 1}
    first = ok_json(api.post("/features", json={"entity_id": eid}))
    assert first["cached"] is False
    assert (first["features"]["value_min"], first["features"]["value_max"]) == (1.0, 5.0)
    assert first["features"]["value_mean"] == 3.0
    assert ok_json(api.post("/features", json={"entity_id": eid}))["cached"] is True
    # a new event invalidates the cached vector: the next read reflects it
    later = {"entity_id": eid, "timestamp": t0 + 3 * 3_600_000, "value": 9.5}
    assert post_events(api, [later]) == {"accepted": 1, "duplicates": 0}
    second = ok_json(api.post("/features", json={"entity_id": eid}))
    assert second["cached"] is False
    assert second["features"]["value_max"] == 9.5
    assert post_events(api, [events[0]]) == {"accepted": 0, "duplicates": 1}
    assert delete(api, eid) == 4
    error_json(api.post("/features", json={"entity_id": eid}), 404, "entity_not_found")
    assert delete(api, eid) == 0


def test_delete_of_an_unknown_entity_answers_zero(api: httpx.Client) -> None:
    assert delete(api, f"never-seen-{uuid.uuid4().hex}") == 0


def test_delete_ids_with_slashes_and_percent_signs(api: httpx.Client) -> None:
    ids = ["http/a/b", "http%41", "http%2F", "http sp?#", "http-ü/ß", "/http-lead", "http-trail/"]
    events = [
        {"entity_id": e, "timestamp": DEMO_END_MS - DAY_MS + k, "value": float(k)}
        for e in ids
        for k in range(2)
    ]
    assert post_events(api, events) == {"accepted": 2 * len(ids), "duplicates": 0}
    for eid in ids:
        assert ok_json(api.post("/features", json={"entity_id": eid}))["entity_id"] == eid
        assert delete(api, eid) == 2, eid
        error_json(api.post("/features", json={"entity_id": eid}), 404, "entity_not_found")
    # an unencoded "/" is part of the id too
    post_events(api, [{"entity_id": "http/raw/x", "timestamp": DEMO_END_MS, "value": 1.0}])
    assert ok_json(api.delete("/entities/http/raw/x")) == {"deleted_events": 1}


# ---------------------------------------------------------------------- GET endpoints
def test_stats_shape_and_counters(api: httpx.Client, openapi: dict) -> None:
    def stats() -> dict:
        body = ok_json(api.get("/features/stats"))
        conforms(openapi, "Stats", body)
        return body

    before = stats()
    assert {
        "total_computes",
        "cache_hits",
        "cache_misses",
        "cache_hit_rate",
        "avg_compute_latency_ms",
        "cache_stats",
        "workers",
    } <= set(before)
    assert set(before["cache_stats"]) >= {
        "size",
        "max_size",
        "hit_rate",
        "utilization",
        "evictions",
        "expirations",
        "memory_bytes",
    }
    assert before["cache_hit_rate"] == before["cache_stats"]["hit_rate"]
    assert sorted(w["id"] for w in before["workers"]) == ["0", "1"]
    assert all({"id", "computes", "avg_compute_latency_ms"} <= set(w) for w in before["workers"])
    # one miss (computed by a worker), one hit (answered by the gateway), both counted once
    eid = entity(40)
    ok_json(api.post("/features", json={"entity_id": eid}))
    ok_json(api.post("/features", json={"entity_id": eid}))
    middle = stats()
    # as_of and historical computations of found rows count in computes only
    ok_json(api.post("/features", json={"entity_id": eid, "as_of": DEMO_END_MS}))
    rows = [{"entity_id": e, "timestamp": DEMO_END_MS} for e in (eid, MISSING, entity(41))]
    ok_json(api.post("/features/historical", json={"rows": rows}))
    after = stats()

    def delta(a: dict, b: dict) -> tuple[int, int, int]:
        return tuple(b[k] - a[k] for k in ("cache_hits", "cache_misses", "total_computes"))

    assert delta(before, middle) == (1, 1, 1)
    assert delta(middle, after) == (0, 0, 3)
    # (a worker lost and re-registered under load keeps its computes in the total only)
    assert sum(w["computes"] for w in after["workers"]) <= after["total_computes"]


def test_definitions(api: httpx.Client, openapi: dict) -> None:
    body = ok_json(api.get("/features/definitions"))
    conforms(openapi, "Definitions", body)
    assert body == msgspec.to_builtins(definitions(shipped_definitions(), ("v1", "v2")))
    for version, names in (("v1", V1), ("v2", V2)):
        listed = body["features"][version]
        assert [f["name"] for f in listed] == names
        assert all(set(f) == {"name", "kind", "type", "description", "definition"} for f in listed)
        assert {f["type"] for f in listed} == {"int", "float"}


def test_health(api: httpx.Client, openapi: dict) -> None:
    body = ok_json(api.get("/health"))
    conforms(openapi, "Health", body)
    fields = {"status", "workers", "gateway", "broker", "drift", "cache", "store"}
    assert set(body) == {*fields, "store_backend", "uptime_s", "memory"}  # no listener: SQLite
    assert body["store_backend"] == "sqlite"
    assert body["status"] == "ok"
    assert body["workers"] == {"alive": 2, "expected": 2}
    assert body["gateway"] == {"alive": 2, "expected": 2}  # GATEWAY_WORKERS HTTP servers
    assert (body["broker"], body["drift"], body["cache"]) == ("ok", "disabled", "ok")
    assert body["store"] == "ok"
    assert type(body["uptime_s"]) is float
    assert body["uptime_s"] > 0
    names = {"gateway", "gateway-0", "gateway-1", "broker", "worker-0", "worker-1"}
    assert set(body["memory"]) == names
    assert all(type(rss) is int and rss > 0 for rss in body["memory"].values())


def test_cache_clear(api: httpx.Client) -> None:
    ids = [entity(50), entity(51)]
    ok_json(api.post("/features/batch", json={"entity_ids": ids}))
    assert ok_json(api.post("/features", json={"entity_id": ids[0]}))["cached"] is True
    cleared = ok_json(api.post("/cache/clear"))
    assert set(cleared) == {"cleared"}
    assert type(cleared["cleared"]) is int
    assert cleared["cleared"] >= 2
    assert ok_json(api.post("/features", json={"entity_id": ids[0]}))["cached"] is False
    assert ok_json(api.post("/cache/clear")) == {"cleared": 1}


def test_drift_routes_when_monitoring_is_disabled(api: httpx.Client, openapi: dict) -> None:
    report = ok_json(api.get("/drift/report"))
    conforms(openapi, "DriftReport", report)
    assert report["status"] == "disabled"
    baseline = ok_json(api.post("/drift/baseline", json={"action": "reset"}))
    assert baseline["status"] == "disabled"


# ---------------------------------------------------------------------------- /metrics
DURATION = "featurestore_http_request_duration_seconds"
RESPONSES = "featurestore_http_responses_total"
MALFORMED = "featurestore_malformed_messages_total"
RSS = "featurestore_process_resident_memory_bytes"
ENDPOINT_LABELS = {  # the route names, and what matched no route
    "features",
    "features_batch",
    "features_historical",
    "events",
    "entities_delete",
    "features_stats",
    "features_definitions",
    "drift_report",
    "drift_baseline",
    "health",
    "cache_clear",
    "metrics",
    "openapi",
    "unmatched",
}


async def fire(stack: Stack, path: str, count: int) -> None:
    """`count` concurrent GETs, each on a new connection (so both gateway processes serve)."""
    async with RawHttp(stack.http_url, 32, keep_alive=False) as client:
        responses = await asyncio.gather(*(client.request("GET", path) for _ in range(count)))
    assert [r.status_code for r in responses] == [200] * count


def live_servers(stack: Stack) -> list[int]:
    return sorted(p.pid for p in psutil.Process(stack.pid("gateway")).children())


def serve_on_every_server(stack: Stack, path: str, endpoint: str) -> int:
    """Send GETs of `path` until every live gateway server has counted some; how many."""
    sent = 0

    def all_served() -> bool:
        nonlocal sent
        asyncio.run(fire(stack, path, 40))
        sent += 40
        counts = counts_per_server(stack, endpoint)
        return all(counts.get(pid, 0) > 0 for pid in live_servers(stack))

    wait_for(all_served, 30, "every gateway server to serve requests", interval_s=0)
    return sent


def scrape(api: httpx.Client) -> tuple[dict, list]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    types, samples = parse_prometheus(response.text)
    assert types[DURATION] == "histogram"
    assert types[RESPONSES] == "counter"
    return types, samples


def value_of(samples: list, metric: str, **labels: str) -> float:
    values = [
        v for name, got, v in samples if name == metric and all(got[k] == labels[k] for k in labels)
    ]
    assert len(values) == 1, (metric, labels, values)
    return values[0]


def test_metrics_are_prometheus_text_summed_over_gateway_processes(
    api: httpx.Client, stack: Stack
) -> None:
    _, samples = scrape(api)
    before = histogram_count(samples, DURATION, endpoint="features_definitions")
    # When requests spread over both gateway processes (until each has served some)
    sent = serve_on_every_server(stack, "/features/definitions", "features_definitions")
    error_json(api.post("/features", json={}), 400, "invalid_request")
    error_json(api.get("/no/such/route"), 404, "not_found")
    error_json(api.get("/features"), 405, "method_not_allowed")
    types, samples = scrape(api)
    # Then /metrics counts every one of them, once, by endpoint and status code
    after = histogram_count(samples, DURATION, endpoint="features_definitions")
    assert after - before == sent
    assert sum(counts_per_server(stack, "features_definitions").values()) == after
    assert value_of(samples, RESPONSES, endpoint="features_definitions", status="200") == after
    assert value_of(samples, RESPONSES, endpoint="features", status="400") >= 1
    # a request that matched no route is counted as such
    assert value_of(samples, RESPONSES, endpoint="unmatched", status="404") >= 1
    assert value_of(samples, RESPONSES, endpoint="unmatched", status="405") >= 1
    # one histogram per endpoint (the app's routes): cumulative buckets ending at +Inf
    assert {labels["endpoint"] for name, labels, _ in samples if name == f"{DURATION}_count"} == (
        ENDPOINT_LABELS
    )
    for endpoint in ENDPOINT_LABELS:
        buckets = [
            (labels["le"], value)
            for name, labels, value in samples
            if name == f"{DURATION}_bucket" and labels["endpoint"] == endpoint
        ]
        assert [le for le, _ in buckets][-1] == "+Inf"
        counts = [value for _, value in buckets]
        assert counts == sorted(counts)
        assert counts[-1] == histogram_count(samples, DURATION, endpoint=endpoint)
    # the rest of the service, from the broker's answers
    malformed = {labels["process"] for name, labels, _ in samples if name == MALFORMED}
    assert malformed == {"broker", "workers", "drift"}
    assert value_of(samples, "featurestore_broker_up") == 1
    assert value_of(samples, "featurestore_workers_alive") == 2
    assert value_of(samples, "featurestore_gateway_servers_alive") == 2
    assert value_of(samples, "featurestore_drift_enabled") == 0
    memory = {labels["process"] for name, labels, _ in samples if name == RSS}
    assert memory == {"gateway", "gateway-0", "gateway-1", "broker", "worker-0", "worker-1"}
    assert {name for name, _, _ in samples} >= {
        "featurestore_cache_hits_total",
        "featurestore_cache_misses_total",
        "featurestore_computes_total",
        "featurestore_compute_latency_seconds",
        "featurestore_cache_memory_bytes",
        "featurestore_dropped_replies_total",
        "featurestore_reply_backlog_bytes",
        "featurestore_drift_up",
        "featurestore_store_up",
    }
    # Prometheus names: counters end in _total, no unit but the base ones
    assert all(name.endswith("_total") for name, kind in types.items() if kind == "counter")
    assert not [name for name in types if re.search(r"_(ms|milliseconds|kb|mb)(_|$)", name)]


def test_a_killed_gateway_server_keeps_its_counts(stack: Stack) -> None:
    # Given requests counted by every gateway server
    serve_on_every_server(stack, "/features/definitions", "features_definitions")
    with http_client(stack) as api:
        before = histogram_count(scrape(api)[1], DURATION, endpoint="features_definitions")
    victim = live_servers(stack)[0]
    # When one server is SIGKILLed and the gateway replaces it
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        servers = live_servers(stack)
        if victim in servers or len(servers) < 2:
            return False
        with http_client(stack) as api:
            return api.get("/health").json()["gateway"] == {"alive": 2, "expected": 2}

    wait_for(replaced, 30, "the killed gateway server to be replaced")
    # Then its counts are still in the totals, and new requests add to them
    assert counts_per_server(stack, "features_definitions")[victim] > 0
    with http_client(stack) as api:
        samples = scrape(api)[1]
        assert histogram_count(samples, DURATION, endpoint="features_definitions") == before
        assert value_of(samples, "featurestore_gateway_servers_alive") == 2
        asyncio.run(fire(stack, "/features/definitions", 10))
        samples = scrape(api)[1]
    assert histogram_count(samples, DURATION, endpoint="features_definitions") == before + 10


# ------------------------------------------------------------------------ /openapi.json
def test_openapi_document_is_valid_and_complete(openapi: dict) -> None:
    validate_spec(openapi)
    assert openapi["openapi"].startswith("3.")
    operations = {(path, m) for path, item in openapi["paths"].items() for m in item}
    assert operations == {
        ("/features", "post"),
        ("/features/batch", "post"),
        ("/features/historical", "post"),
        ("/events", "post"),
        ("/entities/{entity_id}", "delete"),
        ("/features/stats", "get"),
        ("/features/definitions", "get"),
        ("/drift/report", "get"),
        ("/drift/baseline", "post"),
        ("/health", "get"),
        ("/cache/clear", "post"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    }
    assert openapi["x-error-codes"] == {c.value: HTTP_STATUS[c] for c in Code}
    codes = openapi["components"]["schemas"]["Code"]  # ErrorBody.error
    assert openapi["components"]["schemas"]["ErrorBody"]["properties"]["error"]["$ref"]
    assert sorted(codes["enum"]) == sorted(c.value for c in Code)
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            assert "200" in operation["responses"], (path, method)
            assert "400" in operation["responses"], (path, method)  # a malformed X-Request-Id
    assert {"404", "413", "503", "504"} <= set(openapi["paths"]["/features"]["post"]["responses"])
