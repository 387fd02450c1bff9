"""The gateway's main process: it owns the listening socket and keeps GATEWAY_WORKERS HTTP
server processes (gateway/server.py) running on it.

- A server that dies (SIGKILL, SIGBUS on a truncated cache, a crash) is replaced at once; one
  that cannot stay up (FAST_FAILURES_MAX deaths within FAST_FAILURE_S of their start in a
  row) makes the gateway exit, so supervisord restarts it whole or reports it.
- A server that exits with a final code (a configuration error) stops the gateway with it.
- SIGTERM: every server drains its requests (Sanic's graceful shutdown), then the gateway
  exits; servers still running after the grace period are killed.
- Servers die with this process (parent-death signal), so a killed gateway leaves no orphan
  holding the port.
- The servers' metrics live in a multiprocess directory this process empties at start and
  removes when it stops (featurestore/ops/metrics_dir.py); a dead server's live gauge is
  removed when it is replaced, its counts stay.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from featurestore.config import Settings
from featurestore.exitcodes import EXIT_FAILURE, EXIT_OK, FINAL_EXIT_CODES
from featurestore.ops import metrics_dir as directory
from featurestore.ops.processes import PARENT_PID_VARIABLE
from featurestore.security.curve import check_keys
from featurestore.security.tokens import tokens_from_settings
from gateway.server import INDEX_VARIABLE, SOCKET_FD_VARIABLE

log = logging.getLogger("gateway")
WATCH_INTERVAL_S = 0.05
FAST_FAILURE_S = 2.0
FAST_FAILURES_MAX = 5
LISTEN_BACKLOG = 1024
GRACEFUL_SHUTDOWN_S = 10.0  # each server's graceful shutdown (Sanic's GRACEFUL_SHUTDOWN_TIMEOUT)
STOP_SLACK_S = 5.0


@dataclass
class Server:
    index: int
    process: subprocess.Popen
    started: float
    fast_failures: int = 0


def listen(host: str, port: int) -> socket.socket:
    """The gateway's listening socket (one for all servers; they accept on it in turn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class GatewayManager:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        check_keys(settings)  # a bad key or tokens file: ConfigError before any server starts
        tokens_from_settings(settings)
        self.listener = listen(settings.host, settings.port)
        self.metrics_dir = directory.prepare(settings.cache_name)
        self.servers: dict[int, Server] = {}
        self.stopping = threading.Event()
        self.exit_code = EXIT_OK

    def spawn(self, index: int, fast_failures: int = 0) -> None:
        env = {
            **os.environ,
            PARENT_PID_VARIABLE: str(os.getpid()),
            SOCKET_FD_VARIABLE: str(self.listener.fileno()),
            INDEX_VARIABLE: str(index),
            directory.MULTIPROC_DIR_VARIABLE: str(self.metrics_dir),
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.server"],
            env=env,
            pass_fds=(self.listener.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        self.servers[index] = Server(index, process, time.monotonic(), fast_failures)
        log.info("gateway server %d started (pid %d)", index, process.pid)

    def request_stop(self, *_: object) -> None:
        self.stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        for index in range(self.settings.gateway_workers):
            self.spawn(index)
        log.info(
            "gateway listening on %s:%d with %d servers",
            self.settings.host,
            self.settings.port,
            self.settings.gateway_workers,
        )
        while not self.stopping.wait(WATCH_INTERVAL_S):
            self.replace_dead()
        self.stop()
        return self.exit_code

    def replace_dead(self) -> None:
        for index, server in list(self.servers.items()):
            code = server.process.poll()
            if code is None:
                continue
            forget_process(self.metrics_dir, server.process.pid)
            if code in FINAL_EXIT_CODES:
                log.error("gateway server %d exited with %d: stopping the gateway", index, code)
                self.exit_code = code
                self.stopping.set()
                return
            quick = time.monotonic() - server.started < FAST_FAILURE_S
            failures = server.fast_failures + 1 if quick else 0
            if failures >= FAST_FAILURES_MAX:
                log.error("gateway server %d keeps dying at start: stopping the gateway", index)
                self.exit_code = EXIT_FAILURE
                self.stopping.set()
                return
            log.warning(
                "gateway server %d (pid %d) died (%s): replacing it",
                index,
                server.process.pid,
                code,
            )
            self.spawn(index, failures)

    def stop(self) -> None:
        """Every server drains (SIGTERM), then whatever is left is killed."""
        running = [s.process for s in self.servers.values() if s.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN_S + STOP_SLACK_S
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_SLACK_S)
        self.listener.close()
        try:
            directory.drop(self.settings.cache_name)
        except OSError as exc:  # the next start empties it
            log.warning("could not remove %s: %s", self.metrics_dir, exc)
        log.info("gateway stopped")


def forget_process(path: Path, pid: int) -> None:
    """A server process `pid` died: its live gauges go; its counters and histograms stay in
    the directory, so the gateway's totals never go down."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, str(path))
