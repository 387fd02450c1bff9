"""Faults a trusted server survives (SPEC §11; issue 10, failures 1, 2, 7, 10), on a real
`featurestore serve`: a dead HTTP server process is replaced; a killed gateway main process
leaves no server behind (the port is free for its successor); a truncated cache segment is
survived; `featurestore cache drop` on a running stack leaves no stale hit; a second stack on
the same DATA_DIR is refused naming the first; a killed `serve` or supervisord leaves no
process running; a new `serve` stops the orphans a killed predecessor recorded.

The module shares one `featurestore serve` on a 200-entity demo store; the tests run in file
order (one xdist worker per module) and each leaves the stack serving, except the last,
which kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from supervised_support import (
    Served,
    demo_ids,
    featurestore_command,
    http_get,
    http_post,
    private_settings,
    processes_using,
    service_env,
    write_demo_store,
)

from featurestore.config import Settings
from featurestore.exitcodes import EXIT_UNAVAILABLE
from featurestore.ops.launcher import wait_for
from featurestore.ops.stacklock import StackRecord, lock_path
from featurestore.timestamps import now_ms
from shm import segment
from shm.procfs import process_start_ticks

RECOVERY_TIMEOUT_S = 60.0
GATEWAY_WORKERS = 2


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    with private_settings(
        tmp_path_factory.mktemp("life") / "data", GATEWAY_WORKERS=str(GATEWAY_WORKERS)
    ) as private:
        write_demo_store(private)
        yield private


@pytest.fixture(scope="module")
def served(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    serve = Served(settings, tmp_path_factory.mktemp("serve-logs"))
    try:
        yield serve.wait_serving()
    finally:
        serve.close()


def gateway_servers(served: Served) -> list[int]:
    """Pids of the gateway's HTTP server processes (its main process's children)."""
    return sorted(p.pid for p in psutil.Process(served.pids()["gateway"]).children())


def serving_fully(settings: Settings) -> bool:
    status, body = http_get(settings, "/health")
    return (
        status == 200
        and body["status"] == "ok"
        and body["gateway"] == {"alive": GATEWAY_WORKERS, "expected": GATEWAY_WORKERS}
    )


def features_of(settings: Settings, entity_id: str) -> dict:
    status, body = http_post(settings, "/features", {"entity_id": entity_id})
    assert status == 200, body
    return body


# --------------------------------------------------------------------- gateway servers
def test_a_dead_http_server_is_replaced_and_health_counts_them(
    served: Served, settings: Settings
) -> None:
    # Given a serving gateway with its two HTTP servers
    wait_for(lambda: serving_fully(settings), RECOVERY_TIMEOUT_S, "the stack to be ok")
    first = gateway_servers(served)
    assert len(first) == GATEWAY_WORKERS
    # When one server is SIGKILLed, then the other
    for victim in first:
        os.kill(victim, signal.SIGKILL)
        # Then each is replaced by a new process, and the API answers again
        wait_for(
            lambda v=victim: (
                v not in gateway_servers(served)
                and len(gateway_servers(served)) == GATEWAY_WORKERS
                and serving_fully(settings)
            ),
            RECOVERY_TIMEOUT_S,
            "the dead HTTP server to be replaced",
        )
    assert set(gateway_servers(served)).isdisjoint(first)
    assert features_of(settings, demo_ids(settings)[0])["entity_id"] == demo_ids(settings)[0]


def test_a_killed_gateway_leaves_no_server_holding_the_port(
    served: Served, settings: Settings
) -> None:
    old_main = served.pids()["gateway"]
    old_servers = gateway_servers(served)
    os.kill(old_main, signal.SIGKILL)
    # Its servers die with it (parent-death signal) and supervisord's restart binds the port
    wait_for(
        lambda: all(process_start_ticks(p) is None for p in old_servers),
        RECOVERY_TIMEOUT_S,
        "the killed gateway's servers to exit",
    )
    wait_for(
        lambda: served.pids().get("gateway") not in (None, old_main) and serving_fully(settings),
        RECOVERY_TIMEOUT_S,
        "a new gateway to serve",
    )
    assert "Address already in use" not in served.output()


def test_a_truncated_cache_segment_is_survived(served: Served, settings: Settings) -> None:
    ids = demo_ids(settings)[:20]
    for entity_id in ids:
        features_of(settings, entity_id)
    path = segment.segment_path(settings.cache_name)
    full = os.path.getsize(path)
    os.truncate(path, full // 2)  # damaged behind everybody's back

    # The broker's periodic check (or any process that touches the missing pages and dies of
    # SIGBUS, then is restarted or replaced) retires the damaged segment; every process moves
    # to its replacement, and the stack serves again by itself.
    def recovered() -> bool:
        try:
            status, _ = http_post(settings, "/features", {"entity_id": ids[0]})
        except OSError:
            return False  # a server is being replaced
        return status == 200 and serving_fully(settings) and os.path.getsize(path) == full

    wait_for(recovered, RECOVERY_TIMEOUT_S, "the stack to serve after the truncation")
    for entity_id in ids:
        assert features_of(settings, entity_id)["entity_id"] == entity_id


# ------------------------------------------------------------------------- cache drop
def test_cache_drop_on_a_running_stack_leaves_no_stale_hit(
    served: Served, settings: Settings
) -> None:
    entity_id = demo_ids(settings)[1]
    features_of(settings, entity_id)
    assert features_of(settings, entity_id)["cached"] is True  # a hit, in gateway and broker
    # When the segment is dropped under the running stack
    subprocess.run(
        [*featurestore_command(), "cache", "drop"],
        env=service_env(settings),
        check=True,
        capture_output=True,
        timeout=60,
    )
    # and an event is acknowledged afterwards
    event = {"entity_id": entity_id, "timestamp": now_ms() - 1000, "value": 987_654.5}
    status, body = http_post(settings, "/events", {"events": [event]})
    assert status == 200 and body == {"accepted": 1, "duplicates": 0}
    # Then every later request reflects it: no process answers from the dropped segment
    for _ in range(10):
        assert features_of(settings, entity_id)["features"]["value_max"] == 987_654.5
    assert segment.exists(settings.cache_name)


# ---------------------------------------------------------------------- one DATA_DIR
def test_a_second_stack_on_the_same_data_dir_is_refused(
    served: Served, settings: Settings, tmp_path: Path
) -> None:
    from featurestore.ops.launcher import free_port

    other = Settings.from_env(
        {**settings.as_env(), "PORT": str(free_port()), "BROKER_FRONTEND": "tcp://127.0.0.1:1"}
    )
    second = Served(other, tmp_path)
    try:
        code = second.wait_exit(RECOVERY_TIMEOUT_S)
    finally:
        second.close(leftovers=False)
    assert code == EXIT_UNAVAILABLE, second.output()
    assert f"is in use by featurestore serve (pid {served.process.pid})" in second.output()
    # and the first stack is untouched: its cache, its processes, its answers
    assert segment.exists(settings.cache_name)
    assert serving_fully(settings)


# ----------------------------------------------------------------------------- orphans
def test_serve_stops_what_a_killed_predecessor_left_and_dies_with_supervisord(
    tmp_path: Path,
) -> None:
    with private_settings(tmp_path / "data") as settings:
        write_demo_store(settings)
        # Given a process of a killed stack, recorded in the DATA_DIR's lock file
        orphan = subprocess.Popen(
            [sys.executable, "-c", "import signal; signal.pause()"],
            env=service_env(settings),
            start_new_session=True,
        )
        try:
            recorded = {"worker-0": [orphan.pid, process_start_ticks(orphan.pid)]}
            record = StackRecord(999_999_999, 1, "featurestore serve", recorded)
            lock_path(settings.data_dir).write_bytes(record.encode())
            # When a new serve starts on that DATA_DIR
            served = Served(settings, tmp_path)
            try:
                served.wait_serving()
                # Then it stopped the orphan first, and serves
                assert orphan.wait(timeout=10) is not None
                assert f"worker-0 (pid {orphan.pid})" in served.output()
                # When supervisord is SIGKILLed, every role exits with it (parent-death
                # signal), and serve reports it
                roles = [p for name, p in served.pids().items() if name != "supervisord"]
                os.kill(served.pids()["supervisord"], signal.SIGKILL)
                wait_for(
                    lambda: all(process_start_ticks(p) is None for p in roles),
                    RECOVERY_TIMEOUT_S,
                    "every role to exit with supervisord",
                )
                assert served.wait_exit() != 0
                assert "supervisord exited" in served.output()
            finally:
                served.close()
        finally:
            if orphan.poll() is None:
                orphan.kill()
                orphan.wait(timeout=10)


def test_a_killed_serve_leaves_no_process_running(served: Served, settings: Settings) -> None:
    assert len(processes_using(settings.data_dir)) >= 6
    os.kill(served.process.pid, signal.SIGKILL)
    # supervisord dies with serve, and every program with supervisord
    wait_for(
        lambda: processes_using(settings.data_dir) == [],
        RECOVERY_TIMEOUT_S,
        "every process of the killed serve to exit",
    )
