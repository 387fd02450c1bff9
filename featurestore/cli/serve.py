"""`featurestore serve [--demo]`: the whole service on supervisord, in the foreground.

Fills the store with demo data when asked and the store is empty, waits until the API
answers, prints where it is, and on Ctrl-C / SIGTERM stops every process (the gateway first,
so it drains its requests) and unlinks the cache segment.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from featurestore.cli.common import CommandError, common_options, progress_bar
from featurestore.client import Client
from featurestore.config import Settings
from featurestore.curve import check_keys, internal_keys
from featurestore.demo import MEAN_EVENTS, default_end_ms, write_demo
from featurestore.errors import ServiceError
from featurestore.launcher import wait_for
from featurestore.store.sqlite import open_store
from featurestore.supervisor import start_supervisord
from featurestore.timestamps import now_ms
from featurestore.tokens import tokens_from_settings

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
DEMO_ENTITIES = 10_000
DEMO_SEED = 42
DEMO_MARKER = ".demo-incomplete"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        parents=[common_options()],
        help="run the whole service (gateway, broker, workers, drift)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help=f"fill an empty store with demo data ({DEMO_ENTITIES:,} entities)",
    )
    parser.set_defaults(run=run)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _fill_demo(settings: Settings) -> None:
    store = open_store(settings.data_dir)
    try:
        if store.counts()["events"]:
            return
        with progress_bar(DEMO_ENTITIES * MEAN_EVENTS, "events", "demo") as advance:
            write_demo(
                store,
                Path(settings.data_dir),
                entities=DEMO_ENTITIES,
                seed=42,
                end_ms=default_end_ms(now_ms()),
                progress=advance,
            )
    finally:
        store.close()


def _ready(settings: Settings, supervisord) -> bool:
    if supervisord.poll() is not None:
        raise CommandError(
            f"supervisord exited ({supervisord.returncode}); see "
            f"{settings.data_dir}/logs/supervisord.log"
        )
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    if not _port_open(host, settings.port):
        return False
    try:
        with Client(settings.broker_frontend, timeout_ms=1000, curve=internal_keys(settings)) as fs:
            return fs.health()["workers"]["alive"] >= settings.max_workers
    except ServiceError:
        return False


def run(args: argparse.Namespace, settings: Settings) -> int:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    if _port_open(host, settings.port):
        raise CommandError(f"port {settings.port} is already in use (another service running?)")
    check_keys(settings)  # a bad key or tokens file: EXIT_CONFIG now, not from supervisord
    tokens_from_settings(settings)
    if args.demo:
        _fill_demo(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisord = start_supervisord(settings)
    try:
        wait_for(
            lambda: stop.is_set() or _ready(settings, supervisord),
            READY_TIMEOUT_S,
            "the service to start",
            interval_s=0.2,
        )
        if not stop.is_set():
            print(
                f"featurestore is serving on http://{settings.host}:{settings.port} "
                f"(ZeroMQ {settings.broker_frontend}; logs in {settings.data_dir}/logs). "
                "Ctrl-C stops it.",
                flush=True,
            )
        while not stop.is_set() and supervisord.poll() is None:
            stop.wait(1.0)
    finally:
        died = supervisord.poll() is not None and not stop.is_set()
        if not died:
            _shutdown(settings, supervisord)
    if died:
        raise CommandError(
            f"supervisord exited on its own ({supervisord.returncode}); its "
            f"programs may still run: see {settings.data_dir}/logs"
        )
    return 0


def _shutdown(settings: Settings, supervisord) -> None:
    from gateway.metrics import drop as drop_metrics
    from shm import drop

    if supervisord.poll() is None:
        supervisord.send_signal(signal.SIGTERM)
        try:
            supervisord.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            supervisord.kill()
            supervisord.wait(timeout=10)
    drop(settings.cache_name)
    drop_metrics(settings.cache_name)
    print("featurestore stopped", file=sys.stderr, flush=True)
