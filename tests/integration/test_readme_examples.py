"""The README's examples work as written, on the day they are run (SPEC §9, §13 leftovers).

Every curl command of the README's "HTTP API" block is run by bash against a real stack with
the gateway and drift, on a `featurestore demo` store that ends now floored to the hour, as
`featurestore serve --demo` makes it; each must answer 2xx with a JSON body (`/metrics`:
Prometheus text). The ZeroMQ client example must print a feature value. Only the address is
rewritten (`localhost:3000`, the client's endpoint); the commands are the README's text.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from http_support import gateway_stack

from featurestore.cli.serve import DEMO_ENTITIES, DEMO_SEED
from featurestore.config import VARIABLES
from featurestore.offline.demo import DAY_MS, ENTITY_LIST, default_end_ms, demo_chunks
from featurestore.ops.launcher import Stack
from featurestore.timestamps import now_ms

README = Path(__file__).resolve().parents[2] / "README.md"
README_ADDRESS = "localhost:3000"
README_ENDPOINT = "tcp://127.0.0.1:5555"
SMALL_DEMO_ENTITIES = 100  # enough for every id the examples name (checked below)
OLDEST_EXAMPLE_DAYS = 30  # the examples' times go back at most this far from now
COMMAND_TIMEOUT_S = 60
# The README's curl, with the status code written to stderr (stdout keeps the body as shown).
CURL_STATUS = 'curl() { command curl --write-out "%{stderr}%{http_code}" "$@"; }\n'
ENTITY_ID = re.compile(r"\buser_\d{5}\b")


# ---------------------------------------------------------------------- README extraction
def section(heading: str) -> str:
    """The README text under `## heading`, up to the next `## ` heading."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def curl_commands(block: str) -> list[str]:
    """Each command: a line that starts with `curl`, with the indented lines that follow it
    (continuations, or the rest of a multi-line JSON body)."""
    commands: list[list[str]] = []
    current: list[str] | None = None
    for line in block.splitlines():
        if line.startswith("curl "):
            current = [line]
            commands.append(current)
        elif current is not None and line.startswith(" "):
            current.append(line)
        else:
            current = None
    return ["\n".join(lines) for lines in commands]


def http_examples() -> list[str]:
    (block,) = code_blocks(section("HTTP API"), "bash")
    return curl_commands(block)


def client_example() -> str:
    return code_blocks(section("ZeroMQ client"), "python")[0]


def clean_env() -> dict[str, str]:
    """This environment without any of the service's settings."""
    return {k: v for k, v in os.environ.items() if k not in VARIABLES}


# --------------------------------------------------------------------------------- stack
@pytest.fixture(scope="module")
def demo_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("readme")
    demo = [sys.executable, "-m", "featurestore", "demo", "--data-dir", str(data_dir)]
    options = ["--entities", str(SMALL_DEMO_ENTITIES), "--seed", str(DEMO_SEED)]  # no --end
    done = subprocess.run(
        [*demo, *options],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with gateway_stack(data_dir, drift=True) as stack:
        yield stack


def run_example(command: str, stack: Stack) -> tuple[int, str]:
    """(HTTP status, body) of one README curl command run by bash against `stack`."""
    local = command.replace(README_ADDRESS, f"localhost:{stack.settings.port}")
    done = subprocess.run(
        ["bash", "-c", CURL_STATUS + local],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, (command, done.returncode, done.stderr)
    return int(done.stderr.strip()[-3:]), done.stdout


# --------------------------------------------------------------------------------- tests
def test_the_examples_name_entities_with_demo_events(demo_stack: Stack) -> None:
    # Given the entity ids the examples name (all but the one the DELETE example removes)
    named = set(ENTITY_ID.findall("\n".join([*http_examples(), client_example()])))
    assert {"user_00042", "user_00001"} <= named
    # Then the small demo of this module has events for each
    with (demo_stack.data_dir / ENTITY_LIST).open(newline="") as listing:
        counts = {row["entity_id"]: int(row["n_events"]) for row in csv.DictReader(listing)}
    assert {i: counts.get(i, 0) > 0 for i in named} == dict.fromkeys(named, True)
    # and so has the demo of `featurestore serve --demo`, from before the examples' times
    # (its first 500 entities: every id named is among them)
    end = default_end_ms(now_ms())
    first = next(demo_chunks(DEMO_ENTITIES, DEMO_SEED, end))
    oldest = first.groupby("entity_id")["timestamp"].min()
    assert all(oldest[i] < end - OLDEST_EXAMPLE_DAYS * DAY_MS for i in named), oldest[list(named)]


def run_examples(commands: list[str], stack: Stack) -> tuple[list[tuple], dict[str, object]]:
    """(failures, body by command): a failure is not 2xx, or not JSON (`/metrics`: text)."""
    failures, bodies = [], {}
    for command in commands:
        status, text = run_example(command, stack)
        try:
            body = text if "/metrics" in command else json.loads(text)
        except json.JSONDecodeError:
            body = None
        if not 200 <= status < 300 or body is None:
            failures.append((command, status, text[:300]))
        bodies[command] = body
    return failures, bodies


def test_every_http_example_answers_2xx_with_json(demo_stack: Stack) -> None:
    # Given the README's curl commands, in the README's order
    commands = http_examples()
    assert len(commands) >= 15
    assert any('"as_of"' in c for c in commands)
    # When each is run as written (but for the port)
    day = datetime.now(UTC).date()
    failures, bodies = run_examples(commands, demo_stack)
    # Then every one answered 2xx with a JSON body
    assert failures == []
    # and the examples with times are inside the demo's data
    for command, body in bodies.items():
        if "/features/historical" in command:
            assert [row["status"] for row in body["rows"]] == ["ok"] * len(body["rows"])
        if "/metrics" in command:
            assert "# TYPE" in body
    # When the block is run again (the same day)
    again_failures, again = run_examples(commands, demo_stack)
    # Then it works again, and the ingest is a retry: the same answer, nothing stored twice
    assert again_failures == []
    (ingest,) = [c for c in commands if "/events" in c]
    assert bodies[ingest] == {"accepted": 1, "duplicates": 0}
    if datetime.now(UTC).date() == day:  # past midnight UTC it is the next day's new load
        assert again[ingest] == bodies[ingest]


def test_zeromq_client_example_prints_a_feature(demo_stack: Stack) -> None:
    code = client_example()
    assert README_ENDPOINT in code
    # When run as written (but for the endpoint), in a process with no server setting
    done = subprocess.run(
        [sys.executable, "-c", code.replace(README_ENDPOINT, demo_stack.frontend)],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        env=clean_env(),
        check=False,
    )
    # Then it prints user_00042's value_mean
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 0
