"""Files 0600 and directories 0700 whatever the umask (SPEC §11): `featurestore serve` started
with umask 000 creates DATA_DIR and everything under it (the event store and its -wal/-shm,
drift baselines, every log, supervisord's pid file and socket) private, and its shared-memory
segments too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
from pathlib import Path

from supervised_support import (
    RUNNING_TIMEOUT_S,
    STOP_TIMEOUT_S,
    featurestore_command,
    http_get,
    http_post,
    is_healthy,
    private_settings,
    service_env,
    zmq_health,
)

from featurestore.ops.launcher import wait_for
from featurestore.ops.metrics_dir import metrics_dir
from featurestore.ops.supervisor import socket_path
from featurestore.timestamps import now_ms
from shm.segment import segment_path

ENTITIES = 12


def modes_under(root: Path) -> dict[str, int]:
    """Every path under root (root too) -> its permission bits."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for directory, names, files in os.walk(root):
        for name in names + files:
            path = Path(directory, name)
            found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def assert_private(modes: dict[str, int], root: Path) -> None:
    for name, mode in modes.items():
        path = root / name
        if path.is_dir():
            assert mode == 0o700, (name, oct(mode))
        elif stat.S_ISSOCK(path.lstat().st_mode):
            assert mode & 0o077 == 0, (name, oct(mode))
        else:
            assert mode == 0o600, (name, oct(mode))


def test_serve_with_umask_000_keeps_everything_private(tmp_path: Path) -> None:
    with private_settings(tmp_path / "data", MAX_WORKERS="1") as settings:
        # Given no DATA_DIR yet and umask 000 (what it creates would be 0777 / 0666)
        data_dir = Path(settings.data_dir)
        data_dir.rmdir()
        stderr_path = tmp_path / "serve.stderr"
        with stderr_path.open("wb") as stderr:
            serve = subprocess.Popen(
                [*featurestore_command(), "serve"],
                env=service_env(settings),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
                umask=0o000,
            )
        try:
            # When it serves, stores events and persists a drift baseline
            wait_for(
                lambda: (
                    serve.poll() is None
                    and (health := zmq_health(settings)) is not None
                    and is_healthy(health, settings)
                    and http_get(settings, "/health")[0] == 200
                ),
                RUNNING_TIMEOUT_S,
                f"serve to be healthy: {stderr_path.read_text(errors='replace')}",
                0.1,
            )
            ids = [f"perm-{i}" for i in range(ENTITIES)]
            events = [
                {"entity_id": e, "timestamp": now_ms() - 60_000 * k, "value": float(k + i)}
                for i, e in enumerate(ids)
                for k in range(3)
            ]
            assert http_post(settings, "/events", {"events": events})[0] == 200
            status, body = http_post(
                settings, "/drift/baseline", {"action": "entity_ids", "entity_ids": ids}
            )
            assert status == 200, body
            wait_for(
                (data_dir / "drift" / "baselines.npz").exists,
                RUNNING_TIMEOUT_S,
                "the drift baseline file",
            )

            # Then every directory under DATA_DIR is 0700 and every file 0600, while running
            running = modes_under(data_dir)
            assert {"events.sqlite3", "events.sqlite3-wal", "events.sqlite3-shm"} <= set(running)
            assert {"logs/supervisord.log", "logs/worker-0.log", "drift/baselines.npz"} <= set(
                running
            )
            assert_private(running, data_dir)
            sock = Path(socket_path(settings))
            assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
            assert stat.S_IMODE(os.stat(segment_path(settings.cache_name)).st_mode) == 0o600
            metrics = modes_under(metrics_dir(settings.cache_name))  # the gateway's servers'
            assert len(metrics) > 1, metrics
            assert_private(metrics, metrics_dir(settings.cache_name))

            # and after a clean stop too
            serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=STOP_TIMEOUT_S) == 0, stderr_path.read_text()
            assert_private(modes_under(data_dir), data_dir)
        finally:
            if serve.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=STOP_TIMEOUT_S)
