"""Settings (SPEC §8): every variable's default, every kind of invalid value, the relation
checks, the derived cache name, `.env.example`, and the CLI's exit on a bad variable."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from featurestore import config
from featurestore.config import (
    DEFAULT_DATA_DIR,
    VARIABLES,
    ConfigError,
    Settings,
    default_cache_name,
)
from featurestore.exitcodes import EXIT_CONFIG

REPO_ROOT = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60


def _kind(var: config._Var) -> str:
    return var.parse.__name__.removeprefix("_parse_")


def _invalid_values(name: str, var: config._Var) -> list[str]:
    """Every kind of bad value the variable's parser and limits must refuse."""
    kind = _kind(var)
    bad: list[str] = []
    if kind == "int":
        bad += ["abc", "1.5", "1e3", "0x10", "--5", " "]
    elif kind == "float":
        bad += ["abc", "nan", "NaN", "inf", "-inf"]
    elif kind == "bool":
        bad += ["maybe", "2", "tru", "yes please"]
    elif kind == "endpoint":
        bad += [
            "localhost:5555",
            "http://127.0.0.1:80",
            "tcp://",
            "tcp://127.0.0.1:1,udp://x:1",
            "ipc:///tmp/" + "x" * 100,
        ]
    elif kind == "thresholds":
        bad += [
            "ks",
            "ks=",
            "=0.1",
            "KS=0.1",
            "k s=0.1",
            "ks=abc",
            "ks=nan",
            "ks=inf",
            "ks=-0.5",
            "ks=2e6",
            "ks=0.1,ks=0.2",
            "ks=0.1,,psi_numeric=0.2",
            "ks=0.1;psi_numeric=0.2",
        ]
    if var.minimum is not None:
        below = var.minimum - 1 if kind == "int" else var.minimum - 0.5
        bad.append(str(int(below)) if kind == "int" else repr(below))
    if var.maximum is not None:
        above = var.maximum + 1 if kind == "int" else var.maximum * 2
        bad.append(str(int(above)) if kind == "int" else repr(above))
    if var.choices is not None:
        bad += ["bogus", var.choices[0].lower() + "x", var.choices[0] + " x"]
    return bad + INVALID_BY_NAME.get(name, [])


INVALID_BY_NAME = {
    "CACHE_NAME": ["a/b", "x" * 201, "naïve", "tab\there"],
    "FEATURE_VERSION": ["bogus", "V1", "v1 x"],  # not a version of the (shipped) file
    "FEATURES_FILE": ["/nonexistent/features.toml"],  # no such file
    "STORE_URL": [
        "sqlite:///tmp/x.db",
        "mysql://u:p@h/db",
        "postgresql://u:secret@host",
        "postgresql://u:secret@host/",
        "postgresql://u:secret@host:99999/db",
        "postgresql://u:secret@host:0/db",
        "postgresql://u:secret@host/db/more",
        "127.0.0.1:5432/db",
    ],
}


INVALID_CASES = [
    pytest.param(name, raw, id=f"{name}={raw[:20]!r}")
    for name, var in VARIABLES.items()
    for raw in _invalid_values(name, var)
]


def _default_text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------------------- defaults
@pytest.mark.parametrize("name", list(VARIABLES))
def test_every_variable_has_its_default_when_unset(name: str) -> None:
    settings = Settings.from_env({})
    value = getattr(settings, name.lower())
    if name == "DATA_DIR":
        assert value == str(Path(DEFAULT_DATA_DIR).resolve())
    elif name == "CACHE_NAME":
        assert value == default_cache_name(settings.data_dir)
    else:
        assert value == VARIABLES[name].default
        assert type(value) is type(VARIABLES[name].default)


def test_an_empty_value_means_the_default() -> None:
    empty = Settings.from_env({name: "" for name in VARIABLES})
    assert empty == Settings.from_env({})


def test_settings_fields_are_exactly_the_variables() -> None:
    assert [f.name for f in fields(Settings)] == [n.lower() for n in VARIABLES]


def test_defaults_pass_their_own_checks() -> None:
    for name, var in VARIABLES.items():
        if var.minimum is not None:
            assert var.default >= var.minimum, name
        if var.maximum is not None:
            assert var.default <= var.maximum, name
        if var.choices is not None:
            assert var.default in var.choices, name


# ------------------------------------------------------------------------------ valid input
@pytest.mark.parametrize(
    ("raw", "expected"),
    [("8080", 8080), (" 8080 ", 8080), ("8_080", 8080), ("1", 1), ("65535", 65535)],
)
def test_integers_are_parsed(raw: str, expected: int) -> None:
    assert Settings.from_env({"PORT": raw}).port == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        (" True ", True),
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
    ],
)
def test_booleans_are_parsed(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"ENABLE_VERSIONING": raw, "ENABLE_DRIFT_MONITORING": raw})
    assert settings.enable_versioning is expected
    assert settings.enable_drift_monitoring is expected


def test_floats_and_bounds_are_inclusive() -> None:
    assert Settings.from_env({"DRIFT_THRESHOLD": "0"}).drift_threshold == 0.0
    assert Settings.from_env({"DRIFT_THRESHOLD": "1e6"}).drift_threshold == 1e6
    assert Settings.from_env({"DRIFT_THRESHOLD": " 0.25 "}).drift_threshold == 0.25
    assert Settings.from_env({"MAX_REDISPATCH": "0"}).max_redispatch == 0
    assert Settings.from_env({"MAX_EVENT_FUTURE_MS": "0"}).max_event_future_ms == 0


def test_statistic_thresholds_are_parsed_and_normalised() -> None:
    raw = " ks = 0.05 , psi_categorical=0.25,psi_numeric=0, custom_2=1e6 "
    settings = Settings.from_env({"DRIFT_STATISTIC_THRESHOLDS": raw})
    assert settings.drift_statistic_thresholds == (
        "ks=0.05,psi_categorical=0.25,psi_numeric=0.0,custom_2=1000000.0"
    )
    assert config.parse_thresholds(settings.drift_statistic_thresholds) == {
        "ks": 0.05,
        "psi_categorical": 0.25,
        "psi_numeric": 0.0,
        "custom_2": 1e6,
    }
    assert config.parse_thresholds("") == {}
    assert Settings.from_env({"DRIFT_STATISTIC_THRESHOLDS": "  "}).drift_statistic_thresholds == ""
    assert Settings.from_env(settings.as_env()) == settings


def test_endpoints_accept_tcp_ipc_and_lists() -> None:
    settings = Settings.from_env(
        {
            "BROKER_FRONTEND": "tcp://127.0.0.1:6000,ipc:///tmp/fs-front",
            "BROKER_BACKEND": "ipc:///tmp/fs-back",
            "DRIFT_FEATURES_ENDPOINT": "tcp://*:7000",
            "ZMQ_CURVE_KEYS_DIR": "/etc/featurestore/keys",  # a wildcard bind needs CURVE
        }
    )
    assert settings.broker_frontend == "tcp://127.0.0.1:6000,ipc:///tmp/fs-front"
    assert settings.broker_backend == "ipc:///tmp/fs-back"
    assert settings.drift_features_endpoint == "tcp://*:7000"


def test_choices_are_accepted() -> None:
    assert Settings.from_env({"FEATURE_VERSION": "v2"}).feature_version == "v2"
    assert Settings.from_env({"LOG_LEVEL": "DEBUG"}).log_level == "DEBUG"


def test_versions_follow_enable_versioning() -> None:
    assert Settings.from_env({}).versions == ("v1", "v2")
    only = Settings.from_env({"ENABLE_VERSIONING": "false", "FEATURE_VERSION": "v2"})
    assert only.versions == ("v2",)


def test_as_env_round_trips() -> None:
    settings = Settings.from_env(
        {"PORT": "4000", "ENABLE_VERSIONING": "off", "DRIFT_THRESHOLD": "0.3", "DATA_DIR": "/x/y"}
    )
    env = settings.as_env()
    assert env["ENABLE_VERSIONING"] == "false"
    assert env["PORT"] == "4000"
    assert set(env) == set(VARIABLES)
    assert Settings.from_env(env) == settings


# ---------------------------------------------------------------------------- invalid input
def test_every_checked_variable_has_invalid_cases() -> None:
    covered = {name for name, var in VARIABLES.items() if _invalid_values(name, var)}
    # Free-form strings: any host name and any directory are acceptable values.
    assert set(VARIABLES) - covered == {"HOST", "DATA_DIR", "ZMQ_CURVE_KEYS_DIR", "API_TOKENS_FILE"}


@pytest.mark.parametrize(("name", "raw"), INVALID_CASES)
def test_an_invalid_value_raises_config_error_naming_the_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: raw})
    assert str(caught.value).startswith(f"{name}: ")
    assert "secret" not in str(caught.value)  # a password in STORE_URL is never shown


def test_store_url_chooses_the_backend_and_is_never_printed() -> None:
    assert Settings.from_env({}).store_backend == config.STORE_SQLITE
    assert not Settings.from_env({}).shared_store
    url = "postgresql://fs:s3cr3t@db.example:5433/features?sslmode=require"
    settings = Settings.from_env({"STORE_URL": f"  {url} "})
    assert settings.store_url == url
    assert settings.store_backend == config.STORE_POSTGRESQL and settings.shared_store
    assert "s3cr3t" not in repr(settings)
    assert config.redact_url(url) == "postgresql://fs@db.example:5433/features"
    assert config.redact_url("postgres://h/db") == "postgres://h/db"
    assert config.redact_url("postgresql://u:p@[::1]:5432/d") == "postgresql://u@[::1]:5432/d"
    assert Settings.from_env(settings.as_env()) == settings


@pytest.mark.parametrize(
    ("name", "raw"),
    [(name, var.minimum) for name, var in VARIABLES.items() if var.minimum is not None]
    + [(name, var.maximum) for name, var in VARIABLES.items() if var.maximum is not None],
)
def test_limits_themselves_are_valid(name: str, raw: float) -> None:
    var = VARIABLES[name]
    text = str(int(raw)) if _kind(var) == "int" else str(raw)
    assert config._read(name, var, text) == raw


def test_config_error_is_a_value_error_with_the_raw_value() -> None:
    with pytest.raises(ValueError, match=r"^CACHE_MAX_SIZE: invalid value 'abc': "):
        Settings.from_env({"CACHE_MAX_SIZE": "abc"})


def test_nan_float_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^DRIFT_THRESHOLD: .*finite"):
        Settings.from_env({"DRIFT_THRESHOLD": "nan"})
    assert not math.isnan(Settings.from_env({}).drift_threshold)


# -------------------------------------------------------------------------------- relations
def test_heartbeat_times_liveness_must_stay_below_request_timeout() -> None:
    base = {"HEARTBEAT_INTERVAL_MS": "500", "HEARTBEAT_LIVENESS": "3"}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**base, "REQUEST_TIMEOUT_MS": "1500"})
    assert str(caught.value).startswith("HEARTBEAT_INTERVAL_MS: ")
    assert "1500 ms" in str(caught.value)
    with pytest.raises(ConfigError, match=r"^HEARTBEAT_INTERVAL_MS: "):
        Settings.from_env({"HEARTBEAT_INTERVAL_MS": "2000", "HEARTBEAT_LIVENESS": "3"})
    ok = Settings.from_env({**base, "REQUEST_TIMEOUT_MS": "1501"})
    assert ok.request_timeout_ms == 1501


def test_drift_min_current_must_not_exceed_the_window() -> None:
    with pytest.raises(ConfigError, match=r"^DRIFT_MIN_CURRENT: "):
        Settings.from_env({"DRIFT_MIN_CURRENT": "1001"})
    with pytest.raises(ConfigError, match=r"^DRIFT_MIN_CURRENT: "):
        Settings.from_env({"DRIFT_WINDOW_SIZE": "100", "DRIFT_MIN_CURRENT": "101"})
    equal = Settings.from_env({"DRIFT_WINDOW_SIZE": "100", "DRIFT_MIN_CURRENT": "100"})
    assert (equal.drift_window_size, equal.drift_min_current) == (100, 100)


# ------------------------------------------------------------------- exposed binds (§11)
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "*", "10.1.2.3", "eth0", "fs.example.com"])
def test_a_non_loopback_http_host_needs_tokens(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^HOST: .*API_TOKENS_FILE.*ALLOW_INSECURE_BIND"):
        Settings.from_env({"HOST": host})
    assert Settings.from_env({"HOST": host, "API_TOKENS_FILE": "/etc/fs/tokens.toml"}).host == host
    assert Settings.from_env({"HOST": host, "ALLOW_INSECURE_BIND": "true"}).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_a_loopback_http_host_needs_nothing(host: str) -> None:
    assert Settings.from_env({"HOST": host}).host == host


@pytest.mark.parametrize("name", config.ZMQ_BOUND_ENDPOINTS)
@pytest.mark.parametrize(
    "endpoint", ["tcp://0.0.0.0:7000", "tcp://*:7000", "tcp://10.1.2.3:7000", "tcp://eth0:7000"]
)
def test_a_non_loopback_zmq_bind_needs_curve(name: str, endpoint: str) -> None:
    listed = f"ipc:///tmp/fs-x,{endpoint}"  # one exposed endpoint of a list is enough
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({name: listed})
    message = str(caught.value)
    assert message.startswith(f"{name}: {endpoint} ")
    assert "ZMQ_CURVE_KEYS_DIR" in message and "ALLOW_INSECURE_BIND" in message
    assert Settings.from_env({name: listed, "ZMQ_CURVE_KEYS_DIR": "/etc/fs/keys"})
    assert Settings.from_env({name: listed, "ALLOW_INSECURE_BIND": "true"})


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:7000",
        "tcp://127.9.9.9:7000",
        "tcp://localhost:7000",
        "tcp://[::1]:7000",
        "tcp://lo:7000",
        "ipc:///tmp/fs-x",
        "inproc://fs-x",
    ],
)
def test_local_zmq_endpoints_need_nothing(endpoint: str) -> None:
    assert Settings.from_env({"BROKER_BACKEND": endpoint}).broker_backend == endpoint


def test_allowed_exposed_binds_are_listed_for_the_log() -> None:
    allowed = Settings.from_env(
        {"HOST": "0.0.0.0", "BROKER_FRONTEND": "tcp://*:1", "ALLOW_INSECURE_BIND": "true"}
    )
    assert [e.split(":")[0] for e in allowed.exposed_binds()] == ["HOST", "BROKER_FRONTEND"]
    assert Settings.from_env({}).exposed_binds() == []


def test_key_and_token_paths_are_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"ZMQ_CURVE_KEYS_DIR": "keys", "API_TOKENS_FILE": "t.toml"})
    assert settings.zmq_curve_keys_dir == str(tmp_path.resolve() / "keys")
    assert settings.api_tokens_file == str(tmp_path.resolve() / "t.toml")


def test_tokens_do_not_cover_zmq_nor_curve_http() -> None:
    with pytest.raises(ConfigError, match=r"^BROKER_FRONTEND: "):
        Settings.from_env({"BROKER_FRONTEND": "tcp://*:1", "API_TOKENS_FILE": "/t.toml"})
    with pytest.raises(ConfigError, match=r"^HOST: "):
        Settings.from_env({"HOST": "0.0.0.0", "ZMQ_CURVE_KEYS_DIR": "/etc/fs/keys"})


# ------------------------------------------------------------------------------- cache name
def test_cache_name_is_derived_from_the_data_dir(tmp_path: Path) -> None:
    first = Settings.from_env({"DATA_DIR": str(tmp_path / "a")})
    second = Settings.from_env({"DATA_DIR": str(tmp_path / "b")})
    assert first.cache_name != second.cache_name
    assert first.cache_name == default_cache_name(str(tmp_path / "a"))
    assert first.cache_name.startswith("fs_")
    assert first.cache_name.isascii() and "/" not in first.cache_name


def test_cache_name_is_stable_for_one_directory(tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "data"
    name = default_cache_name(str(directory))
    assert default_cache_name(str(directory)) == name
    assert default_cache_name(str(directory) + "/") == name
    assert default_cache_name(str(tmp_path / "x" / ".." / "data")) == name
    monkeypatch.chdir(tmp_path)
    assert Settings.from_env({"DATA_DIR": "data"}).cache_name == name
    assert Settings.from_env({"DATA_DIR": "./data/"}).cache_name == name
    # Another interpreter (with its own hash seed) derives the same name.
    code = (
        "from featurestore.config import default_cache_name; "
        f"print(default_cache_name({str(directory)!r}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        check=True,
    )
    assert out.stdout.strip() == name


def test_explicit_cache_name_wins(tmp_path: Path) -> None:
    settings = Settings.from_env({"DATA_DIR": str(tmp_path), "CACHE_NAME": "fs_custom"})
    assert settings.cache_name == "fs_custom"


# ------------------------------------------------------------------------------ .env.example
def _env_example_entries() -> list[tuple[str, str]]:
    text = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    entries = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep, f"not NAME=value: {line!r}"
        entries.append((name.strip(), value.strip()))
    return entries


def test_env_example_lists_exactly_the_variables_with_their_defaults() -> None:
    entries = _env_example_entries()
    assert [name for name, _ in entries] == list(VARIABLES)
    for name, value in entries:
        assert value == _default_text(VARIABLES[name].default), name


def test_env_example_documents_every_variable() -> None:
    lines = (REPO_ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    comments = " ".join(line for line in lines if line.lstrip().startswith("#"))
    for name, var in VARIABLES.items():
        assert var.doc in comments, name


def test_env_example_parses_to_the_defaults() -> None:
    assert Settings.from_env(dict(_env_example_entries())) == Settings.from_env({})


# ------------------------------------------------------------------------------------- CLI
def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update(extra)
    return env


def _featurestore() -> str:
    found = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")
    assert Path(found).exists(), "the featurestore console script is not installed"
    return found


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"CACHE_MAX_SIZE": "abc"}, "CACHE_MAX_SIZE"),
        ({"REQUEST_TIMEOUT_MS": "100"}, "HEARTBEAT_INTERVAL_MS"),
        ({"HOST": "0.0.0.0"}, "ALLOW_INSECURE_BIND"),
    ],
)
def test_cli_stops_with_exit_config_naming_the_variable(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    data_dir = tmp_path / "data"
    done = subprocess.run(
        [_featurestore(), "features", "x", "--data-dir", str(data_dir)],
        check=False,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        env=_clean_env(**env),
    )
    assert done.returncode == EXIT_CONFIG
    assert name in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert not data_dir.exists()  # stopped before touching anything


def test_supervisord_does_not_restart_after_a_final_exit_code() -> None:
    from featurestore.exitcodes import FINAL_EXIT_CODES
    from featurestore.ops.supervisor import CONFIG

    programs = CONFIG.read_text().split("[program:")[1:]
    assert programs
    for section in programs:
        settings = dict(
            line.split("=", 1) for line in section.splitlines() if "=" in line and line[0] != ";"
        )
        assert settings["autorestart"] == "unexpected"
        assert {int(c) for c in settings["exitcodes"].split(",")} == set(FINAL_EXIT_CODES)
        assert int(settings["startretries"]) <= 5
