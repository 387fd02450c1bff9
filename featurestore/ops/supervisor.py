"""Running the whole service on supervisord: the environment, the process, its control.

`featurestore serve` and the supervisord tests use this; supervisord.conf takes every path and
port from the environment built here.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

from featurestore.config import Settings
from featurestore.exitcodes import FINAL_EXIT_CODES
from featurestore.ops.permissions import PRIVATE_UMASK, private_dir
from featurestore.ops.processes import PARENT_PID_VARIABLE
from featurestore.ops.stacklock import OWNER_VARIABLE

CONFIG = Path(__file__).with_name("supervisord.conf")
SOCKET_PATH_MAX = 100


def socket_path(settings: Settings) -> str:
    """DATA_DIR/supervisor.sock, or a short /tmp path when that would be too long."""
    inside = os.path.join(settings.data_dir, "supervisor.sock")
    if len(inside) <= SOCKET_PATH_MAX:
        return inside
    digest = hashlib.blake2b(settings.data_dir.encode(), digest_size=6).hexdigest()
    return f"/tmp/fs-{digest}.sock"


def supervisor_env(
    settings: Settings, base: dict[str, str] | None = None, owner_pid: int | None = None
) -> dict[str, str]:
    """The environment of supervisord and its programs: the settings, and the pid of the
    stack's root when one holds the DATA_DIR lock (`featurestore serve`)."""
    env = dict(os.environ if base is None else base)
    env.pop(PARENT_PID_VARIABLE, None)  # the programs' parent is supervisord
    env.pop(OWNER_VARIABLE, None)
    if owner_pid is not None:
        env[OWNER_VARIABLE] = str(owner_pid)
    env.update(settings.as_env())
    env["FS_PYTHON"] = sys.executable
    env["SUPERVISOR_SOCKET"] = socket_path(settings)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_supervisord(
    settings: Settings,
    base_env: dict[str, str] | None = None,
    config: Path = CONFIG,
    owner_pid: int | None = None,
) -> subprocess.Popen:
    """supervisord in the foreground (-n), in its own process group, dying with its parent
    (so every program dies with it in turn)."""
    private_dir(Path(settings.data_dir, "logs"))  # 0700 (DATA_DIR too), whatever our umask
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurestore.ops.orphanless",
            sys.executable,
            "-m",
            "supervisor.supervisord",
            "-n",
            "-c",
            str(config),
        ],
        env={
            **supervisor_env(settings, base_env, owner_pid),
            PARENT_PID_VARIABLE: str(os.getpid()),
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        umask=PRIVATE_UMASK,  # its own files: logs, pid file, socket (nodaemon ignores umask=)
    )


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket."""

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        super().__init__()
        self.path = path
        self.timeout_s = timeout_s

    def make_connection(self, host):
        import http.client
        import socket

        transport = self

        class Connection(http.client.HTTPConnection):
            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(transport.timeout_s)
                self.sock.connect(transport.path)

        return Connection("localhost")


def control(settings: Settings) -> xmlrpc.client.ServerProxy:
    """supervisord's XML-RPC interface (`.supervisor.getAllProcessInfo()` etc.)."""
    return xmlrpc.client.ServerProxy(
        "http://localhost", transport=UnixTransport(socket_path(settings))
    )


def process_states(settings: Settings) -> dict[str, str]:
    """{"broker": "RUNNING", "worker-0": ..., ...} by supervisord process name."""
    return {
        info["name"]: info["statename"] for info in control(settings).supervisor.getAllProcessInfo()
    }


GIVEN_UP_STATES = ("FATAL",)


def _process_info(settings: Settings) -> list[dict]:
    """supervisord's view of its programs; [] while its socket does not answer yet."""
    try:
        return control(settings).supervisor.getAllProcessInfo()
    except (OSError, xmlrpc.client.Error):
        return []


def program_pids(settings: Settings) -> dict[str, int]:
    """{program name: pid} of the running programs."""
    return {
        info["name"]: int(info["pid"])
        for info in _process_info(settings)
        if info["statename"] == "RUNNING" and info["pid"]
    }


def given_up(settings: Settings) -> tuple[str, str] | None:
    """(program, its last log line) of a program supervisord will not restart: FATAL (it could
    not stay up), or EXITED with a final exit code (a configuration or data error)."""
    for info in _process_info(settings):
        final = info["statename"] == "EXITED" and info["exitstatus"] in FINAL_EXIT_CODES
        if info["statename"] in GIVEN_UP_STATES or final:
            return info["name"], last_line(info.get("stdout_logfile") or "") or info["spawnerr"]
    return None


def last_line(path: str, tail_bytes: int = 8192) -> str:
    """The last non-empty line of a log file ("" when there is none)."""
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - tail_bytes))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")
