"""The service on a real supervisord (SPEC §9, §11): supervisord.conf started with private
ports and paths runs every program; a compute worker and the drift process SIGKILLed under
load are restarted by supervisord while every HTTP and ZeroMQ request keeps succeeding; a
SIGTERM to supervisord stops everything and leaves no process behind; the cache segment stays
until `featurestore cache drop`.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from supervised_support import (
    demo_ids,
    featurestore_command,
    http_connection,
    http_get,
    http_request,
    is_healthy,
    private_settings,
    process_info,
    processes_using,
    service_env,
    supervised,
    write_demo_store,
    zmq_health,
)

from featurestore.config import Settings
from featurestore.ops.launcher import wait_for
from featurestore.timestamps import parse_timestamp
from featurestore.wire.client import Client
from shm import segment

DEMO_END_MS = parse_timestamp("2026-01-01T00:00:00Z")
HOUR_MS = 3_600_000
RESTART_TIMEOUT_S = 30.0
JOIN_TIMEOUT_S = 20.0
REQUESTS_AFTER_RECOVERY = 20  # per load thread, once everything is back
ERRORS_KEPT = 20


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with private_settings(tmp_path / "data") as private:
        write_demo_store(private)
        yield private


class Load(threading.Thread):
    """Sends requests until stopped and records every failure. Half of them carry `as_of`, so
    they are never cached and each one reaches a compute worker."""

    def __init__(self, name: str, send: Callable[[int], None], close: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.send = send
        self.close = close
        self.stopping = threading.Event()
        self.done = 0
        self.failed = 0
        self.errors: list[str] = []  # the first few failures, for the report

    def run(self) -> None:
        index = 0
        while not self.stopping.is_set():
            try:
                self.send(index)
            except Exception as exc:  # any failure is what the test reports
                self.failed += 1
                if len(self.errors) < ERRORS_KEPT:
                    self.errors.append(f"{self.name} request {index}: {exc!r}")
            self.done += 1
            index += 1

    def stop(self) -> None:
        self.stopping.set()
        if self.ident is not None:  # started
            self.join(JOIN_TIMEOUT_S)
        assert not self.is_alive(), f"{self.name} did not stop"
        self.close()


def query(ids: list[str], index: int) -> dict:
    body: dict = {"entity_id": ids[index % len(ids)]}
    if index % 2:
        body["as_of"] = DEMO_END_MS - (index % 97) * HOUR_MS
    return body


def zmq_load(settings: Settings, ids: list[str]) -> Load:
    client = Client(settings.broker_frontend)  # default timeout: REQUEST_TIMEOUT_MS + slack

    def send(index: int) -> None:
        body = query(ids, index)
        reply = client.get(body["entity_id"], as_of=body.get("as_of"))
        assert reply["entity_id"] == body["entity_id"], reply

    return Load("zmq-load", send, client.close)


class HttpSender:
    """POST /features on a kept-alive connection, reconnecting after a failure."""

    def __init__(self, settings: Settings, ids: list[str]) -> None:
        self.settings = settings
        self.ids = ids
        self.connection = http_connection(settings)

    def __call__(self, index: int) -> None:
        body = query(self.ids, index)
        try:
            status, reply = http_request(self.connection, "POST", "/features", body)
        except (OSError, http.client.HTTPException):
            self.close()
            self.connection = http_connection(self.settings)
            raise
        assert status == 200, (status, reply)
        assert reply["entity_id"] == body["entity_id"], reply

    def close(self) -> None:
        self.connection.close()


def http_load(settings: Settings, ids: list[str]) -> Load:
    sender = HttpSender(settings, ids)
    return Load("http-load", sender, sender.close)


def restarted(settings: Settings, old_pids: dict[str, int]) -> dict[str, int] | None:
    """The new pids once every named program is RUNNING again under a new pid."""
    infos = process_info(settings)
    new = {name: infos[name]["pid"] for name in old_pids}
    running = all(infos[name]["statename"] == "RUNNING" for name in old_pids)
    moved = all(new[name] not in (0, old_pids[name]) for name in old_pids)
    return new if running and moved else None


def wait_progress(loads: list[Load], count: int) -> None:
    marks = [load.done for load in loads]
    wait_for(
        lambda: all(load.done >= mark + count for load, mark in zip(loads, marks, strict=True)),
        RESTART_TIMEOUT_S,
        f"{count} more requests of every load thread",
    )


def test_supervisord_runs_every_program_and_restarts_killed_ones_without_errors(
    settings: Settings,
) -> None:
    # Given the stack of supervisord.conf, every program RUNNING, health ok, requests flowing
    with supervised(settings) as stack:
        infos = process_info(settings)
        assert {name: i["statename"] for name, i in infos.items()} == {
            "broker": "RUNNING",
            "drift": "RUNNING",
            "gateway": "RUNNING",
            "listener": "RUNNING",  # idle on SQLite
            "worker-0": "RUNNING",
            "worker-1": "RUNNING",
        }
        ids = demo_ids(settings)
        loads = [zmq_load(settings, ids), http_load(settings, ids)]
        try:
            for load in loads:
                load.start()
            wait_progress(loads, 10)

            # When a worker and the drift process are SIGKILLed
            old = {name: infos[name]["pid"] for name in ("worker-0", "drift")}
            for pid in old.values():
                os.kill(pid, signal.SIGKILL)
            killed_at = [load.done for load in loads]

            # Then supervisord restarts both under new pids, health comes back ok ...
            new = wait_for(
                lambda: restarted(settings, old), RESTART_TIMEOUT_S, "worker-0 and drift back"
            )
            health = wait_for(
                lambda: (h := zmq_health(settings)) is not None and is_healthy(h, settings) and h,
                RESTART_TIMEOUT_S,
                "health ok with both workers and drift alive",
            )
            recovered_at = [load.done for load in loads]
            wait_progress(loads, REQUESTS_AFTER_RECOVERY)
        finally:
            for load in loads:
                load.stop()

        # ... and no request failed, before, during or after the outage
        failed = {load.name: load.failed for load in loads}
        assert failed == {"zmq-load": 0, "http-load": 0}, [e for ld in loads for e in ld.errors]
        assert all(after > before for after, before in zip(recovered_at, killed_at, strict=True)), (
            "no request was answered while the killed programs were down"
        )
        assert set(new) == {"worker-0", "drift"}
        assert health["workers"] == {"alive": 2, "expected": 2}
        status, body = http_get(settings, "/health")
        assert (status, body["status"], body["drift"]) == (200, "ok", "ok"), body
        with Client(settings.broker_frontend) as fs:
            assert fs.drift_report()["features_monitored"] > 0
        unchanged = process_info(settings)
        assert unchanged["broker"]["pid"] == infos["broker"]["pid"]
        assert unchanged["gateway"]["pid"] == infos["gateway"]["pid"]

        # When supervisord gets SIGTERM, then it exits cleanly and nothing is left behind
        pids = processes_using(settings.data_dir)
        assert len(pids) >= len(infos) + 1, pids  # supervisord, programs, Sanic's processes
        assert stack.stop() == 0, stack.log_tail()
    assert processes_using(settings.data_dir) == []

    # ... the cache segment outlives them (no process unlinks it on exit) until the operator
    # drops it with `featurestore cache drop`
    assert segment.exists(settings.cache_name)
    dropped = subprocess.run(
        [*featurestore_command(), "cache", "drop"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dropped.returncode == 0, dropped.stderr
    assert f"cache {settings.cache_name}: dropped" in dropped.stdout
    assert not segment.exists(settings.cache_name)
