"""The README's "Declaring features" example works as written (SPEC §14).

Its first block (declare, check, ingest, try) is run by bash in a private directory with no
service setting; its `featurestore serve` is replaced by the test launcher's stack on the
same `FEATURES_FILE` and `DATA_DIR`, and its curl commands are run against that stack (only
the address is rewritten). The values the README states are checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from http_support import gateway_stack
from test_readme_examples import (
    CURL_STATUS,
    README_ADDRESS,
    clean_env,
    code_blocks,
    curl_commands,
    section,
)

from featurestore.ops.launcher import Stack

COMMAND_TIMEOUT_S = 120
STATED_VECTOR = {
    "food_count_7d": 3,
    "food_share_7d": 0.75,
    "amount_p90_30d": 31.25,
    "last_merchant": 1,
}


def blocks() -> list[str]:
    return code_blocks(section("Declaring features"), "bash")


@pytest.fixture(scope="module")
def worked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(directory, output) of the first block, run as written by bash."""
    directory = tmp_path_factory.mktemp("declaring")
    env = clean_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    done = subprocess.run(
        ["bash", "-e", "-c", blocks()[0]],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return directory, done.stdout


@pytest.fixture(scope="module")
def served(worked: tuple[Path, str]) -> Iterator[Stack]:
    directory, _ = worked
    (serve,) = [line for line in blocks()[1].splitlines() if line.strip()]
    assert serve == "featurestore serve"  # what the stack below stands for
    env = {"FEATURES_FILE": str(directory / "payments.toml")}
    with gateway_stack(directory / "payments-data", env=env) as stack:
        yield stack


def test_check_and_features_print_what_the_readme_says(worked: tuple[Path, str]) -> None:
    _, output = worked
    text = section("Declaring features")
    stated = re.search(r"`check` prints `(.*?)`", text, flags=re.DOTALL).group(1)
    assert " ".join(stated.split()) in output
    vector = json.loads(output[output.index("{") :])
    assert vector["version"] == "pay1"
    assert vector["features"] == STATED_VECTOR
    for name, value in STATED_VECTOR.items():
        assert f'"{name}": {value}' in " ".join(text.split())


def test_served_version_takes_events_with_declared_fields(served: Stack) -> None:
    commands = curl_commands(blocks()[2])
    assert len(commands) == 3
    answers = []
    for command in commands:
        local = command.replace(README_ADDRESS, f"localhost:{served.settings.port}")
        done = subprocess.run(
            ["bash", "-c", CURL_STATUS + local],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr.strip()[-3:].startswith("2"), (command, done.stderr, done.stdout)
        answers.append(json.loads(done.stdout))
    ingested, features, definitions = answers
    assert ingested == {"accepted": 1, "duplicates": 0}
    assert features["version"] == "pay1"
    assert features["features"]["food_count_7d"] == 4  # as the README's comment says
    assert features["features"]["food_share_7d"] == 0.8
    assert definitions["versions"] == ["pay1"]
    assert [f["name"] for f in definitions["features"]["pay1"]] == list(STATED_VECTOR)
    assert len(definitions["hashes"]["pay1"]) == 64


def test_shipped_prints_the_shipped_file_and_a_closed_pipe_is_quiet() -> None:
    from featurestore.definitions import SHIPPED_FILE

    command = [sys.executable, "-m", "featurestore", "definitions"]
    shipped = subprocess.run(
        [*command, "shipped"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=clean_env(),
        check=False,
    )
    assert shipped.returncode == 0, shipped.stderr
    assert shipped.stdout == SHIPPED_FILE.read_text(encoding="utf-8")
    # When the reader of `check` has left before it writes (`| true` exits at once)
    done = subprocess.run(
        ["bash", "-c", f"{' '.join(command)} check | true; echo ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=clean_env(),
        check=False,
    )
    # Then it stops quietly: no traceback, exit code 1
    assert done.stderr == ""
    assert done.stdout.strip() == "1"
