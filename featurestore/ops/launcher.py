"""The test launcher: a private stack of real processes (broker, workers; gateway and drift
when asked; the change listener with a STORE_URL) with their own ports, short ipc paths,
DATA_DIR and CACHE_NAME. Several stacks given one STORE_URL are several hosts of one store.

    with Stack(tmp_path, workers=2) as stack:
        with stack.client() as fs:
            fs.get("user_00001")

Processes are started as `python -m <role>` with the stack's environment, logs go to
DATA_DIR/logs/<name>.log, readiness is awaited through the `health` operation with a deadline,
dead processes are restarted (like supervisord's autorestart) unless the stack is told not to,
and `stop()` ends only the stack's own pids and drops its cache segment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from featurestore.config import Settings
from featurestore.errors import ServiceError
from featurestore.ops.processes import PARENT_PID_VARIABLE
from featurestore.ops.stacklock import OWNER_VARIABLE, StackLock
from featurestore.security.curve import internal_keys
from featurestore.wire.client import Client

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
WATCH_INTERVAL_S = 0.05
GATEWAY_PROBE_TIMEOUT_S = 1.0
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never an http_proxy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.02
) -> Any:
    """Poll `condition` until it returns a truthy value; TimeoutError naming `what` after."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        time.sleep(interval_s)  # deadline-poll


@dataclass
class Managed:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    autorestart: bool = True


@dataclass
class Stack:
    data_dir: Path
    workers: int = 2
    gateway: bool = False
    drift: bool = False
    env: dict[str, str] = field(default_factory=dict)
    autorestart: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ipc_dir = Path(tempfile.mkdtemp(prefix="fs", dir="/tmp"))
        self.processes: dict[str, Managed] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        base = {
            "DATA_DIR": str(self.data_dir),
            "CACHE_NAME": f"fst_{uuid.uuid4().hex[:12]}",
            "MAX_WORKERS": str(max(1, self.workers)),  # workers=0: peers join by hand
            "BROKER_FRONTEND": f"tcp://127.0.0.1:{free_port()}",
            "BROKER_BACKEND": f"ipc://{self.ipc_dir}/be",
            "DRIFT_FEATURES_ENDPOINT": f"ipc://{self.ipc_dir}/df",
            "DRIFT_PUB_ENDPOINT": f"ipc://{self.ipc_dir}/dp",
            "PORT": str(free_port()),
            "HEARTBEAT_INTERVAL_MS": "200",
            "HEARTBEAT_LIVENESS": "3",
            "ENABLE_DRIFT_MONITORING": "true" if self.drift else "false",
            "LOG_LEVEL": "INFO",
            "GATEWAY_WORKERS": "2",
        }
        base.update(self.env)
        self.environ = {
            **os.environ,
            **base,
            "PYTHONUNBUFFERED": "1",
            PARENT_PID_VARIABLE: str(os.getpid()),
            OWNER_VARIABLE: str(os.getpid()),
        }
        self.settings = Settings.from_env(self.environ)
        self.lock: StackLock | None = None

    # ------------------------------------------------------------------ processes
    @property
    def frontend(self) -> str:
        return self.settings.broker_frontend

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def _spawn(self, managed: Managed) -> None:
        managed.log_path.parent.mkdir(parents=True, exist_ok=True)
        with managed.log_path.open("ab") as log:
            managed.process = subprocess.Popen(
                managed.argv,
                env=self.environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def add(self, name: str, argv: list[str], autorestart: bool | None = None) -> Managed:
        managed = Managed(
            name,
            argv,
            self.data_dir / "logs" / f"{name}.log",
            autorestart=self.autorestart if autorestart is None else autorestart,
        )
        with self._lock:
            self.processes[name] = managed
            self._spawn(managed)
        return managed

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> Stack:
        """Take the DATA_DIR (StackBusy if another stack has it), start every process, wait
        until the stack answers."""
        self.lock = StackLock(self.data_dir).acquire(f"test stack of pid {os.getpid()}")
        python = sys.executable
        self.add("broker", [python, "-m", "broker"])
        if self.drift:  # before the workers, whose publishers connect to it (supervisord too)
            self.add("drift", [python, "-m", "drift"])
        if self.settings.shared_store:
            self.add("listener", [python, "-m", "listener"])
        for index in range(self.workers):
            self.add(f"worker-{index}", [python, "-m", "workers", "--id", str(index)])
        if self.gateway:
            self.add("gateway", [python, "-m", "gateway"])
        self._watcher = threading.Thread(target=self._watch, name="stack-watch", daemon=True)
        self._watcher.start()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _watch(self) -> None:
        """Restart dead processes (supervisord's autorestart) until the stack stops."""
        while not self._stopping.wait(WATCH_INTERVAL_S):
            with self._lock:
                for managed in self.processes.values():
                    if managed.autorestart and managed.process.poll() is not None:
                        managed.restarts += 1
                        self._spawn(managed)

    def health(self) -> dict | None:
        try:
            with self.client(timeout_ms=1000, retry_ms=300) as fs:
                return fs.health()
        except (ServiceError, zmq.ZMQError, OSError):
            return None  # not up yet

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> dict:
        """Until every expected worker (and drift, gateway, a fresh listener) is alive."""

        def ready() -> dict | None:
            self._raise_if_exited()
            health = self.health()
            if health is None or health["workers"]["alive"] < self.workers:
                return None
            if self.drift and health["drift"] != "ok":
                return None
            if self.settings.shared_store and not (health.get("listener") or {}).get("fresh"):
                return None
            if self.gateway and not self._gateway_up():
                return None
            return health

        return wait_for(ready, timeout_s, "the stack to become ready")

    def _gateway_up(self) -> bool:
        """Every HTTP server of the gateway answers: its main process accepts connections
        before its servers are up, so a TCP connect proves nothing."""
        url = f"http://127.0.0.1:{self.settings.port}/health"
        try:
            with _DIRECT.open(url, timeout=GATEWAY_PROBE_TIMEOUT_S) as response:
                gateway = json.loads(response.read())["gateway"]
        except (OSError, ValueError, KeyError):
            return False  # not yet listening, or a 503 (urllib raises HTTPError, an OSError)
        return gateway["alive"] >= gateway["expected"]

    def _raise_if_exited(self) -> None:
        for managed in self.processes.values():
            code = managed.process.poll()
            if code is not None and not managed.autorestart:
                raise RuntimeError(
                    f"{managed.name} exited with {code}: {self.log_tail(managed.name)}"
                )

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.processes[name].log_path
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def pid(self, name: str) -> int:
        return self.processes[name].process.pid

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send `sig` to one of the stack's processes; its pid."""
        process = self.processes[name].process
        os.kill(process.pid, sig)
        return process.pid

    def restart_count(self, name: str) -> int:
        return self.processes[name].restarts

    def client(self, **options: Any) -> Client:
        """A client of the front end; with the stack's internal CURVE keys when it has some."""
        options.setdefault("curve", internal_keys(self.settings))
        return Client(self.frontend, **options)

    # ----------------------------------------------------------------------- stop
    def stop(self) -> None:
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=2)
        with self._lock:
            running = [
                m.process
                for m in self.processes.values()
                if m.process is not None and m.process.poll() is None
            ]
            for process in running:
                _signal_group(process, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for process in running:
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    _signal_group(process, signal.SIGKILL)
                    process.wait(timeout=5)
        from featurestore.ops.metrics_dir import drop as drop_metrics
        from shm import drop

        drop(self.settings.cache_name)
        drop_metrics(self.settings.cache_name)
        shutil.rmtree(self.ipc_dir, ignore_errors=True)
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
