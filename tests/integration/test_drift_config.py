"""The drift process's own check of its settings: a threshold for a statistic it does not have
(DRIFT_STATISTIC_THRESHOLDS) stops it at start with one line naming the variable and the
statistics there are, and EXIT_CONFIG. A real process (`python -m drift`), no stack."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from featurestore.config import VARIABLES
from featurestore.exitcodes import EXIT_CONFIG
from featurestore.ops.launcher import free_port

START_TIMEOUT_S = 60


def test_an_unknown_statistic_threshold_stops_the_drift_process(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "BROKER_BACKEND": f"tcp://127.0.0.1:{free_port()}",
            "DRIFT_FEATURES_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "DRIFT_PUB_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "DRIFT_STATISTIC_THRESHOLDS": "ks=0.2,chi2=0.05",
        }
    )
    done = subprocess.run(
        [sys.executable, "-m", "drift"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "featurestore-drift: configuration error: DRIFT_STATISTIC_THRESHOLDS: no drift "
        "statistic 'chi2': expected one of ks, psi_categorical, psi_numeric"
    )
    assert "Traceback" not in done.stderr
