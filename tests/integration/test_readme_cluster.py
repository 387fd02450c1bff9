"""The README's "Training sets on a cluster" example works as written: its first bash block
runs as it stands in a new directory (a demo store, rows, LocalClusters of 2 workers, an
export), and the Dask outputs are the single-process output. The second block (a scheduler
and workers of one's own, with the workers' malloc settings) runs after it with its port
8786 replaced by a free one; its background processes are stopped as a process group."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cloudpickle
import dask_support
import pandas as pd
from distributed import Client

from featurestore.config import VARIABLES
from featurestore.offline.cluster import (
    WORKER_MALLOC_MMAP_THRESHOLD_BYTES,
    WORKER_MALLOC_TRIM_THRESHOLD_BYTES,
)
from featurestore.ops.launcher import wait_for

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT_S = 300
README_PORT = "8786"
CONNECT_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.05

cloudpickle.register_pickle_by_value(dask_support)  # the workers need not import it


def blocks() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Training sets on a cluster") :]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def first_block() -> str:
    return blocks()[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_group(leader: subprocess.Popen) -> None:
    """SIGTERM the process group of `leader` (the block's background scheduler and workers),
    then SIGKILL what is left at the deadline."""

    def gone() -> bool:
        try:
            os.killpg(leader.pid, 0)
        except ProcessLookupError:
            return True
        return False

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, sig)
        except ProcessLookupError:
            return
        try:
            wait_for(gone, STOP_TIMEOUT_S, f"the example's processes to end ({sig.name})", POLL_S)
            return
        except TimeoutError:
            continue


def test_the_cluster_example_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", first_block()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    one = subprocess.run(
        ["featurestore", "generate", "rows.parquet", "--output", "one.parquet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert "100000 rows" in one.stdout
    expected = pd.read_parquet(tmp_path / "one.parquet")
    for output in ("training", "training-2"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / output), expected)
    from_glob = pd.read_parquet(tmp_path / "training.parquet")
    assert len(from_glob) == len(expected)


def test_the_own_scheduler_example_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    prepare = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", first_block().split("# a local cluster")[0]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert "Traceback" not in prepare.stderr
    port = str(free_port())
    block = blocks()[1]
    assert block.count(README_PORT) == 3
    # files, not pipes: the background processes keep their ends of a pipe open
    out_path, err_path = tmp_path / "block.out", tmp_path / "block.err"
    with out_path.open("w") as out, err_path.open("w") as err:
        leader = subprocess.Popen(
            ["bash", "-euo", "pipefail", "-c", block.replace(README_PORT, port)],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
            text=True,
            start_new_session=True,  # the background scheduler and workers: one group to stop
        )
    try:
        assert leader.wait(timeout=TIMEOUT_S) == 0, err_path.read_text()
        assert "100000 rows" in out_path.read_text()
        with Client(f"tcp://127.0.0.1:{port}", timeout=CONNECT_TIMEOUT_S) as client:
            environments = list(client.run(dask_support.malloc_environment).values())
    finally:
        stop_group(leader)
    wanted = {
        "MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC_MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(WORKER_MALLOC_TRIM_THRESHOLD_BYTES),
    }
    assert environments == [wanted, wanted]
    one = subprocess.run(
        ["featurestore", "generate", "rows.parquet", "--output", "one.parquet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    assert "100000 rows" in one.stdout
    expected = pd.read_parquet(tmp_path / "one.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "training"), expected)
