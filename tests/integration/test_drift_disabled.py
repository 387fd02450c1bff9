"""ENABLE_DRIFT_MONITORING=false (SPEC §7): the report says `disabled`, health says drift
`disabled`, and workers publish nothing.

A stack of broker and one worker without a drift process. Before it starts, this module binds
its own SUB socket where the drift process would (DRIFT_FEATURES_ENDPOINT), with a socket
monitor: a publishing worker would connect to it at start and send every online computation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from featurestore.ops.launcher import Stack
from featurestore.timestamps import now_ms
from featurestore.wire.client import Client

QUIET_MS = 500  # how long a publishing worker would have to show itself after a compute


@dataclass
class Listener:
    """Where workers would publish: a bound SUB socket and the monitor of its connections."""

    sub: zmq.Socket
    monitor: zmq.Socket

    def heard(self, timeout_ms: int) -> list[str]:
        """What arrived (messages, accepted connections) within `timeout_ms`."""
        seen = []
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.monitor, zmq.POLLIN)
        # deadline-poll: absence can only be observed for a bounded time
        for socket in dict(poller.poll(timeout_ms)):
            if socket is self.sub:
                seen.append(f"message {self.sub.recv_multipart()[0]!r}")
            else:
                event = recv_monitor_message(self.monitor)
                if event["event"] in (zmq.EVENT_ACCEPTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
                    seen.append(f"connection {event['event']}")
        return seen


@pytest.fixture(scope="module")
def disabled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Listener]]:
    stack = Stack(Path(tmp_path_factory.mktemp("drift-off")), workers=1, drift=False)
    assert stack.settings.enable_drift_monitoring is False
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    monitor = sub.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    sub.bind(stack.settings.drift_features_endpoint)
    try:
        stack.start()
        yield stack, Listener(sub, monitor)
    finally:
        stack.stop()
        with contextlib.suppress(zmq.ZMQError):
            sub.disable_monitor()
        monitor.close(linger=0)
        sub.close(linger=0)
        context.term()


@pytest.fixture
def fs(disabled: tuple[Stack, Listener]) -> Iterator[Client]:
    client = disabled[0].client()
    try:
        yield client
    finally:
        client.close()


def test_health_says_drift_disabled(fs: Client):
    health = fs.health()
    assert health["drift"] == "disabled"
    assert health["status"] == "ok"  # disabled is not down


def test_drift_requests_answer_disabled(fs: Client):
    assert fs.drift_report() == {
        "status": "disabled",
        "message": "drift monitoring is disabled",
        "operation": "drift_report",
    }
    assert fs.drift_baseline(action="reset")["status"] == "disabled"


def test_workers_publish_nothing(fs: Client, disabled: tuple[Stack, Listener]):
    _, listener = disabled
    t_ms = now_ms() - 60_000
    events = [
        {"entity_id": f"off-{i}", "timestamp": t_ms - k * 1000, "value": float(i + k)}
        for i in range(20)
        for k in range(3)
    ]
    fs.ingest(events)
    # single and batch online computations: what an enabled worker publishes
    assert fs.get("off-0")["cached"] is False
    batch = fs.batch([f"off-{i}" for i in range(1, 20)], arrays=True)
    assert batch.found.all() and not batch.cached.any()
    assert listener.heard(QUIET_MS) == []
    assert fs.drift_report()["status"] == "disabled"
