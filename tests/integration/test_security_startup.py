"""Refusals at process start (SPEC §11): every role, and `featurestore serve`, stops with one
line naming the cause and EXIT_CONFIG (which supervisord does not retry) when it would bind a
non-loopback address without protection, or when a key or tokens file it needs is missing
or malformed. Real processes (`python -m <role>`), no stack: each stops before it binds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from featurestore.config import VARIABLES
from featurestore.exitcodes import EXIT_CONFIG
from featurestore.ops.launcher import free_port
from featurestore.security import curve

START_TIMEOUT_S = 60


@pytest.fixture
def base_env(tmp_path: Path) -> dict[str, str]:
    """A private environment: its own DATA_DIR, cache name and ports, nothing inherited."""
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(
        {
            "DATA_DIR": str(tmp_path / "data"),
            "CACHE_NAME": f"fst_{uuid.uuid4().hex[:12]}",
            "PORT": str(free_port()),
            "BROKER_FRONTEND": f"tcp://127.0.0.1:{free_port()}",
            "BROKER_BACKEND": f"tcp://127.0.0.1:{free_port()}",
            "DRIFT_FEATURES_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
            "DRIFT_PUB_ENDPOINT": f"tcp://127.0.0.1:{free_port()}",
        }
    )
    return env


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    curve.generate_keys(directory)
    return directory


def start(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def role(name: str) -> list[str]:
    extra = ["--id", "0"] if name == "workers" else []
    return [sys.executable, "-m", name, *extra]


def assert_config_exit(done: subprocess.CompletedProcess, *named: str) -> None:
    assert done.returncode == EXIT_CONFIG, done.stderr
    assert "configuration error" in done.stderr
    assert "Traceback" not in done.stderr
    for text in named:
        assert text in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("name", "variable", "value"),
    [
        ("broker", "BROKER_FRONTEND", "tcp://0.0.0.0:{port}"),
        ("broker", "BROKER_BACKEND", "tcp://*:{port}"),
        ("drift", "DRIFT_FEATURES_ENDPOINT", "tcp://0.0.0.0:{port}"),
        ("drift", "DRIFT_PUB_ENDPOINT", "tcp://*:{port}"),
        ("gateway", "HOST", "0.0.0.0"),
    ],
)
def test_a_role_refuses_an_exposed_bind_without_protection(
    base_env: dict[str, str], name: str, variable: str, value: str
) -> None:
    base_env[variable] = value.format(port=free_port())
    done = start(role(name), base_env)
    assert_config_exit(done, variable, "ALLOW_INSECURE_BIND")
    assert not Path(base_env["DATA_DIR"]).exists()  # stopped before touching anything


@pytest.mark.parametrize(
    ("name", "broken", "how"),
    [
        ("broker", "server.key_secret", "missing"),
        ("broker", "clients/client.key", "malformed"),
        ("drift", "server.key_secret", "malformed"),
        ("drift", "internal.key_secret", "missing"),
        ("workers", "internal.key_secret", "malformed"),
        ("workers", "server.key", "missing"),
        ("gateway", "internal.key_secret", "missing"),
    ],
)
def test_a_bad_key_file_stops_a_role_naming_it(
    base_env: dict[str, str], keys: Path, name: str, broken: str, how: str
) -> None:
    path = keys / broken
    if how == "missing":
        path.unlink()
    else:
        path.write_text('curve\n    public-key = "not-z85"\n')
    base_env["ZMQ_CURVE_KEYS_DIR"] = str(keys)
    done = start(role(name), base_env)
    assert_config_exit(done, "ZMQ_CURVE_KEYS_DIR", str(path))


def test_a_malformed_tokens_file_stops_the_gateway_naming_it(
    base_env: dict[str, str], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[[token]]\nname = "ops"\nscope = "admin"\nsha256 = "' + "0" * 64 + '"\n')
    base_env["API_TOKENS_FILE"] = str(tokens)
    done = start(role("gateway"), base_env)
    assert_config_exit(done, "API_TOKENS_FILE", str(tokens), "scope")


def test_serve_stops_on_a_bad_key_file_before_starting_anything(
    base_env: dict[str, str], keys: Path
) -> None:
    (keys / "internal.key").unlink()
    base_env["ZMQ_CURVE_KEYS_DIR"] = str(keys)
    featurestore = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")
    done = start([featurestore, "serve"], base_env)
    assert_config_exit(done, str(keys / "internal.key"))
    assert not (Path(base_env["DATA_DIR"]) / "logs" / "supervisord.log").exists()
