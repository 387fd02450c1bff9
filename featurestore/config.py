"""Settings: every environment variable of the service, its default and its check, in one table.

Each process reads the environment once (`Settings.from_env()`) and passes the object on.
An invalid value raises `ConfigError` naming the variable; entry points turn it into a
one-line message and exit code `EXIT_CONFIG`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DEFAULT_DATA_DIR = "./data"
STORE_SQLITE = "sqlite"  # the store backends, as /health and /metrics name them
STORE_POSTGRESQL = "postgresql"
POSTGRESQL_SCHEMES = ("postgresql", "postgres")


class ConfigError(ValueError):
    """An environment variable has an invalid value; the message starts with its name."""


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _parse_int(raw: str) -> int:
    text = raw.strip().replace("_", "")
    if not text.lstrip("-").isdigit():
        raise ValueError("expected an integer")
    return int(text)


def _parse_float(raw: str) -> float:
    value = float(raw.strip())
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _parse_str(raw: str) -> str:
    return raw.strip()


THRESHOLD_MAX = 1e6
STATISTIC_NAME = re.compile(r"[a-z][a-z0-9_]*")


def parse_thresholds(raw: str) -> dict[str, float]:
    """`NAME=VALUE,...` (DRIFT_STATISTIC_THRESHOLDS) as {statistic name: threshold}; the drift
    process checks that each name is one of its statistics."""
    thresholds: dict[str, float] = {}
    if not raw.strip():
        return thresholds
    for item in raw.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not STATISTIC_NAME.fullmatch(name):
            raise ValueError("expected NAME=VALUE,... such as ks=0.1,psi_categorical=0.2")
        if name in thresholds:
            raise ValueError(f"{name} given twice")
        try:
            threshold = _parse_float(value)
        except ValueError:
            raise ValueError(f"{name}: expected a finite number") from None
        if not 0 <= threshold <= THRESHOLD_MAX:
            raise ValueError(f"{name}: must be between 0 and {THRESHOLD_MAX:g}")
        thresholds[name] = threshold
    return thresholds


def _parse_thresholds(raw: str) -> str:
    return ",".join(f"{name}={value!r}" for name, value in parse_thresholds(raw).items())


def redact_url(url: str) -> str:
    """`url` without its password (and without any query parameter that could carry one), for
    logs and messages: postgresql://user@host:5432/db. Never log a store URL any other way."""
    try:
        parts = urlsplit(url.strip())
        netloc = parts.hostname or ""
        if ":" in netloc:  # an IPv6 address
            netloc = f"[{netloc}]"
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
    except ValueError:
        return "<an unreadable URL>"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _parse_store_url(raw: str) -> str:
    """Empty (SQLite under DATA_DIR) or postgresql://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE."""
    text = raw.strip()
    if not text:
        return ""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        port, parts = None, None
    if parts is None or parts.scheme not in POSTGRESQL_SCHEMES:
        raise ValueError(
            "expected empty (SQLite under DATA_DIR) or "
            "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise ValueError("expected a database name: postgresql://USER@HOST[:PORT]/DATABASE")
    if port == 0:
        raise ValueError("port 0 is not a server port")
    return text


def _parse_endpoint(raw: str) -> str:
    text = raw.strip()
    for endpoint in text.split(","):
        scheme, sep, rest = endpoint.strip().partition("://")
        if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
            raise ValueError(
                "expected tcp://HOST:PORT or ipc:///PATH (comma-separated for several)"
            )
        if scheme == "ipc" and len(rest.encode()) > 100:
            raise ValueError("ipc path longer than 100 bytes (the kernel limit is ~107)")
    return text


@dataclass(frozen=True)
class _Var:
    parse: Callable[[str], Any]
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    doc: str = ""
    secret: bool = False  # its value may carry a password: messages show it redacted


MIB = 1024 * 1024

# name -> how to read it. The one table of defaults; `.env.example` mirrors it (a test checks).
VARIABLES: dict[str, _Var] = {
    "PORT": _Var(_parse_int, 3000, 1, 65535, doc="HTTP port of the gateway"),
    "HOST": _Var(
        _parse_str, "127.0.0.1", doc="HTTP bind address; a non-loopback one needs API_TOKENS_FILE"
    ),
    "GATEWAY_WORKERS": _Var(_parse_int, 2, 1, 64, doc="Sanic worker processes"),
    "DATA_DIR": _Var(_parse_str, DEFAULT_DATA_DIR, doc="event store, baselines, logs"),
    "CACHE_NAME": _Var(
        _parse_str, "", doc="shared-memory segment name; empty = derived from DATA_DIR"
    ),
    "CACHE_MAX_SIZE": _Var(_parse_int, 10_000, 1, 50_000_000, doc="cached feature vectors"),
    "CACHE_TTL_MS": _Var(_parse_int, 300_000, 1, 10**12, doc="age after which a vector is stale"),
    "FEATURES_FILE": _Var(
        _parse_str, "", doc="feature definitions (TOML); empty = the shipped file (v1, v2)"
    ),
    "FEATURE_VERSION": _Var(
        _parse_str, "", doc="default version; empty = the first of the definitions file"
    ),
    "ENABLE_VERSIONING": _Var(_parse_bool, True, doc="serve every version, not only the default"),
    "ENABLE_DRIFT_MONITORING": _Var(_parse_bool, True, doc="publish vectors to the drift process"),
    "DRIFT_CHECK_INTERVAL_MS": _Var(_parse_int, 60_000, 10, 10**9, doc="report publishing period"),
    "DRIFT_THRESHOLD": _Var(_parse_float, 0.15, 0.0, 1e6, doc="PSI above which a feature drifts"),
    "DRIFT_STATISTIC_THRESHOLDS": _Var(
        _parse_thresholds,
        "",
        doc="per drift statistic NAME=VALUE,... (psi_numeric, psi_categorical, ks); "
        "unset: DRIFT_THRESHOLD for PSI, else the statistic's default",
    ),
    "DRIFT_BASELINE_SIZE": _Var(_parse_int, 1000, 10, 10**7, doc="observations in a baseline"),
    "DRIFT_WINDOW_SIZE": _Var(_parse_int, 1000, 10, 10**7, doc="observations in the window"),
    "DRIFT_MIN_CURRENT": _Var(_parse_int, 500, 1, 10**7, doc="window size before scoring"),
    "BATCH_SIZE": _Var(_parse_int, 1000, 1, 1_000_000, doc="entities or rows per worker chunk"),
    "BATCH_MAX_ENTITIES": _Var(_parse_int, 10_000, 1, 10**7, doc="entities per batch request"),
    "HISTORICAL_MAX_ROWS": _Var(_parse_int, 100_000, 1, 10**8, doc="rows per historical request"),
    "EVENTS_MAX_PER_REQUEST": _Var(_parse_int, 10_000, 1, 10**7, doc="events per ingest request"),
    "MAX_BODY_BYTES": _Var(_parse_int, 16 * MIB, 1024, 2**31, doc="largest HTTP body"),
    "MAX_EVENT_FUTURE_MS": _Var(_parse_int, 300_000, 0, 10**12, doc="how far ahead events may be"),
    "MAX_WORKERS": _Var(_parse_int, 4, 1, 256, doc="compute worker processes"),
    "BROKER_FRONTEND": _Var(_parse_endpoint, "tcp://127.0.0.1:5555", doc="clients connect here"),
    "BROKER_BACKEND": _Var(_parse_endpoint, "tcp://127.0.0.1:5556", doc="workers, drift connect"),
    "DRIFT_FEATURES_ENDPOINT": _Var(
        _parse_endpoint, "tcp://127.0.0.1:5557", doc="drift SUB; workers publish here"
    ),
    "DRIFT_PUB_ENDPOINT": _Var(_parse_endpoint, "tcp://127.0.0.1:5558", doc="reports and alerts"),
    "BROKER_QUEUE_MAX": _Var(_parse_int, 2000, 1, 10**7, doc="queued requests before overloaded"),
    "REQUEST_TIMEOUT_MS": _Var(_parse_int, 5000, 10, 10**8, doc="answer deadline of a request"),
    "HEARTBEAT_INTERVAL_MS": _Var(_parse_int, 500, 10, 10**7, doc="broker<->worker heartbeat"),
    "HEARTBEAT_LIVENESS": _Var(_parse_int, 3, 1, 100, doc="missed heartbeats before dead"),
    "MAX_REDISPATCH": _Var(_parse_int, 2, 0, 100, doc="re-dispatches of a dead worker's request"),
    "ZMQ_MAXMSGSIZE": _Var(_parse_int, 64 * MIB, 1024, 2**31, doc="largest ZeroMQ message"),
    "ZMQ_MAX_FRAMES": _Var(_parse_int, 64, 2, 100_000, doc="largest frame count of a message"),
    "BROKER_CLIENT_MAX_PENDING": _Var(
        _parse_int, 1000, 1, 10**7, doc="requests in progress per ZeroMQ client"
    ),
    "BROKER_CLIENT_MAX_BYTES": _Var(
        _parse_int, 64 * MIB, 64 * 1024, 2**40, doc="reply bytes queued for one ZeroMQ client"
    ),
    "REQUEST_ID_RETENTION_MS": _Var(
        _parse_int, 86_400_000, 1000, 10**12, doc="how long ingest request ids are remembered"
    ),
    "STORE_URL": _Var(
        _parse_store_url,
        "",
        doc="event store: empty = SQLite under DATA_DIR; postgresql://USER:PASSWORD@HOST:PORT/DB "
        "= a PostgreSQL server that several hosts share (README: Several hosts)",
        secret=True,
    ),
    "STORE_CONNECT_TIMEOUT_MS": _Var(
        _parse_int, 2000, 100, 600_000, doc="with STORE_URL: deadline of a database connection"
    ),
    "STORE_STATEMENT_TIMEOUT_MS": _Var(
        _parse_int, 30_000, 100, 3_600_000, doc="with STORE_URL: deadline of a database statement"
    ),
    "MAX_STALENESS_MS": _Var(
        _parse_int,
        1000,
        10,
        3_600_000,
        doc="with STORE_URL: longest a cache hit may lag behind an ingest on another host",
    ),
    "CHANGE_LOG_RETENTION_MS": _Var(
        _parse_int,
        600_000,
        1000,
        10**10,
        doc="with STORE_URL: how long the change log is kept for listeners that reconnect",
    ),
    "HTTP_READ_TIMEOUT_MS": _Var(
        _parse_int, 30_000, 100, 10**8, doc="deadline for an HTTP request's headers and body"
    ),
    "HTTP_MAX_HEADER_BYTES": _Var(
        _parse_int, 8192, 1024, 1 << 20, doc="largest HTTP request header block"
    ),
    "ZMQ_CURVE_KEYS_DIR": _Var(
        _parse_str,
        "",
        doc="ZeroMQ CURVE key directory (`featurestore keys generate`); empty = no CURVE",
    ),
    "API_TOKENS_FILE": _Var(
        _parse_str, "", doc="HTTP bearer tokens, TOML (`featurestore keys token`); empty = none"
    ),
    "ALLOW_INSECURE_BIND": _Var(
        _parse_bool, False, doc="allow a non-loopback bind without CURVE keys or tokens"
    ),
    "LOG_LEVEL": _Var(
        _parse_str, "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), doc="log verbosity"
    ),
}


@dataclass(frozen=True)
class Settings:
    """The validated configuration of one process. Field names are the variables, lower-cased."""

    port: int
    host: str
    gateway_workers: int
    data_dir: str
    cache_name: str
    cache_max_size: int
    cache_ttl_ms: int
    features_file: str
    feature_version: str
    enable_versioning: bool
    enable_drift_monitoring: bool
    drift_check_interval_ms: int
    drift_threshold: float
    drift_statistic_thresholds: str
    drift_baseline_size: int
    drift_window_size: int
    drift_min_current: int
    batch_size: int
    batch_max_entities: int
    historical_max_rows: int
    events_max_per_request: int
    max_body_bytes: int
    max_event_future_ms: int
    max_workers: int
    broker_frontend: str
    broker_backend: str
    drift_features_endpoint: str
    drift_pub_endpoint: str
    broker_queue_max: int
    request_timeout_ms: int
    heartbeat_interval_ms: int
    heartbeat_liveness: int
    max_redispatch: int
    zmq_maxmsgsize: int
    zmq_max_frames: int
    broker_client_max_pending: int
    broker_client_max_bytes: int
    request_id_retention_ms: int
    store_url: str = field(repr=False)  # may carry a password: never printed
    store_connect_timeout_ms: int
    store_statement_timeout_ms: int
    max_staleness_ms: int
    change_log_retention_ms: int
    http_read_timeout_ms: int
    http_max_header_bytes: int
    zmq_curve_keys_dir: str
    api_tokens_file: str
    allow_insecure_bind: bool
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every variable of `VARIABLES` from `environ` (default `os.environ`)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, var in VARIABLES.items():
            raw = env.get(name)
            values[name.lower()] = (
                var.default if raw is None or raw == "" else _read(name, var, raw)
            )
        values.update(overrides)
        values["data_dir"] = str(Path(values["data_dir"]).expanduser().resolve())
        for name in ("zmq_curve_keys_dir", "api_tokens_file", "features_file"):  # every process
            if values[name]:
                values[name] = str(Path(values[name]).expanduser().resolve())
        if not values["cache_name"]:
            values["cache_name"] = default_cache_name(values["data_dir"])
        settings = cls(**values)
        settings._check_relations()
        return settings

    def _check_relations(self) -> None:
        name = self.cache_name
        if len(name) > 200 or "/" in name or not name.isascii() or not name.isprintable():
            raise ConfigError("CACHE_NAME: expected up to 200 printable ASCII characters, no '/'")
        liveness_ms = self.heartbeat_interval_ms * self.heartbeat_liveness
        if liveness_ms >= self.request_timeout_ms:
            raise ConfigError(
                "HEARTBEAT_INTERVAL_MS: HEARTBEAT_INTERVAL_MS x HEARTBEAT_LIVENESS "
                f"({liveness_ms} ms) must stay below REQUEST_TIMEOUT_MS ({self.request_timeout_ms})"
            )
        if self.drift_min_current > self.drift_window_size:
            raise ConfigError("DRIFT_MIN_CURRENT: must not exceed DRIFT_WINDOW_SIZE")
        self.definitions  # noqa: B018 -- FEATURES_FILE and FEATURE_VERSION, read once here
        exposed = self.exposed_binds()
        if exposed and not self.allow_insecure_bind:  # SPEC §11
            raise ConfigError(f"{exposed[0]} or set ALLOW_INSECURE_BIND=true")

    def exposed_binds(self) -> list[str]:
        """Each non-loopback address served without authentication, as a sentence starting
        with its variable; refused at start unless ALLOW_INSECURE_BIND (then logged)."""
        exposed = []
        if not self.api_tokens_file and not is_loopback(self.host):
            exposed.append(
                f"HOST: {self.host!r} is not a loopback address and API_TOKENS_FILE is not "
                "set: add bearer tokens (`featurestore keys token`)"
            )
        if self.zmq_curve_keys_dir:
            return exposed
        for name in ZMQ_BOUND_ENDPOINTS:
            exposed.extend(
                f"{name}: {endpoint.strip()} is not a loopback address and ZMQ_CURVE_KEYS_DIR "
                "is not set: add CURVE keys (`featurestore keys generate`)"
                for endpoint in getattr(self, name.lower()).split(",")
                if not endpoint_is_local(endpoint)
            )
        return exposed

    @property
    def store_backend(self) -> str:
        """STORE_SQLITE (one host) or STORE_POSTGRESQL (a store several hosts may share)."""
        return STORE_POSTGRESQL if self.store_url else STORE_SQLITE

    @property
    def shared_store(self) -> bool:
        """Other hosts may write the store: cache hits need a fresh listener (SPEC §15)."""
        return self.store_backend == STORE_POSTGRESQL

    @cached_property
    def definitions(self):  # -> featurestore.definitions.FeatureDefinitions
        """The feature definitions of FEATURES_FILE (read once per process and path)."""
        from featurestore.definitions import definitions_of

        return definitions_of(self)

    @cached_property
    def default_version(self) -> str:
        """FEATURE_VERSION, or the first version of the definitions file."""
        return self.feature_version or self.definitions.names[0]

    @cached_property
    def versions(self) -> tuple[str, ...]:
        """The feature versions this service serves."""
        return self.definitions.names if self.enable_versioning else (self.default_version,)

    def __getstate__(self) -> dict[str, object]:
        """The fields only (pickled to another process): the cached properties derived from
        them (the definitions and their compiled plans) are derived again there."""
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, to start another process with the same view."""
        out = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _read(name: str, var: _Var, raw: str) -> Any:
    shown = redact_url(raw) if var.secret else raw
    try:
        value = var.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}: invalid value {shown!r}: {exc}") from None
    if var.choices is not None and value not in var.choices:
        raise ConfigError(
            f"{name}: invalid value {shown!r}: expected one of {', '.join(var.choices)}"
        )
    if var.minimum is not None and value < var.minimum:
        raise ConfigError(f"{name}: invalid value {shown!r}: must be at least {var.minimum}")
    if var.maximum is not None and value > var.maximum:
        raise ConfigError(f"{name}: invalid value {shown!r}: must be at most {var.maximum}")
    return value


# The endpoints a process of the stack binds (broker, drift): CURVE when not loopback.
ZMQ_BOUND_ENDPOINTS = (
    "BROKER_FRONTEND",
    "BROKER_BACKEND",
    "DRIFT_FEATURES_ENDPOINT",
    "DRIFT_PUB_ENDPOINT",
)
LOOPBACK_NAMES = frozenset({"localhost", "lo"})  # `lo`: ZeroMQ binds interface names too


def is_loopback(host: str) -> bool:
    """Whether `host` reaches this machine only: 127.0.0.0/8, ::1, localhost. A wildcard
    (0.0.0.0, ::, *), a real address, an interface or host name may be reached from others."""
    name = host.strip().removeprefix("[").removesuffix("]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def endpoint_is_local(endpoint: str) -> bool:
    """ipc and inproc are local; tcp://HOST:PORT when HOST is loopback."""
    scheme, _, rest = endpoint.strip().partition("://")
    if scheme != "tcp":
        return True
    address = rest.rsplit(";", 1)[-1]  # tcp://SOURCE;HOST:PORT (connect): the peer counts
    return is_loopback(address.rpartition(":")[0])


def default_cache_name(data_dir: str) -> str:
    """A segment name unique to a data directory, so parallel stacks never share a cache."""
    digest = hashlib.blake2b(str(Path(data_dir).resolve()).encode(), digest_size=6).hexdigest()
    return f"fs_{digest}"
