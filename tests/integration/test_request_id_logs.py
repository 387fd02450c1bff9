"""X-Request-Id travels from HTTP into the ZeroMQ request and appears in the log lines of
every process that handles the request (SPEC §5), at LOG_LEVEL=DEBUG."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from featurestore.ops.launcher import Stack, wait_for

REQUEST_ID = "trace-me-4242"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    data = tmp_path_factory.mktemp("rid") / "store"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "featurestore",
            "demo",
            "--data-dir",
            str(data),
            "--entities",
            "20",
            "--seed",
            "5",
            "--end",
            "2026-01-01T00:00:00Z",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Stack(
        data, workers=1, gateway=True, env={"LOG_LEVEL": "DEBUG", "GATEWAY_WORKERS": "1"}
    ) as running:
        yield running


def lines_with(path: Path, text: str) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if text in line]


def test_a_request_id_appears_in_gateway_broker_and_worker_logs(stack: Stack) -> None:
    # Given a cold request carrying an X-Request-Id
    request = urllib.request.Request(
        f"{stack.http_url}/features",
        data=b'{"entity_id": "user_00001"}',
        headers={"X-Request-Id": REQUEST_ID, "Content-Type": "application/json"},
    )
    # When it is served
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["X-Request-Id"] == REQUEST_ID
    # Then each process that handled it logged the id
    logs = stack.data_dir / "logs"
    for name in ("gateway", "broker", "worker-0"):
        wait_for(
            lambda name=name: lines_with(logs / f"{name}.log", f"rid={REQUEST_ID}"),
            10,
            f"rid={REQUEST_ID} in {name}.log",
        )
