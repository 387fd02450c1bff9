"""Helpers of the operations tests: the whole service on a real supervisord (or `featurestore
serve`) with private ports, ipc paths, DATA_DIR and CACHE_NAME, and a clean-up that leaves
nothing behind whatever the test did.

Processes are found by their environment: every process of a private stack (supervisord, each
program, Sanic's worker processes) carries `DATA_DIR=<that stack's directory>`, which no other
process on the host has, so `processes_using(data_dir)` names exactly the stack's processes.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pandas as pd

from featurestore.config import Settings
from featurestore.errors import ServiceError
from featurestore.offline.demo import ENTITY_LIST
from featurestore.ops.launcher import free_port, wait_for
from featurestore.ops.processes import PARENT_PID_VARIABLE
from featurestore.ops.supervisor import CONFIG, control, socket_path, start_supervisord
from featurestore.wire.client import Client
from shm import segment

DEMO_ENTITIES = 200
DEMO_SEED = 3
DEMO_END = "2026-01-01T00:00:00Z"
RUNNING_TIMEOUT_S = 60.0  # five interpreters importing numpy/pandas on 2 busy cores
STOP_TIMEOUT_S = 45.0  # above the gateway's stopwaitsecs (25 s)
KILL_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 60.0
PROGRAMS = ("broker", "drift", "gateway", "listener")


# ---------------------------------------------------------------------------- settings
def private_env(data_dir: Path, ipc_dir: str, **extra: str) -> dict[str, str]:
    """The variables of a private stack: free ports, short ipc paths, its own cache name."""
    env = {
        "DATA_DIR": str(data_dir),
        "CACHE_NAME": f"fst_{uuid.uuid4().hex[:12]}",
        "PORT": str(free_port()),
        "BROKER_FRONTEND": f"tcp://127.0.0.1:{free_port()}",
        "BROKER_BACKEND": f"ipc://{ipc_dir}/be",
        "DRIFT_FEATURES_ENDPOINT": f"ipc://{ipc_dir}/df",
        "DRIFT_PUB_ENDPOINT": f"ipc://{ipc_dir}/dp",
        "MAX_WORKERS": "2",
        "GATEWAY_WORKERS": "1",
        "HEARTBEAT_INTERVAL_MS": "200",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


@contextlib.contextmanager
def private_settings(data_dir: Path, **extra: str) -> Iterator[Settings]:
    """Settings of a private stack; afterwards every process using its DATA_DIR is killed,
    its cache segment and metrics directory removed and its ipc directory too."""
    ipc_dir = tempfile.mkdtemp(prefix="fs", dir="/tmp")
    data_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings.from_env(private_env(data_dir, ipc_dir, **extra))
    try:
        yield settings
    finally:
        kill_leftovers(settings.data_dir)
        from featurestore.ops.metrics_dir import drop as drop_metrics

        segment.drop(settings.cache_name)
        drop_metrics(settings.cache_name)
        shutil.rmtree(ipc_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):  # left by a SIGKILLed supervisord
            os.unlink(socket_path(settings))


def service_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the private settings, for `featurestore` commands.
    FS_PARENT_PID is left out: supervisord, not this process, is the programs' parent."""
    env = {k: v for k, v in os.environ.items() if k != PARENT_PID_VARIABLE}
    env.update(settings.as_env())
    env["PYTHONUNBUFFERED"] = "1"
    return env


def featurestore_command() -> list[str]:
    """The installed `featurestore` console script of this interpreter."""
    script = Path(sys.executable).with_name("featurestore")
    return [str(script)] if script.exists() else [shutil.which("featurestore") or "featurestore"]


def write_demo_store(settings: Settings) -> None:
    """`featurestore demo --entities 200 --seed 3 --end 2026-01-01T00:00:00Z` into DATA_DIR."""
    subprocess.run(
        [
            *featurestore_command(),
            "demo",
            "--data-dir",
            settings.data_dir,
            "--entities",
            str(DEMO_ENTITIES),
            "--seed",
            str(DEMO_SEED),
            "--end",
            DEMO_END,
        ],
        env=service_env(settings),
        check=True,
        capture_output=True,
        timeout=COMMAND_TIMEOUT_S,
    )


def demo_ids(settings: Settings) -> list[str]:
    """The demo entities that have events (from DATA_DIR/demo_entities.csv)."""
    listing = pd.read_csv(Path(settings.data_dir) / ENTITY_LIST)
    return listing.loc[listing["n_events"] > 0, "entity_id"].tolist()


# --------------------------------------------------------------------------- processes
def processes_using(data_dir: str) -> list[int]:
    """Pids of the live processes whose environment has DATA_DIR=data_dir (zombies have none)."""
    marker = f"DATA_DIR={data_dir}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_leftovers(data_dir: str) -> list[int]:
    """SIGKILL every process using data_dir (they are this test's: the directory is unique)
    until none is left; the pids that were found the first time."""
    first = processes_using(data_dir)

    def none_left() -> bool:
        for pid in processes_using(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return not processes_using(data_dir)

    wait_for(none_left, KILL_TIMEOUT_S, f"the processes using {data_dir} to die", 0.05)
    return first


def process_info(settings: Settings) -> dict[str, dict]:
    """supervisord's view, by process name: {"worker-0": {"pid", "statename", ...}, ...}."""
    return {i["name"]: i for i in control(settings).supervisor.getAllProcessInfo()}


def program_names(settings: Settings) -> set[str]:
    return {*PROGRAMS, *(f"worker-{n}" for n in range(settings.max_workers))}


class Supervised:
    """supervisord started from the project's supervisord.conf with private settings."""

    def __init__(self, settings: Settings, config: Path = CONFIG) -> None:
        self.settings = settings
        self.process = start_supervisord(settings, service_env(settings), config)

    def info(self) -> dict[str, dict] | None:
        """process_info, or None while supervisord does not answer yet."""
        self.raise_if_exited()
        try:
            return process_info(self.settings)
        except OSError:  # the socket is not there yet
            return None

    def raise_if_exited(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(
                f"supervisord exited with {self.process.returncode}: {self.log_tail()}"
            )

    def wait_running(self, timeout_s: float = RUNNING_TIMEOUT_S) -> dict[str, dict]:
        """Until every program of the configuration is RUNNING; their infos."""

        def running() -> dict[str, dict] | None:
            infos = self.info()
            if infos is None or set(infos) != program_names(self.settings):
                return None
            return infos if all(i["statename"] == "RUNNING" for i in infos.values()) else None

        return wait_for(running, timeout_s, "every supervisord program to be RUNNING", 0.1)

    def wait_healthy(self, timeout_s: float = RUNNING_TIMEOUT_S) -> dict:
        """Until the ZeroMQ `health` says ok with every worker and drift alive; its body."""

        def healthy() -> dict | None:
            self.raise_if_exited()
            health = zmq_health(self.settings)
            return health if health is not None and is_healthy(health, self.settings) else None

        return wait_for(healthy, timeout_s, "health ok with every worker alive", 0.1)

    def start(self) -> Supervised:
        self.wait_running()
        self.wait_healthy()
        wait_for(
            lambda: http_get(self.settings, "/health")[0] == 200,
            RUNNING_TIMEOUT_S,
            "the gateway to answer /health",
            0.1,
        )
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM to supervisord (it stops every program); its exit code. SIGKILL to its
        process group if it does not exit in time (then the code is -9)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill_group()
        return self.process.returncode

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=KILL_TIMEOUT_S)

    def kill_everything(self) -> list[int]:
        """SIGKILL supervisord's process group first (so nothing is restarted), then every
        other process of the stack (each program runs in its own group); their pids."""
        children = processes_using(self.settings.data_dir)
        self.kill_group()
        return sorted({*children, *kill_leftovers(self.settings.data_dir)})

    def log_tail(self, name: str = "supervisord", lines: int = 40) -> str:
        path = Path(self.settings.data_dir) / "logs" / f"{name}.log"
        if not path.exists():
            return f"(no {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Whatever happened: supervisord stopped, then every process of the stack killed."""
        try:
            self.stop()
        finally:
            if self.process.poll() is None:
                self.kill_group()
            kill_leftovers(self.settings.data_dir)


@contextlib.contextmanager
def supervised(settings: Settings) -> Iterator[Supervised]:
    """A started supervisord stack (all RUNNING, health ok), closed when the block ends."""
    stack = Supervised(settings)
    try:
        yield stack.start()
    finally:
        stack.close()


# ------------------------------------------------------------------------------ health
def zmq_health(settings: Settings) -> dict | None:
    """The ZeroMQ `health` body, or None when the broker does not answer (yet)."""
    try:
        with Client(settings.broker_frontend, timeout_ms=1000, retry_ms=300) as fs:
            return fs.health()
    except ServiceError:
        return None


def is_healthy(health: dict, settings: Settings) -> bool:
    return (
        health["status"] == "ok"
        and health["workers"] == {"alive": settings.max_workers, "expected": settings.max_workers}
        and health["drift"] == "ok"
        and health["cache"] == "ok"
    )


# -------------------------------------------------------------------------------- HTTP
def http_request(
    connection: http.client.HTTPConnection, method: str, path: str, body: dict | None = None
) -> tuple[int, dict]:
    """One request on a kept-alive connection: (status, JSON body)."""
    payload = None if body is None else orjson.dumps(body)
    headers = {} if body is None else {"Content-Type": "application/json"}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    return response.status, orjson.loads(response.read())


def http_connection(settings: Settings) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", settings.port, timeout=HTTP_TIMEOUT_S)


def http_get(settings: Settings, path: str) -> tuple[int, dict | None]:
    """(status, body) of one GET; (0, None) while nothing listens."""
    connection = http_connection(settings)
    try:
        return http_request(connection, "GET", path)
    except (OSError, http.client.HTTPException):
        return 0, None
    finally:
        connection.close()


def http_post(settings: Settings, path: str, body: dict) -> tuple[int, dict]:
    connection = http_connection(settings)
    try:
        return http_request(connection, "POST", path, body)
    finally:
        connection.close()


# ---------------------------------------------------------------------- featurestore serve
SERVING_LINE = "featurestore is serving on"


class Served:
    """`featurestore serve` (on the DATA_DIR's existing store) as a real subprocess in its own
    session, its stdout and stderr in files; `close()` kills whatever is left of the stack."""

    def __init__(self, settings: Settings, log_dir: Path, *args: str) -> None:
        self.settings = settings
        self.out_path = log_dir / f"serve-{uuid.uuid4().hex[:6]}.out"
        self.err_path = self.out_path.with_suffix(".err")
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                [*featurestore_command(), "serve", *args],
                env=service_env(self.settings),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def wait_serving(self, timeout_s: float = RUNNING_TIMEOUT_S) -> Served:
        def serving() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited ({self.process.returncode}): {self.output()}")
            return SERVING_LINE in self.out_path.read_text(errors="replace")

        wait_for(serving, timeout_s, "featurestore serve to say it is serving", 0.1)
        return self

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.process.wait(timeout=timeout_s)

    def pids(self) -> dict[str, int]:
        """{program: pid} from supervisord, and "supervisord" itself."""
        infos = process_info(self.settings)
        pids = {name: info["pid"] for name, info in infos.items() if info["pid"]}
        pids["supervisord"] = int(control(self.settings).supervisor.getPID())
        return pids

    def close(self, *, leftovers: bool = True) -> None:
        """Stop serve (SIGTERM, then SIGKILL); then, unless `leftovers` is False (another
        stack shares the DATA_DIR), kill every process still using its DATA_DIR."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=KILL_TIMEOUT_S)
        if leftovers:
            kill_leftovers(self.settings.data_dir)
