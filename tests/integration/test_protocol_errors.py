"""Bad input on the wire (SPEC §5, §6): garbage frames, a wrong version, an unknown operation,
oversized messages and invalid requests each get an error reply with the catalogue's code,
and the broker keeps serving (it is never restarted). Garbage on the back end is dropped.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from integration_support import (
    DEMO_END_MS,
    RawReply,
    RawSocket,
    entity,
    read_reply,
    request_header,
    wait_alive,
)

from featurestore.errors import Code
from featurestore.features.registry import feature_set
from featurestore.ops.launcher import Stack
from featurestore.timestamps import now_ms
from featurestore.wire.backend import ready_frames
from featurestore.wire.client import Client
from featurestore.wire.frames import (
    PROTOCOL_VERSION,
    SERVICE_FEATURES,
    W_DISCONNECT,
    W_HEARTBEAT,
    W_JOB,
    W_READY,
    W_RESULT,
    Op,
)

MAX_MSG_BYTES = 65_536
STACK_WORKERS = 1
STACK_ENV = {
    "ZMQ_MAXMSGSIZE": str(MAX_MSG_BYTES),
    "BATCH_MAX_ENTITIES": "100",
    "HISTORICAL_MAX_ROWS": "100",
    "EVENTS_MAX_PER_REQUEST": "10",
}
HEALTHY = entity(1)


def assert_serving(stack: Stack) -> None:
    """The broker answers a real request and was never restarted."""
    with stack.client() as fs:
        assert fs.get(HEALTHY)["entity_id"] == HEALTHY
    assert stack.restart_count("broker") == 0


def pack(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


def assert_error(reply: RawReply, code: Code, correlation_id: int) -> None:
    assert reply.ok is False
    assert reply.correlation_id == correlation_id
    assert reply.body["error"] == code.value
    assert reply.body["status"] == {Code.INVALID_REQUEST: 400, Code.BODY_TOO_LARGE: 413}[code]
    assert reply.body["message"]


# ------------------------------------------------------------------ undecodable frames
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([b"\xc1\x00 not msgpack"], id="garbage"),
        pytest.param([b""], id="empty-frame"),
        pytest.param([pack({"op": "get"})], id="header-not-a-list"),
        pytest.param([pack([PROTOCOL_VERSION, 7, "r", "get"])], id="header-too-short"),
        pytest.param([pack([PROTOCOL_VERSION, 7, "", "get", {}])], id="empty-request-id"),
        pytest.param([pack([PROTOCOL_VERSION, 7, 42, "get", {}])], id="request-id-not-a-string"),
        pytest.param([pack([PROTOCOL_VERSION, 7, "r" * 129, "get", {}])], id="request-id-too-long"),
        pytest.param([pack([PROTOCOL_VERSION, "x", "r", "get", {}])], id="correlation-not-an-int"),
    ],
)
def test_undecodable_requests_get_an_error_reply(stack: Stack, frames: list) -> None:
    with RawSocket(stack.frontend) as raw:
        reply = raw.reply(frames)
        assert_error(reply, Code.INVALID_REQUEST, reply.correlation_id)
        assert reply.correlation_id in (0, 7)  # named when it could be read
    assert_serving(stack)


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        pytest.param([PROTOCOL_VERSION + 1, "get", {"entity_id": HEALTHY}], "version", id="v+1"),
        pytest.param([None, "get", {"entity_id": HEALTHY}], "version", id="version-nil"),
        pytest.param([PROTOCOL_VERSION, "explode", {}], "explode", id="unknown-op"),
        pytest.param(
            [PROTOCOL_VERSION, "historical_chunk", {}], "historical_chunk", id="back-end-op"
        ),
        pytest.param([PROTOCOL_VERSION, "get", [HEALTHY]], "payload", id="payload-not-a-map"),
    ],
)
def test_readable_but_wrong_requests_name_their_request_id(
    stack: Stack, header: list, needle: str
) -> None:
    version, op, payload = header
    request_id = f"bad-{needle}-{op}"
    with RawSocket(stack.frontend) as raw:
        reply = raw.reply([pack([version, 11, request_id, op, payload])])
    assert_error(reply, Code.INVALID_REQUEST, 11)
    assert needle in reply.body["message"]
    assert_serving(stack)


def test_oversized_messages(stack: Stack) -> None:
    ids = [HEALTHY] * 8000  # ~100 KB: over ZMQ_MAXMSGSIZE, under ZeroMQ's own hard limit
    huge = [entity(2) * 25] * 40_000  # ~10 MB: ZeroMQ drops the connection itself
    with RawSocket(stack.frontend) as raw:
        reply = raw.reply([request_header(21, "too-big", "batch", {"entity_ids": ids})])
        assert_error(reply, Code.BODY_TOO_LARGE, 21)
        assert str(MAX_MSG_BYTES) in reply.body["message"]
        # Split over several frames, the total counts
        half = request_header(22, "too-big-2", "get", {"entity_id": HEALTHY})
        reply = raw.reply([half, b"\x00" * (MAX_MSG_BYTES // 2), b"\x00" * (MAX_MSG_BYTES // 2)])
        assert_error(reply, Code.BODY_TOO_LARGE, 22)
        # Far too big: the connection is dropped by ZeroMQ (no answer possible), the socket
        # reconnects by itself, and the next request on it is served.
        raw.send([request_header(23, "huge", "batch", {"entity_ids": huge})])
        after = raw.reply([request_header(24, "after-huge", "get", {"entity_id": HEALTHY})])
        assert after.ok, after.body
        assert after.correlation_id == 24
    assert_serving(stack)


def test_garbage_does_not_disturb_requests_in_flight(stack: Stack, client: Client) -> None:
    request_ids = [
        client.submit(Op.GET, {"entity_id": entity(i), "as_of": DEMO_END_MS}) for i in range(20)
    ]
    with RawSocket(stack.frontend) as raw:
        for _ in range(20):
            raw.send([b"\xc1garbage"])
        for _ in range(20):
            assert_error(read_reply(raw.recv()), Code.INVALID_REQUEST, 0)
    replies = client.collect(request_ids)
    assert [r.body["entity_id"] for r in replies] == [entity(i) for i in range(20)]


# ---------------------------------------------------------------- invalid requests
def _error(client: Client, op: Op, payload: dict) -> dict:
    reply = client.request(op, payload)
    assert reply.ok is False, reply.body
    return reply.body


@pytest.mark.parametrize(
    ("op", "payload"),
    [
        (Op.GET, {}),
        (Op.GET, {"entity_id": 5}),
        (Op.GET, {"entity_id": ""}),
        (Op.GET, {"entity_id": "a\x01b"}),
        (Op.GET, {"entity_id": "x" * 257}),
        (Op.GET, {"entity_id": HEALTHY, "bogus": 1}),
        (Op.GET, {"entity_id": HEALTHY, "features": "value_mean"}),
        (Op.GET, {"entity_id": HEALTHY, "version": 2}),
        (Op.GET, {"entity_id": HEALTHY, "as_of": 1_767_225_600_000.5}),
        (Op.GET, {"entity_id": HEALTHY, "as_of": True}),
        (Op.GET, {"entity_id": HEALTHY, "as_of": "2025-13-45T00:00:00Z"}),
        (Op.GET, {"entity_id": HEALTHY, "as_of": -1}),
        (Op.BATCH, {}),
        (Op.BATCH, {"entity_ids": []}),
        (Op.BATCH, {"entity_ids": HEALTHY}),
        (Op.BATCH, {"entity_ids": [HEALTHY, 7]}),
        (Op.HISTORICAL, {}),
        (Op.HISTORICAL, {"rows": []}),
        (Op.HISTORICAL, {"rows": [{"entity_id": HEALTHY}]}),
        (Op.HISTORICAL, {"rows": [{"entity_id": HEALTHY, "timestamp": 1, "x": 2}]}),
        (Op.HISTORICAL, {"rows": [{"entity_id": HEALTHY, "timestamp": 1.5}]}),
        (Op.HISTORICAL, {"entity_ids": [HEALTHY, HEALTHY], "timestamps": [1]}),
        (Op.INGEST, {}),
        (Op.INGEST, {"events": []}),
        (Op.INGEST, {"events": "nope"}),
        (Op.INGEST, {"events": [{"entity_id": "e", "timestamp": 1, "value": 1}], "x": 1}),
        (Op.DELETE, {}),
        (Op.DELETE, {"entity_id": ""}),
    ],
    ids=lambda v: v.value if isinstance(v, Op) else None,
)
def test_invalid_requests_are_invalid_request(stack: Stack, client: Client, op, payload) -> None:
    body = _error(client, op, payload)
    assert (body["error"], body["status"]) == ("invalid_request", 400)
    assert_serving(stack)


def test_as_of_later_than_now_is_invalid(client: Client) -> None:
    body = _error(client, Op.GET, {"entity_id": HEALTHY, "as_of": now_ms() + 60_000})
    assert body["error"] == "invalid_request"
    assert "later than now" in body["message"]
    body = _error(client, Op.BATCH, {"entity_ids": [HEALTHY], "as_of": now_ms() + 60_000})
    assert body["error"] == "invalid_request"


def test_an_integral_float_timestamp_is_accepted(client: Client) -> None:
    whole = client.get(HEALTHY, as_of=float(DEMO_END_MS))
    assert whole["timestamp"] == DEMO_END_MS


def test_unknown_feature_and_version_list_the_valid_ones(client: Client) -> None:
    body = _error(client, Op.GET, {"entity_id": HEALTHY, "features": ["value_mean", "nope"]})
    assert (body["error"], body["status"]) == ("unknown_feature", 400)
    assert body["unknown"] == ["nope"]
    assert body["valid"] == feature_set("v1").names
    body = _error(client, Op.BATCH, {"entity_ids": [HEALTHY], "version": "v9"})
    assert (body["error"], body["status"]) == ("unknown_version", 400)
    assert (body["unknown"], body["valid"]) == (["v9"], ["v1", "v2"])


def test_count_limits_are_batch_too_large(client: Client) -> None:
    body = _error(client, Op.BATCH, {"entity_ids": [HEALTHY] * 101})
    assert (body["error"], body["status"], body["limit"]) == ("batch_too_large", 413, 100)
    rows = [{"entity_id": HEALTHY, "timestamp": DEMO_END_MS}] * 101
    body = _error(client, Op.HISTORICAL, {"rows": rows})
    assert (body["error"], body["limit"]) == ("batch_too_large", 100)
    events = [{"entity_id": "limit_test", "timestamp": DEMO_END_MS, "value": 1.0}] * 11
    body = _error(client, Op.INGEST, {"events": events})
    assert (body["error"], body["limit"]) == ("batch_too_large", 10)
    # at the limit: served
    assert len(client.batch([HEALTHY] * 100)) == 100


def test_one_invalid_event_rejects_the_request_whole(stack: Stack, client: Client) -> None:
    events = [
        {"entity_id": "rejected_entity", "timestamp": DEMO_END_MS, "value": 1.0},
        {"entity_id": "rejected_entity", "timestamp": DEMO_END_MS, "value": True},
        {"entity_id": "rejected_entity", "timestamp": now_ms() + 3_600_000, "value": 2.0},
    ]
    body = _error(client, Op.INGEST, {"events": events})
    assert body["error"] == "invalid_request"
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(1, "value"), (2, "timestamp")]
    assert client.batch(["rejected_entity"])[0]["status"] == "not_found"
    assert_serving(stack)


# ---------------------------------------------------------------------- back end
@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([b"\x99"], id="unknown-command"),
        pytest.param([W_READY], id="ready-without-map"),
        pytest.param([W_READY, b"\xc1"], id="ready-garbage"),
        pytest.param([W_READY, pack({"worker_id": "x", "pid": 1})], id="ready-without-service"),
        pytest.param([W_READY, pack(["features"])], id="ready-not-a-map"),
        pytest.param([W_HEARTBEAT, pack([1, 2])], id="heartbeat-not-a-map"),
        pytest.param(
            [W_HEARTBEAT, pack({"service": SERVICE_FEATURES, "pid": "x"})], id="heartbeat-bad-pid"
        ),
        pytest.param([W_RESULT], id="result-without-job"),
        pytest.param([W_RESULT, b"no-such-job", b"\xc1"], id="result-of-unknown-job"),
        pytest.param([W_JOB, b"1", b"2"], id="job-to-the-broker"),
        pytest.param([W_DISCONNECT], id="disconnect-to-the-broker"),
    ],
)
def test_garbage_on_the_back_end_is_dropped(stack: Stack, frames: list) -> None:
    with RawSocket(stack.settings.broker_backend) as raw:
        raw.send(frames)
        # Messages of one connection are read in order: once the READY that follows the
        # garbage has registered this peer, the garbage has been handled.
        raw.send(ready_frames(SERVICE_FEATURES, "probe", os.getpid()))
        wait_alive(stack, 2)
    wait_alive(stack, 1)  # the probe is gone: the broker notices at its next heartbeat
    assert_serving(stack)
