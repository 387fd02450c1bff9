"""The code base stays `ruff` clean (configuration in pyproject.toml)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_check_is_clean() -> None:
    ruff = shutil.which("ruff")
    if ruff is None:  # installed with the test extras; run it as a module otherwise
        command = [sys.executable, "-m", "ruff"]
    else:
        command = [ruff]
    done = subprocess.run([*command, "check", "--no-cache", str(ROOT)], capture_output=True,
                          text=True, timeout=120)
    if "No module named ruff" in done.stderr:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    assert done.returncode == 0, done.stdout + done.stderr
