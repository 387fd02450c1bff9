"""Hostile ZeroMQ peers are bounded (SPEC §11; issue 10, failures 3-5): a client that never
reads costs the broker a bounded number of bytes and memory returns to its baseline once it
is gone; a message of millions of frames is refused before any work; malformed vector
messages and jobs are counted and dropped, and nobody crashes or restarts.

One stack for the module: broker, 2 workers and drift on the 300-entity demo store, with a
small reply budget per client (BROKER_CLIENT_MAX_BYTES = 8 MiB) so the bound shows quickly.
"""

from __future__ import annotations

import msgspec
import numpy as np
import psutil
import pytest
import zmq
from integration_support import (
    RawSocket,
    copy_store,
    entity,
    read_reply,
    request_header,
    running_stack,
)

from featurestore.errors import Code
from featurestore.features.registry import REGISTRY
from featurestore.ops.launcher import Stack, wait_for
from featurestore.wire.backend import TOPIC_VECTORS
from featurestore.wire.client import Client
from featurestore.wire.envelope import request_frames
from featurestore.wire.frames import Op, put_array

CLIENT_MAX_BYTES = 8 << 20
MAX_FRAMES = 64
BATCH_IDS = [entity(i % 300) for i in range(10_000)]  # a ~2 MB reply each
FLOOD = 400  # batch requests the non-reading client sends (~800 MB of replies unbounded)
RSS_SLACK_BYTES = 160 << 20  # the bound the test allows the broker above its baseline
SETTLED_BYTES = 48 << 20  # above its baseline once the client is gone (not 2.6 GB, as before)
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def stack(demo_dir) -> Stack:
    env = {"BROKER_CLIENT_MAX_BYTES": str(CLIENT_MAX_BYTES), "ZMQ_MAX_FRAMES": str(MAX_FRAMES)}
    with running_stack(demo_dir, workers=2, drift=True, env=env) as running:
        with running.client() as fs:
            fs.batch(BATCH_IDS)  # every reply below is a cache hit: the broker's own work
        yield running


def broker_rss(stack: Stack) -> int:
    return psutil.Process(stack.pid("broker")).memory_info().rss


def messages(stack: Stack) -> dict:
    with stack.client() as fs:
        return fs.stats()["messages"]


def assert_nothing_restarted(stack: Stack) -> None:
    for name in ("broker", "drift", "worker-0", "worker-1"):
        assert stack.restart_count(name) == 0, name


# ------------------------------------------------------------ a client that never reads
def test_a_client_that_never_reads_costs_a_bounded_number_of_bytes(stack: Stack) -> None:
    # Given the broker's memory at rest
    baseline = broker_rss(stack)
    before = messages(stack)
    context = zmq.Context()
    greedy = context.socket(zmq.DEALER)
    greedy.setsockopt(zmq.LINGER, 0)
    greedy.setsockopt(zmq.RCVHWM, 1)
    greedy.setsockopt(zmq.RCVBUF, 4096)
    greedy.connect(stack.frontend)
    peak = baseline
    try:
        # When a client sends many large requests and never receives
        for i in range(FLOOD):
            greedy.send_multipart(
                request_frames(i + 1, f"greedy-{i}", Op.BATCH, {"entity_ids": BATCH_IDS})
            )
            if i % 20 == 0:
                peak = max(peak, broker_rss(stack))

        def dropped_enough() -> bool:
            nonlocal peak
            peak = max(peak, broker_rss(stack))
            return messages(stack)["stalled_clients"] > before["stalled_clients"]

        wait_for(dropped_enough, DEADLINE_S, "the broker to give up on the client")
        # Then other clients are served meanwhile, and its replies were dropped, not kept
        with stack.client(timeout_ms=10_000) as fs:
            assert fs.get(entity(1))["entity_id"] == entity(1)
        assert messages(stack)["dropped_replies"] > before["dropped_replies"]
        assert peak - baseline < RSS_SLACK_BYTES, (peak - baseline) >> 20
    finally:
        greedy.close(linger=0)
        context.term()

    # And once the client is gone, the broker's memory returns to its baseline
    def settled() -> bool:
        figures = messages(stack)
        return figures["backlogged_clients"] == 0 and broker_rss(stack) < baseline + SETTLED_BYTES

    wait_for(settled, DEADLINE_S, "the broker's memory to return to its baseline")
    assert_nothing_restarted(stack)


def test_a_connection_with_too_many_requests_in_progress_is_told_to_wait(
    demo_dir, tmp_path
) -> None:
    # Given a broker with no compute worker: every request stays in progress until the broker
    # gives up on it (no_workers), so what is in progress is known
    env = {"BROKER_CLIENT_MAX_PENDING": "3", "REQUEST_TIMEOUT_MS": "30000"}
    store = copy_store(demo_dir, tmp_path / "s")
    with (
        running_stack(store, workers=0, env=env) as idle,
        idle.client(timeout_ms=30_000, retry_ms=30_000) as fs,
    ):
        # When one connection sends more requests than it may have in progress
        ids = [fs.submit(Op.GET, {"entity_id": entity(i)}) for i in range(12)]
        replies = fs.collect(ids)
    # Then the first three wait (and end as no_workers), the rest are told to retry at once
    codes = [r.body["error"] for r in replies]
    assert codes == [Code.NO_WORKERS.value] * 3 + [Code.OVERLOADED.value] * 9
    assert "BROKER_CLIENT_MAX_PENDING" in replies[-1].body["message"]


# ----------------------------------------------------------- a message of many frames
def test_a_message_of_millions_of_frames_is_refused_without_stalling_others(
    stack: Stack,
) -> None:
    before = messages(stack)["malformed"]["broker"]
    frames = 3_000_000
    with RawSocket(stack.frontend) as raw:
        raw.socket.setsockopt(zmq.SNDHWM, 0)
        header = request_header(31, "many-frames", "get", {"entity_id": entity(1)})
        raw.socket.send(header, zmq.SNDMORE)
        for _ in range(frames - 2):
            raw.socket.send(b"", zmq.SNDMORE)
        raw.socket.send(b"")
        # a well-behaved client right behind it gets its answer within a short deadline
        with stack.client(timeout_ms=3000, retry_ms=3000) as fs:
            assert fs.get(entity(2))["entity_id"] == entity(2)
        reply = read_reply(raw.recv(timeout_ms=30_000))
    assert reply.ok is False and reply.correlation_id == 31
    assert reply.body["error"] == Code.INVALID_REQUEST.value
    assert f"{frames} frames" in reply.body["message"] and str(MAX_FRAMES) in reply.body["message"]
    assert messages(stack)["malformed"]["broker"] == before + 1
    assert_nothing_restarted(stack)


# ------------------------------------------------------------- malformed vector messages
def pack(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


def vector_message(header: dict, block) -> list:
    blocks: list = []
    ref = put_array(blocks, block)
    return [TOPIC_VECTORS, pack({**header, "values": msgspec.to_builtins(ref)}), *blocks]


def malformed_vectors() -> list[list]:
    width = len(REGISTRY["v1"].features)
    good = {"worker_id": "spoof", "seq": 1, "version": "v1"}
    return [
        [TOPIC_VECTORS, b"\xc1 not msgpack"],
        [TOPIC_VECTORS],
        vector_message({"worker_id": "spoof", "seq": 2}, np.ones((2, width))),  # no version
        vector_message({**good, "version": "v9"}, np.ones((2, width))),  # unknown version
        vector_message(good, np.ones((2, width + 3))),  # wrong width
        vector_message(good, np.ones(width)),  # 1-D
        vector_message(good, np.ones((2, width), dtype=np.int64)),  # wrong dtype
        vector_message({**good, "seq": "x"}, np.ones((2, width))),
        [TOPIC_VECTORS, pack({**good, "values": {"block": 5, "dtype": "<f8", "shape": [1]}})],
        [TOPIC_VECTORS, *([b""] * (MAX_FRAMES + 10))],
    ]


def test_malformed_vector_messages_are_counted_and_dropped(stack: Stack) -> None:
    cases = malformed_vectors()
    before = messages(stack)["malformed"]["drift"]
    drift_pid = stack.pid("drift")
    context = zmq.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.connect(stack.settings.drift_features_endpoint)
    try:
        # PUB drops what it sends before the subscription arrives: send until the first lands
        def first_counted() -> bool:
            pub.send_multipart(cases[0])
            return messages(stack)["malformed"]["drift"] > before

        wait_for(first_counted, DEADLINE_S, "the drift process to receive a vector message")
        counted = messages(stack)["malformed"]["drift"]
        for _ in range(10):  # ten rounds a second at least, as in the attack
            for frames in cases[1:]:
                pub.send_multipart(frames)
        expected = counted + 10 * (len(cases) - 1)
        wait_for(
            lambda: messages(stack)["malformed"]["drift"] >= expected,
            DEADLINE_S,
            "every malformed vector message to be counted",
        )
    finally:
        pub.close(linger=0)
        context.term()
    with stack.client() as fs:
        assert fs.drift_report()["status"] != "drift_detected"
    assert stack.pid("drift") == drift_pid
    assert_nothing_restarted(stack)


def test_the_stack_still_serves_everything(stack: Stack, client: Client) -> None:
    assert client.get(entity(3))["entity_id"] == entity(3)
    assert client.health()["workers"]["alive"] == 2
