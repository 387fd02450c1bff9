"""`featurestore serve --demo`, the one-command launcher (SPEC §2, §9), run as a real
subprocess: from an empty DATA_DIR it fills the demo store, serves `/features`, and on SIGTERM
stops every process it started and unlinks the cache segment.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from supervised_support import (
    demo_ids,
    featurestore_command,
    http_post,
    kill_leftovers,
    private_settings,
    processes_using,
    service_env,
)

from featurestore.config import Settings
from featurestore.features.registry import feature_set
from featurestore.ops.metrics_dir import metrics_dir
from shm import segment

READY_TIMEOUT_S = 90.0  # 10,000 demo entities (~2 million events), then five programs
STOP_TIMEOUT_S = 60.0
SERVING = "featurestore is serving on"


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with private_settings(tmp_path / "data") as private:
        yield private


def read_lines(stream: IO[str], lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_serving(
    process: subprocess.Popen, lines: queue.Queue, stderr_path: Path, timeout_s: float
) -> list[str]:
    """The stdout lines up to and including the "serving" line; AssertionError (with the
    command's stderr) if the command ends or the deadline passes first."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no serving line in {timeout_s} s: {seen} {tail(stderr_path)}"
        try:
            line = lines.get(timeout=remaining)  # deadline-poll
        except queue.Empty:
            continue
        assert line is not None, f"serve ended ({process.poll()}): {seen} {tail(stderr_path)}"
        seen.append(line)
        if SERVING in line:
            return seen


@contextlib.contextmanager
def serving_process(settings: Settings, stderr_path: Path) -> Iterator[subprocess.Popen]:
    """`featurestore serve --demo` in its own session; killed with all it started at the end
    if the test did not stop it."""
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*featurestore_command(), "serve", "--demo"],
            env=service_env(settings),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        kill_leftovers(settings.data_dir)
        process.stdout.close()


def test_serve_demo_answers_features_and_sigterm_leaves_nothing_behind(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a clean DATA_DIR
    assert list(Path(settings.data_dir).iterdir()) == []
    stderr_path = tmp_path / "serve.stderr"
    with serving_process(settings, stderr_path) as serve:
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=read_lines, args=(serve.stdout, lines), daemon=True)
        reader.start()

        # When `featurestore serve --demo` says it is serving
        wait_serving(serve, lines, stderr_path, READY_TIMEOUT_S)

        # Then /features answers for a demo entity, from the cache segment of its CACHE_NAME
        ids = demo_ids(settings)
        assert len(ids) == 10_000
        status, body = http_post(settings, "/features", {"entity_id": ids[0]})
        assert status == 200, body
        assert body["entity_id"] == ids[0]
        assert list(body["features"]) == feature_set("v1").names
        assert body["features"]["value_mean"] is not None
        assert segment.exists(settings.cache_name)
        assert metrics_dir(settings.cache_name).is_dir()
        started = processes_using(settings.data_dir)
        assert len(started) >= 6, started  # supervisord, broker, drift, 2 workers, gateway

        # When it gets SIGTERM
        serve.send_signal(signal.SIGTERM)

        # Then it exits 0 in time, leaving no process, no cache segment, no metrics directory
        code = serve.wait(timeout=STOP_TIMEOUT_S)
        errors = stderr_path.read_text(errors="replace")
        assert code == 0, errors
        assert processes_using(settings.data_dir) == []
        assert not segment.exists(settings.cache_name)
        assert not metrics_dir(settings.cache_name).exists()
        assert "featurestore stopped" in errors
        reader.join(timeout=10)
