"""The README's "Training sets on a cluster" example works as written: its first bash block
runs as it stands in a new directory (a demo store, rows, LocalClusters of 2 workers, an
export), and the Dask outputs are the single-process output. The second block (a scheduler
on port 8786) is not run here: a fixed port on a shared machine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from featurestore.config import VARIABLES

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT_S = 300


def first_block() -> str:
    text = README.read_text()
    section = text[text.index("## Training sets on a cluster") :]
    return re.findall(r"```bash\n(.*?)```", section, re.S)[0]


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
