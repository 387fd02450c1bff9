"""Authentication on a real stack (SPEC §11, issue 10 failure 6): CURVE on every ZeroMQ
socket and bearer tokens on HTTP.

One stack for the module: broker, 2 workers, drift and the gateway, with ZMQ_CURVE_KEYS_DIR
and API_TOKENS_FILE made by the same code as `featurestore keys generate` and `featurestore
keys token`. Hostile peers are real ZeroMQ sockets: a DEALER that registers as a worker on
the back end (before CURVE it received ingest jobs and acknowledged them unstored: 8 of 40
acknowledged ingests were lost), a PUB that sends well-formed fake vectors to the drift SUB
(before CURVE they set `drift_detected`), clients without keys or with keys nobody
authorised. Each either has no key at all or a fresh key pair that presents the real server
key; a monitor on its socket shows the handshake refused, so the test waits on that, never
on time.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import zmq
from http_support import error_json, gateway_stack, http_client, ok_json
from integration_support import entity
from zmq.utils.monitor import recv_monitor_message

from featurestore.cli import main as featurestore_cli
from featurestore.errors import Code, ServiceError
from featurestore.features.registry import feature_set
from featurestore.ops.launcher import Stack, wait_for
from featurestore.security import curve
from featurestore.security.curve import CurveClient, internal_keys, load_client_keys
from featurestore.security.tokens import Scope, add_token
from featurestore.timestamps import now_ms
from featurestore.wire.backend import ready_frames
from featurestore.wire.client import Client
from featurestore.wire.frames import SERVICE_FEATURES
from workers.publisher import VectorPublisher

HANDSHAKE_TIMEOUT_MS = 10_000
REFUSED_CLIENT_TIMEOUT_MS = 1000
DEADLINE_S = 20.0
PROBE_INGESTS = 40
FAKE_MESSAGES = 20
FAKE_ROWS = 50
REFUSED = frozenset(
    {
        zmq.EVENT_HANDSHAKE_FAILED_AUTH,
        zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
        zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    }
)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secrets")


@pytest.fixture(scope="module")
def keys_dir(secrets_dir: Path) -> Path:
    directory = secrets_dir / "keys"
    curve.generate_keys(directory)
    return directory


@pytest.fixture(scope="module")
def tokens(secrets_dir: Path) -> dict[str, str]:
    path = secrets_dir / "tokens.toml"
    return {
        "read": add_token(path, "model-server", Scope.READ),
        "write": add_token(path, "loader", Scope.WRITE),
        "path": str(path),
    }


@pytest.fixture(scope="module")
def secure_stack(demo_dir: Path, keys_dir: Path, tokens: dict[str, str]) -> Iterator[Stack]:
    env = {
        "ZMQ_CURVE_KEYS_DIR": str(keys_dir),
        "API_TOKENS_FILE": tokens["path"],
        "DRIFT_CHECK_INTERVAL_MS": "200",
    }
    with gateway_stack(demo_dir, workers=2, drift=True, env=env) as stack:
        yield stack


@pytest.fixture
def fs(secure_stack: Stack, keys_dir: Path) -> Iterator[Client]:
    """A ZeroMQ client with the authorised `clients/client` pair."""
    with Client(secure_stack.frontend, curve=load_client_keys(keys_dir)) as client:
        yield client


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def stranger(keys_dir: Path) -> CurveClient:
    """A fresh key pair nobody authorised, presenting the real server key."""
    public, secret = zmq.curve_keypair()
    return CurveClient(curve.read_public(keys_dir / "server.key"), public, secret)


def hostile_keys(keys_dir: Path) -> list[CurveClient | None]:
    return [None, stranger(keys_dir)]


@contextlib.contextmanager
def refused_socket(
    context: zmq.Context, kind: int, endpoint: str, keys: CurveClient | None
) -> Iterator[zmq.Socket]:
    """A socket connected to `endpoint` with `keys` (None: no CURVE), yielded once the server
    has refused its handshake (so nothing it sends or awaits can pass)."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    curve.secure_client(socket, keys)
    monitor = socket.get_monitor_socket()
    try:
        socket.connect(endpoint)
        wait_refused(monitor)
        yield socket
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)
        socket.close(linger=0)


def wait_refused(monitor: zmq.Socket) -> None:
    while monitor.poll(HANDSHAKE_TIMEOUT_MS):
        event = recv_monitor_message(monitor)["event"]
        assert event != zmq.EVENT_HANDSHAKE_SUCCEEDED, "a hostile peer was let in"
        if event in REFUSED:
            return
    raise AssertionError(f"no handshake outcome within {HANDSHAKE_TIMEOUT_MS} ms")


# --------------------------------------------------------------------- ZeroMQ: back end
def test_a_hostile_worker_never_gets_a_job_and_every_ingest_is_stored(
    secure_stack: Stack, keys_dir: Path, fs: Client, context: zmq.Context
) -> None:
    backend = secure_stack.settings.broker_backend
    with contextlib.ExitStack() as hostile:
        # Given DEALERs on the back end, without keys and with an unauthorised key, each
        # registering as an idle compute worker
        peers = [
            hostile.enter_context(refused_socket(context, zmq.DEALER, backend, keys))
            for keys in hostile_keys(keys_dir)
        ]
        for peer in peers:
            with contextlib.suppress(zmq.Again):  # no connection: nothing to queue on
                peer.send_multipart(
                    ready_frames(SERVICE_FEATURES, "hostile", os.getpid()), zmq.NOBLOCK
                )

        # When 40 ingests go through the real client
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        stamp = now_ms() - 60_000
        for i in range(PROBE_INGESTS):
            event = {"entity_id": f"{probe}-{i}", "timestamp": stamp, "value": float(i)}
            assert fs.ingest([event]) == {"accepted": 1, "duplicates": 0}

        # Then every acknowledged ingest is stored, and no hostile peer saw a message
        for i in range(PROBE_INGESTS):
            assert fs.get(f"{probe}-{i}")["features"]["value_mean"] == float(i)
        assert all(not peer.poll(0) for peer in peers)
        health = fs.health()
        assert health["workers"] == {"alive": 2, "expected": 2}


# -------------------------------------------------------------------- ZeroMQ: drift SUB
def fake_vectors() -> np.ndarray:
    width = len(feature_set("v1").names)
    return np.full((FAKE_ROWS, width), 1e6, dtype=np.float64)


def publish_fakes(publisher: VectorPublisher) -> None:
    for _ in range(FAKE_MESSAGES):
        publisher.publish("v1", fake_vectors())


def test_fake_vectors_from_unauthorised_publishers_never_reach_drift(
    secure_stack: Stack, keys_dir: Path, fs: Client, context: zmq.Context
) -> None:
    endpoint = secure_stack.settings.drift_features_endpoint
    before = fs.drift_report()
    publishers = []
    try:
        # Given PUBs on the drift SUB, without keys and with an unauthorised key
        for n, keys in enumerate(hostile_keys(keys_dir)):
            publisher = VectorPublisher(context, endpoint, f"fake-{n}", True, keys)
            publishers.append(publisher)
            monitor = publisher.socket.get_monitor_socket()
            try:
                wait_refused(monitor)  # it reconnects, and is refused each time
            finally:
                publisher.socket.disable_monitor()
                monitor.close(linger=0)
            # When each sends well-formed fake vectors
            publish_fakes(publisher)

        # And real workers publish the vectors of a batch computed now
        fresh = [entity(i) for i in range(200, 210)]
        assert fs.batch(fresh)[0]["status"] == "ok"

        # Then the drift process absorbed the real vectors and none of the fakes
        def absorbed() -> dict | None:
            report = fs.drift_report()
            return report if report["total_tracked"] >= before["total_tracked"] + 10 else None

        after = wait_for(absorbed, DEADLINE_S, "the batch's vectors in the drift report")
        assert after["total_tracked"] == before["total_tracked"] + len(fresh)
        assert after["dropped"] == before["dropped"]
        assert after["status"] == before["status"] != "drift_detected"
    finally:
        for publisher in publishers:
            publisher.close()


def test_the_same_fakes_with_the_internal_key_are_absorbed(
    secure_stack: Stack, fs: Client, context: zmq.Context
) -> None:
    """The control of the test above: what stops the fakes is the key, not their format."""
    before = fs.drift_report()["total_tracked"]
    publisher = VectorPublisher(
        context,
        secure_stack.settings.drift_features_endpoint,
        "insider",
        True,
        internal_keys(secure_stack.settings),
    )
    try:
        assert publisher.wait_connected(HANDSHAKE_TIMEOUT_MS / 1000)
        expected = before + FAKE_ROWS

        def absorbed() -> bool:
            publisher.publish("v1", fake_vectors())  # PUB drops until the subscription lands
            return fs.drift_report()["total_tracked"] >= expected

        wait_for(absorbed, DEADLINE_S, "the insider's vectors in the drift report")
    finally:
        publisher.close()


# ------------------------------------------------------------------- ZeroMQ: front end
def test_the_front_end_answers_authorised_clients_only(
    secure_stack: Stack, keys_dir: Path, fs: Client
) -> None:
    # An authorised client and the stack's own (internal) key are answered
    assert fs.get(entity(1))["entity_id"] == entity(1)
    with secure_stack.client() as internal:
        assert internal.health()["status"] in ("ok", "degraded")
    # Without keys or with an unauthorised key: no answer at all
    for keys in hostile_keys(keys_dir):
        with Client(
            secure_stack.frontend, curve=keys, timeout_ms=REFUSED_CLIENT_TIMEOUT_MS
        ) as refused:
            with pytest.raises(ServiceError) as caught:
                refused.get(entity(1))
            assert caught.value.code is Code.TIMEOUT


def test_a_client_key_added_at_run_time_is_accepted_without_restart(
    secure_stack: Stack, keys_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"late-{uuid.uuid4().hex[:6]}"
    monkeypatch.delenv("ZMQ_CURVE_KEYS_DIR", raising=False)
    args = ["keys", "generate", "--dir", str(keys_dir), "--client", name]
    assert featurestore_cli(args) == 0
    with Client(secure_stack.frontend, curve=load_client_keys(keys_dir, name)) as late:
        assert late.get(entity(2))["entity_id"] == entity(2)
    assert secure_stack.restart_count("broker") == 0


# --------------------------------------------------------------------- ZeroMQ: drift PUB
def test_reports_reach_authorised_subscribers_only(
    secure_stack: Stack, keys_dir: Path, context: zmq.Context
) -> None:
    endpoint = secure_stack.settings.drift_pub_endpoint
    with contextlib.ExitStack() as sockets:
        refused = []
        for keys in hostile_keys(keys_dir):
            socket = sockets.enter_context(refused_socket(context, zmq.SUB, endpoint, keys))
            socket.setsockopt(zmq.SUBSCRIBE, b"")
            refused.append(socket)
        allowed = context.socket(zmq.SUB)
        sockets.callback(allowed.close, linger=0)
        allowed.setsockopt(zmq.LINGER, 0)
        allowed.setsockopt(zmq.SUBSCRIBE, b"report")
        load_client_keys(keys_dir).apply(allowed)
        allowed.connect(endpoint)
        # An authorised subscriber receives the periodic report (every 200 ms here)
        assert allowed.poll(int(DEADLINE_S * 1000)), "no report for an authorised subscriber"
        topic, body = allowed.recv_multipart()
        assert topic == b"report" and b"total_tracked" in body
        # while the refused ones, connected as long, got nothing
        assert all(not socket.poll(0) for socket in refused)


# ------------------------------------------------------------------------------- HTTP
@pytest.fixture
def http(secure_stack: Stack) -> Iterator[httpx.Client]:
    with http_client(secure_stack) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


EVENT = {"events": [{"entity_id": "http-probe", "timestamp": 1_767_225_600_000, "value": 1.0}]}


def test_http_without_a_token_is_401_with_a_bearer_challenge(http: httpx.Client) -> None:
    for response in (
        http.post("/features", json={"entity_id": entity(3)}),
        http.get("/features/stats"),
        http.post("/events", json=EVENT),
        http.post("/features", json={"entity_id": entity(3)}, headers=bearer("fs_guess")),
        http.post("/features", json={"entity_id": entity(3)}, headers={"Authorization": "x"}),
    ):
        error_json(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith('Bearer realm="featurestore"')


def test_http_health_needs_no_token(http: httpx.Client) -> None:
    assert ok_json(http.get("/health"))["status"] in ("ok", "degraded")


def test_http_read_token_reads_but_does_not_write(
    http: httpx.Client, tokens: dict[str, str]
) -> None:
    read = bearer(tokens["read"])
    assert ok_json(http.post("/features", json={"entity_id": entity(4)}, headers=read))
    assert ok_json(http.post("/features/batch", json={"entity_ids": [entity(4)]}, headers=read))
    row = {"entity_id": entity(4), "timestamp": "2025-12-01T00:00:00Z"}
    assert ok_json(http.post("/features/historical", json={"rows": [row]}, headers=read))
    for path in ("/features/stats", "/features/definitions", "/drift/report", "/metrics"):
        assert http.get(path, headers=read).status_code == 200, path
    for response in (
        http.post("/events", json=EVENT, headers=read),
        http.delete("/entities/http-probe", headers=read),
        http.post("/cache/clear", headers=read),
        http.post("/drift/baseline", json={"action": "reset"}, headers=read),
    ):
        error_json(response, 403, "forbidden")
        assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_http_write_token_writes_and_reads(http: httpx.Client, tokens: dict[str, str]) -> None:
    write = bearer(tokens["write"])
    assert ok_json(http.post("/events", json=EVENT, headers=write))["accepted"] in (0, 1)
    found = ok_json(http.post("/features", json={"entity_id": "http-probe"}, headers=write))
    assert found["features"]["value_mean"] == 1.0
    assert ok_json(http.delete("/entities/http-probe", headers=write))["deleted_events"] == 1
