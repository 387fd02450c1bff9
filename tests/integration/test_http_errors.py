"""Every error code of SPEC §5 over real HTTP, in the JSON error shape, with its extra fields.

The module's stack has small count and body limits, so `batch_too_large` and `body_too_large`
are cheap to reach. `overloaded`, `no_workers` and `timeout` are made real on stacks of their
own: a one-worker broker with a queue of one job, workers SIGKILLed with autorestart off, and a
request whose real work (many chunks, each well under the heartbeat liveness) outlasts
REQUEST_TIMEOUT_MS. No test-only knob exists in the production code.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from http_support import (
    REQUEST_ID,
    RawHttp,
    error_json,
    gateway_stack,
    http_client,
    ok_json,
    start_gateway_stack,
)
from integration_support import DAY_MS, DEMO_END_MS, copy_store, entity

from featurestore.features.registry import feature_set
from featurestore.ops.launcher import Stack, wait_for
from featurestore.timestamps import now_ms

LIMITS = {"BATCH_MAX_ENTITIES": 50, "HISTORICAL_MAX_ROWS": 40, "EVENTS_MAX_PER_REQUEST": 30}
MAX_BODY_BYTES = 65_536
READ_TIMEOUT_MS = 1500
MAX_HEADER_BYTES = 4096
RAW_TIMEOUT_S = 20.0
MISSING = "user_missing_0"
T = DEMO_END_MS - DAY_MS
POST_PATHS = ("/features", "/features/batch", "/features/historical", "/events", "/drift/baseline")
ID_257_BYTES = "é" * 128 + "a"
ID_256_BYTES = "é" * 128


@pytest.fixture(scope="module")
def stack(demo_dir: Path) -> Iterator[Stack]:
    env = {
        **{k: str(v) for k, v in LIMITS.items()},
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "HTTP_READ_TIMEOUT_MS": str(READ_TIMEOUT_MS),
        "HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    }
    with gateway_stack(demo_dir, workers=2, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as client:
        yield client


@pytest.fixture
def private_stack(demo_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start a stack of one's own (on a copy of the module's store unless given a DATA_DIR):
    private_stack(workers=1, env={...}); always stopped."""
    stacks: list[Stack] = []

    def start(data_dir: Path | None = None, **options) -> Stack:
        if data_dir is None:
            data_dir = copy_store(demo_dir, tmp_path / f"stack{len(stacks)}")
        stack = Stack(data_dir, gateway=True, **options)
        stacks.append(stack)
        return start_gateway_stack(stack)

    try:
        yield start
    finally:
        for stack in stacks:
            stack.stop()


def event(**fields) -> dict:
    return {"entity_id": "http-err", "timestamp": T, "value": 1.0, **fields}


def raw_post(api: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return api.post(path, content=body, headers={"Content-Type": "application/json"})


# ------------------------------------------------------------------------ invalid_json
@pytest.mark.parametrize("path", POST_PATHS)
def test_invalid_json(api: httpx.Client, path: str) -> None:
    bodies = [
        b"",  # an empty required body
        b"  \n\t ",
        b"{bad",
        b'{"entity_id": "x",}',
        b'{"entity_id": "x"} trailing',
        b"\xff\xfe{}",  # not UTF-8
        b"NaN",  # not JSON (RFC 8259)
        b'{"entity_id": "x", "as_of": Infinity}',
        b"[" * 5000 + b"]" * 5000,  # deeper than any parser takes
    ]
    for body in bodies:
        answer = error_json(raw_post(api, path, body), 400, "invalid_json")
        assert set(answer) == {"error", "message"}, body


# --------------------------------------------------------------------- invalid_request
INVALID_REQUESTS = [
    ("/features", [], "must be a JSON object"),
    ("/features", "user_00001", "must be a JSON object"),
    ("/features", {}, "'entity_id' is required"),
    ("/features", {"entity_id": None}, "'entity_id' is required"),
    ("/features", {"entity_id": 7}, "'entity_id' must be a string"),
    ("/features", {"entity_id": True}, "'entity_id' must be a string"),
    ("/features", {"entity_id": ""}, "1-256 UTF-8 bytes"),
    ("/features", {"entity_id": ID_257_BYTES}, "1-256 UTF-8 bytes"),
    ("/features", {"entity_id": "a\x00b"}, "control character"),
    ("/features", {"entity_id": "a\x1fb"}, "control character"),
    ("/features", {"entity_id": "x", "entityId": "x"}, "unknown field(s): entityId"),
    ("/features", {"entity_id": "x", "features": "value_max"}, "'features' must be a list"),
    ("/features", {"entity_id": "x", "features": [1]}, "'features' must be a list"),
    ("/features", {"entity_id": "x", "version": 2}, "'version' must be a string"),
    ("/features", {"entity_id": "x", "as_of": True}, "boolean"),
    ("/features", {"entity_id": "x", "as_of": 1_700_000_000_000.5}, "must be an integer"),
    ("/features", {"entity_id": "x", "as_of": "2025-02-30T00:00:00"}, "ISO-8601"),
    ("/features", {"entity_id": "x", "as_of": "yesterday"}, "ISO-8601"),
    ("/features", {"entity_id": "x", "as_of": -1}, "out of range"),
    ("/features", {"entity_id": "x", "as_of": 2**53}, "out of range"),
    ("/features", {"entity_id": "x", "as_of": [1]}, "expected epoch milliseconds"),
    ("/features/batch", {}, "'entity_ids' is required"),
    ("/features/batch", {"entity_ids": "user_00001"}, "must be a list"),
    ("/features/batch", {"entity_ids": []}, "must not be empty"),
    ("/features/batch", {"entity_ids": ["a", 3]}, "'entity_ids[1]' must be a string"),
    ("/features/batch", {"entity_ids": ["a", "b\nc"]}, "'entity_ids[1]' contains a control"),
    ("/features/batch", {"entity_ids": ["a"], "entity_id": "a"}, "unknown field(s)"),
    ("/features/batch", {"entity_ids": ["a"], "as_of": False}, "boolean"),
    ("/features/historical", {}, "'rows' is required"),
    ("/features/historical", {"rows": "x"}, "'rows' must be a list"),
    ("/features/historical", {"rows": []}, "'rows' must not be empty"),
    ("/features/historical", {"rows": [{"entity_id": "a"}]}, "'rows[0]' must be an object"),
    ("/features/historical", {"rows": [1]}, "'rows[0]' must be an object"),
    (
        "/features/historical",
        {"rows": [{"entity_id": "a", "timestamp": 1, "value": 2}]},
        "unknown fields",
    ),
    (
        "/features/historical",
        {"rows": [{"entity_id": "a", "timestamp": 1}, {"entity_id": "a", "timestamp": 0.5}]},
        "'rows[1].timestamp' epoch milliseconds must be an integer",
    ),
    ("/features/historical", {"rows": [{"entity_id": "a", "timestamp": True}]}, "boolean"),
    ("/features/historical", {"rows": [{"entity_id": 1, "timestamp": 1}]}, "must be a string"),
    ("/events", [], "must be a JSON object"),
    ("/events", {}, "'events' is required"),
    ("/events", {"events": {}}, "'events' must be a list"),
    ("/events", {"events": []}, "'events' must not be empty"),
    ("/events", {"events": [event()], "source": "x"}, "unknown field(s)"),
]


@pytest.mark.parametrize(("path", "body", "fragment"), INVALID_REQUESTS)
def test_invalid_request(api: httpx.Client, path: str, body: object, fragment: str) -> None:
    answer = error_json(api.post(path, json=body), 400, "invalid_request")
    assert fragment in answer["message"]


def test_as_of_later_than_now(api: httpx.Client) -> None:
    later = now_ms() + 60_000
    for path, body in (
        ("/features", {"entity_id": entity(1), "as_of": later}),
        ("/features/batch", {"entity_ids": [entity(1)], "as_of": later}),
    ):
        answer = error_json(api.post(path, json=body), 400, "invalid_request")
        assert "later than now" in answer["message"]


def test_events_errors_name_index_field_and_reason(api: httpx.Client) -> None:
    # Given one valid event followed by one bad field per event
    future = now_ms() + 3_600_000
    bad = [
        (event(value=True), "value", "must be a number"),
        (event(value="1.5"), "value", "must be a number"),
        (event(value=None), "value", "must be a number"),
        (event(timestamp=True), "timestamp", "boolean"),
        (event(timestamp=T + 0.5), "timestamp", "must be an integer"),
        (event(timestamp="2025-13-01T00:00:00"), "timestamp", "ISO-8601"),
        (event(timestamp=-5), "timestamp", "out of range"),
        (event(timestamp=future), "timestamp", "future"),
        ({"timestamp": T, "value": 1.0}, "entity_id", "is required"),
        ({"entity_id": "e", "value": 1.0}, "timestamp", "is required"),
        (event(extra=1), "extra", "unknown field"),
        (event(entity_id=""), "entity_id", "1-256 UTF-8 bytes"),
        (event(entity_id=ID_257_BYTES), "entity_id", "1-256 UTF-8 bytes"),
        (event(entity_id="a\x00b"), "entity_id", "control character"),
        (event(category=""), "category", "1-256 UTF-8 bytes"),
        (event(category="c\x1f"), "category", "control character"),
        (event(category=5), "category", "must be a string"),
        (event(event_id="x" * 257), "event_id", "1-256 UTF-8 bytes"),
        (event(event_id="x\ny"), "event_id", "control character"),
        ("not an object", "event", "must be an object"),
    ]
    valid = {"entity_id": "http-err-valid", "timestamp": T, "value": 2.0}
    # When they are posted together
    answer = error_json(
        api.post("/events", json={"events": [valid, *(e for e, _, _ in bad)]}),
        400,
        "invalid_request",
    )
    # Then every bad field is listed (index in the request, field, reason) and nothing is stored
    errors = answer["errors"]
    assert len(errors) == len(bad) == 20
    assert all(set(e) == {"index", "field", "reason"} for e in errors)
    assert [(e["index"], e["field"]) for e in errors] == [
        (i + 1, field) for i, (_, field, _) in enumerate(bad)
    ]
    for error, (_, _, reason) in zip(errors, bad, strict=True):
        assert reason in error["reason"], error
    assert answer["message"].startswith("20 invalid event field(s)")
    assert "Nothing was stored" in answer["message"]
    error_json(
        api.post("/features", json={"entity_id": valid["entity_id"]}), 404, "entity_not_found"
    )


def test_events_errors_are_capped_at_20(api: httpx.Client) -> None:
    events = [event(value="x")] * 25 + [event(timestamp=None)] * 5
    answer = error_json(api.post("/events", json={"events": events}), 400, "invalid_request")
    assert [e["index"] for e in answer["errors"]] == list(range(20))
    assert answer["message"].startswith("30 invalid event field(s)")


def test_an_event_just_inside_max_event_future_is_accepted(api: httpx.Client) -> None:
    soon = now_ms() + 60_000  # MAX_EVENT_FUTURE_MS is 300,000
    body = {"events": [{"entity_id": "http-err-soon", "timestamp": soon, "value": 1.0}]}
    assert ok_json(api.post("/events", json=body)) == {"accepted": 1, "duplicates": 0}
    assert ok_json(api.delete("/entities/http-err-soon")) == {"deleted_events": 1}


def test_lone_surrogates_and_infinite_numbers_are_invalid_requests(api: httpx.Client) -> None:
    # "\ud800" is JSON (RFC 8259 escapes code units) but no valid string; 1e999 is a JSON
    # number no float holds. Both are bad values in a JSON body, not bodies that are not JSON.
    cases = [
        ("/features", rb'{"entity_id": "\ud800"}', "'entity_id' contains a lone surrogate"),
        ("/features", rb'{"entity_id": "a\udc00b"}', "'entity_id' contains a lone surrogate"),
        ("/features/batch", rb'{"entity_ids": ["ok", "\udfff"]}', "'entity_ids[1]' contains"),
        ("/features", rb'{"entity_id": "x", "\ud800": 1}', "field name with a lone surrogate"),
        (
            "/features/historical",
            rb'{"rows": [{"entity_id": "a", "timestamp": 1e999}]}',
            "must be finite",
        ),
    ]
    for path, body, fragment in cases:
        answer = error_json(raw_post(api, path, body), 400, "invalid_request")
        assert fragment in answer["message"], (body, answer)
    events = [
        (rb'"entity_id": "\ud800", "timestamp": 1, "value": 1', "entity_id", "lone surrogate"),
        (rb'"entity_id": "e", "timestamp": 1, "value": 1, "category": "\ud800x"', "category", ""),
        (rb'"entity_id": "e", "timestamp": 1, "value": 1, "event_id": "\udbff"', "event_id", ""),
        (rb'"entity_id": "e", "timestamp": 1, "value": 1e999', "value", "must be finite"),
        (rb'"entity_id": "e", "timestamp": 1, "value": -1e400', "value", "must be finite"),
    ]
    for fields, field, reason in events:
        body = rb'{"events": [{"entity_id": "ok", "timestamp": 1, "value": 1}, {' + fields + b"}]}"
        answer = error_json(raw_post(api, "/events", body), 400, "invalid_request")
        assert [(e["index"], e["field"]) for e in answer["errors"]] == [(1, field)], answer
        assert reason in answer["errors"][0]["reason"]
    # while a surrogate PAIR is one valid character
    pair = rb'{"events": [{"entity_id": "http-\ud83d\ude00", "timestamp": 1, "value": 1}]}'
    assert ok_json(raw_post(api, "/events", pair)) == {"accepted": 1, "duplicates": 0}
    assert ok_json(api.delete(f"/entities/{quote('http-😀')}")) == {"deleted_events": 1}


def test_identifiers_of_256_bytes_pass_and_257_do_not(api: httpx.Client) -> None:
    body = {"events": [{"entity_id": ID_256_BYTES, "timestamp": T, "value": 4.0}]}
    assert ok_json(api.post("/events", json=body)) == {"accepted": 1, "duplicates": 0}
    found = ok_json(api.post("/features", json={"entity_id": ID_256_BYTES}))
    assert found["features"]["value_max"] == 4.0
    assert ok_json(api.post("/features/batch", json={"entity_ids": [ID_256_BYTES]}))["count"] == 1
    error_json(
        api.post("/features/batch", json={"entity_ids": [ID_257_BYTES]}), 400, "invalid_request"
    )
    error_json(api.delete(f"/entities/{quote(ID_257_BYTES)}"), 400, "invalid_request")
    assert ok_json(api.delete(f"/entities/{quote(ID_256_BYTES)}")) == {"deleted_events": 1}


def test_delete_path_must_be_utf8_without_control_characters(api: httpx.Client) -> None:
    for path in ("/entities/%FF", "/entities/%ED%A0%80", "/entities/a%00b", "/entities/a%0Ab"):
        error_json(api.delete(path), 400, "invalid_request")


# ----------------------------------------------------- unknown_feature / unknown_version
def test_unknown_feature_lists_unknown_and_valid(api: httpx.Client) -> None:
    names = ["value_max", "no_such", "zz_top"]
    for path, body in (
        ("/features", {"entity_id": entity(2), "features": names}),
        ("/features/batch", {"entity_ids": [entity(2)], "features": names}),
        ("/features/historical", {"rows": [{"entity_id": "a", "timestamp": T}], "features": names}),
        ("/features", {"entity_id": entity(2), "features": names, "version": "v2"}),
    ):
        answer = error_json(api.post(path, json=body), 400, "unknown_feature")
        assert answer["unknown"] == ["no_such", "zz_top"]
        assert answer["valid"] == feature_set(body.get("version", "v1")).names


def test_unknown_version_lists_unknown_and_valid(api: httpx.Client) -> None:
    for path, body in (
        ("/features", {"entity_id": entity(2), "version": "v9"}),
        ("/features/batch", {"entity_ids": [entity(2)], "version": "V1"}),
        ("/features/historical", {"rows": [{"entity_id": "a", "timestamp": T}], "version": ""}),
    ):
        answer = error_json(api.post(path, json=body), 400, "unknown_version")
        assert answer["unknown"] == [body["version"]]
        assert answer["valid"] == ["v1", "v2"]


# -------------------------------------------------------------------- entity_not_found
def test_entity_not_found_is_404_for_single_features_only(api: httpx.Client) -> None:
    answer = error_json(api.post("/features", json={"entity_id": MISSING}), 404, "entity_not_found")
    assert answer["entity_id"] == MISSING
    early = {"entity_id": entity(3), "as_of": DEMO_END_MS - 100 * DAY_MS}
    error_json(api.post("/features", json=early), 404, "entity_not_found")
    batch = ok_json(api.post("/features/batch", json={"entity_ids": [MISSING]}))
    assert [(i["status"], i["features"]) for i in batch["features"]] == [("not_found", None)]


# ------------------------------------------------------- body_too_large / batch_too_large
def test_body_too_large(api: httpx.Client) -> None:
    padding = "x" * MAX_BODY_BYTES
    for path in POST_PATHS:
        response = api.post(path, json={"entity_id": padding}, headers={REQUEST_ID: "big-1"})
        answer = error_json(response, 413, "body_too_large")
        assert response.headers[REQUEST_ID] == "big-1"
        assert "MAX_BODY_BYTES" in answer["message"]
    # the stack still serves
    assert ok_json(api.post("/features", json={"entity_id": entity(4)}))["entity_id"] == entity(4)


def raw_exchange(stack: Stack, data: bytes) -> tuple[int, dict, str]:
    """(status, JSON body, raw head) of what the gateway answers to raw bytes on a new
    connection, which it then closes."""
    import json
    import socket

    with socket.create_connection(("127.0.0.1", stack.settings.port), timeout=RAW_TIMEOUT_S) as s:
        s.sendall(data)
        received = b""
        while chunk := s.recv(65536):  # until the gateway closes the connection
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body), head.decode().lower()


def test_oversized_headers_are_431(stack: Stack) -> None:
    big = b"X-Padding: " + b"a" * (MAX_HEADER_BYTES * 2) + b"\r\n"
    status, body, _ = raw_exchange(stack, b"GET /health HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n")
    assert (status, body["error"]) == (431, "headers_too_large")
    assert "HTTP_MAX_HEADER_BYTES" in body["message"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"POST /features HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            b'Content-Type: application/json\r\n\r\n5\r\n{"ent',
            id="unterminated-chunked-body",
        ),
        pytest.param(
            b'POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{"events',
            id="short-body",
        ),
        pytest.param(b"POST /features HTTP/1.1\r\nHost: t\r\n", id="unfinished-headers"),
    ],
)
def test_a_request_that_stops_arriving_is_408_within_the_read_timeout(
    stack: Stack, request_bytes: bytes
) -> None:
    started = time.monotonic()
    status, body, head = raw_exchange(stack, request_bytes)
    assert (status, body["error"]) == (408, "request_timeout")
    assert "connection: close" in head
    assert time.monotonic() - started < RAW_TIMEOUT_S  # answered, not left hanging


def test_batch_too_large(api: httpx.Client) -> None:
    limit = LIMITS["BATCH_MAX_ENTITIES"]
    ids = [entity(i) for i in range(limit)]
    assert ok_json(api.post("/features/batch", json={"entity_ids": ids}))["count"] == limit
    over = error_json(
        api.post("/features/batch", json={"entity_ids": [*ids, entity(limit)]}),
        413,
        "batch_too_large",
    )
    assert over["limit"] == limit
    limit = LIMITS["HISTORICAL_MAX_ROWS"]
    rows = [{"entity_id": entity(i), "timestamp": T} for i in range(limit + 1)]
    assert ok_json(api.post("/features/historical", json={"rows": rows[:-1]}))["count"] == limit
    over = error_json(api.post("/features/historical", json={"rows": rows}), 413, "batch_too_large")
    assert over["limit"] == limit
    limit = LIMITS["EVENTS_MAX_PER_REQUEST"]
    events = [{"entity_id": "http-err-many", "timestamp": T + i, "value": 1.0} for i in range(31)]
    over = error_json(api.post("/events", json={"events": events}), 413, "batch_too_large")
    assert over["limit"] == limit
    assert ok_json(api.delete("/entities/http-err-many")) == {"deleted_events": 0}


# ----------------------------------------------------- not_found / method_not_allowed
def test_unknown_routes_and_methods_answer_in_the_json_shape(api: httpx.Client) -> None:
    for method, path in (("GET", "/"), ("GET", "/nope"), ("POST", "/features/nope")):
        assert set(error_json(api.request(method, path), 404, "not_found")) == {"error", "message"}
    for method, path, allowed in (
        ("GET", "/features", "POST"),
        ("PUT", "/events", "POST"),
        ("DELETE", "/features/stats", "GET"),
        ("POST", "/health", "GET"),
        ("GET", "/entities/x", "DELETE"),
    ):
        response = api.request(method, path)
        error_json(response, 405, "method_not_allowed")
        assert response.headers["Allow"] == allowed, path


# ----------------------------------------------------------------------- overloaded 503
def test_overloaded_answers_503_with_retry_after(
    private_stack: Callable[..., Stack],
) -> None:
    # Given one worker, a broker queue of one job, and chunks of one entity
    stack = private_stack(workers=1, env={"BROKER_QUEUE_MAX": "1", "BATCH_SIZE": "1"})
    with http_client(stack) as api:
        # When a batch needs more jobs than the queue holds
        ids = [entity(i) for i in range(100, 103)]
        response = api.post("/features/batch", json={"entity_ids": ids, "as_of": DEMO_END_MS})
        # Then it is refused at once, with Retry-After
        answer = error_json(response, 503, "overloaded")
        assert response.headers["Retry-After"] == "1"
        assert "queue" in answer["message"]
        # while a request of one job is served
        one = {"entity_ids": ids[:1], "as_of": DEMO_END_MS}
        assert ok_json(api.post("/features/batch", json=one))["count"] == 1
    # And many concurrent one-job requests get a correct answer or a quick 503 overloaded
    statuses = asyncio.run(_concurrent_batches(stack))
    assert set(statuses) <= {200, 503}
    assert statuses.count(503) >= 1
    assert statuses.count(200) >= 1


async def _concurrent_batches(stack: Stack) -> list[int]:
    """Rounds of 40 concurrent one-entity batches until one was refused (deadline 30 s)."""
    statuses: list[int] = []
    deadline = time.monotonic() + 30
    async with RawHttp(stack.http_url, 40) as client:
        while 503 not in statuses and time.monotonic() < deadline:  # deadline-poll
            requests = [
                client.request(
                    "POST",
                    "/features/batch",
                    {"entity_ids": [entity(110 + k)], "as_of": DEMO_END_MS - k},
                )
                for k in range(40)
            ]
            for k, response in enumerate(await asyncio.gather(*requests)):
                statuses.append(response.status_code)
                if response.status_code == 503:
                    error_json(response, 503, "overloaded")
                    assert response.headers["Retry-After"] == "1"
                    continue
                item = ok_json(response)["features"][0]
                assert (item["entity_id"], item["timestamp"]) == (entity(110 + k), DEMO_END_MS - k)
                assert item["status"] == "ok"
    return statuses


# ----------------------------------------------------------------------- no_workers 503
def test_no_workers_answers_503_and_health_is_down(private_stack: Callable[..., Stack]) -> None:
    # Given a stack whose workers are not restarted, and one cached vector
    stack = private_stack(workers=2, autorestart=False)
    with http_client(stack) as api:
        warm = ok_json(api.post("/features", json={"entity_id": entity(120)}))
        # When every compute worker is SIGKILLed
        stack.kill("worker-0")
        stack.kill("worker-1")

        def down() -> httpx.Response | None:
            response = api.get("/health")
            return response if response.status_code == 503 else None

        response = wait_for(down, 15, "/health to answer 503")
        # Then /health says down (503, same shape), misses get no_workers, hits still come
        health = response.json()
        assert health["status"] == "down"
        assert health["workers"] == {"alive": 0, "expected": 2}
        assert (health["broker"], health["cache"]) == ("ok", "ok")
        assert "worker-0" not in health["memory"]
        assert {"broker", "gateway", "gateway-0", "gateway-1"} <= set(health["memory"])
        for path, body in (
            ("/features", {"entity_id": entity(121)}),
            ("/features/batch", {"entity_ids": [entity(121), entity(120)]}),
            ("/features/historical", {"rows": [{"entity_id": entity(121), "timestamp": T}]}),
            ("/events", {"events": [event()]}),
        ):
            response = api.post(path, json=body)
            error_json(response, 503, "no_workers")
            assert response.headers["Retry-After"] == "1"
        hit = ok_json(api.post("/features", json={"entity_id": entity(120)}))
        assert (hit["cached"], hit["features"]) == (True, warm["features"])
        assert api.get("/features/stats").status_code == 200
        # And with the broker gone too, /health still answers: 503, broker down
        stack.kill("broker")
        response = api.get("/health")
        health = response.json()
        assert response.status_code == 503
        assert (health["status"], health["broker"]) == ("down", "down")
        assert health["workers"] == {"alive": 0, "expected": 2}
        assert {"gateway", "gateway-0", "gateway-1"} <= set(health["memory"])


# -------------------------------------------------------------------------- timeout 504
HEAVY_EVENTS = 20_000
INGEST_CHUNK = 2_000


def test_timeout_answers_504(private_stack: Callable[..., Stack], tmp_path: Path) -> None:
    # Given one worker, chunks of 50 rows, a 600 ms deadline, and an entity with 20,000
    # events, so that a row costs ~1 ms: each chunk stays far below the 500 ms heartbeat
    # liveness, while 3,000 rows of work take seconds
    env = {
        "REQUEST_TIMEOUT_MS": "600",
        "HEARTBEAT_INTERVAL_MS": "100",
        "HEARTBEAT_LIVENESS": "5",
        "BATCH_SIZE": "50",
    }
    stack = private_stack(tmp_path / "store", workers=1, env=env)
    rng = np.random.default_rng(7)
    stamps = DEMO_END_MS - rng.integers(0, 90 * DAY_MS, HEAVY_EVENTS)
    with http_client(stack) as api:
        values = rng.random(HEAVY_EVENTS)
        for start in range(0, HEAVY_EVENTS, INGEST_CHUNK):  # each ingest well within 600 ms
            events = [
                {"entity_id": "heavy", "timestamp": int(t), "value": float(v)}
                for t, v in zip(
                    stamps[start : start + INGEST_CHUNK],
                    values[start : start + INGEST_CHUNK],
                    strict=True,
                )
            ]
            assert ok_json(api.post("/events", json={"events": events}))["accepted"] == len(events)
        rows = [{"entity_id": "heavy", "timestamp": int(t)} for t in stamps[:3000]]
        # When the request's work outlasts REQUEST_TIMEOUT_MS
        started = time.monotonic()
        response = api.post("/features/historical", json={"rows": rows})
        elapsed_s = time.monotonic() - started
        # Then it is answered 504 timeout near the deadline, not after the work
        answer = error_json(response, 504, "timeout")
        assert "600 ms" in answer["message"]
        assert elapsed_s < 3.0
        # and the stack serves again once the chunk in hand is done
        small = {"rows": [{"entity_id": "heavy", "timestamp": DEMO_END_MS}]}
        assert ok_json(api.post("/features/historical", json=small))["rows"][0]["status"] == "ok"
    assert stack.health()["workers"]["alive"] == 1
