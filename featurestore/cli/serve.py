"""`featurestore serve [--demo]`: the whole service on supervisord, in the foreground.

Takes the DATA_DIR (one stack per DATA_DIR: a second `serve` is refused naming the first;
the orphans of a killed predecessor, known by the pids it recorded, are stopped first),
fills the store with demo data when asked and the store is empty, starts supervisord (which
dies with this process, and every program with it), waits until the API answers, prints
where it is, and stops everything on Ctrl-C / SIGTERM (the gateway first, so it drains its
requests), unlinking the cache segment. A program that supervisord gives up on (it exited
with a final code, or could not stay up) ends `serve` with that program's own message.
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
from featurestore.config import Settings
from featurestore.errors import ServiceError
from featurestore.exitcodes import EXIT_FAILURE, EXIT_UNAVAILABLE
from featurestore.ops.processes import terminate
from featurestore.ops.stacklock import StackBusy, StackLock
from featurestore.ops.supervisor import given_up, program_pids, start_supervisord
from featurestore.security.tokens import tokens_from_settings

READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 60.0
ORPHAN_STOP_S = 10.0
WATCH_INTERVAL_S = 1.0
DEMO_ENTITIES = 10_000
DEMO_SEED = 42


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
    from featurestore.offline.demo import MEAN_EVENTS, default_end_ms, write_demo
    from featurestore.store.factory import open_event_store
    from featurestore.timestamps import now_ms

    store = open_event_store(settings, role="serve")
    try:
        if store.counts()["events"]:
            return
        with progress_bar(DEMO_ENTITIES * MEAN_EVENTS, "events", "demo") as advance:
            write_demo(
                store,
                Path(settings.data_dir),
                entities=DEMO_ENTITIES,
                seed=DEMO_SEED,
                end_ms=default_end_ms(now_ms()),
                progress=advance,
            )
    finally:
        store.close()


def _take_data_dir(settings: Settings) -> StackLock:
    """The DATA_DIR's lock, after stopping what a killed predecessor left running."""
    try:
        lock = StackLock(settings.data_dir).acquire("featurestore serve")
    except StackBusy as exc:
        raise CommandError(str(exc), EXIT_UNAVAILABLE) from None
    orphans = lock.previous.live_processes() if lock.previous else {}
    if orphans:
        named = ", ".join(f"{name} (pid {pid})" for name, pid in sorted(orphans.items()))
        print(f"featurestore serve: stopping processes left by a killed stack: {named}")
        left = terminate(list(orphans.values()), ORPHAN_STOP_S)
        if left:
            lock.release()
            raise CommandError(
                f"processes of a killed stack on {settings.data_dir} would not stop: "
                f"pids {', '.join(map(str, left))}",
                EXIT_UNAVAILABLE,
            )
    return lock


def _check_supervisord(settings: Settings, supervisord: subprocess.Popen) -> None:
    """CommandError if supervisord died or gave up on a program (with that program's words)."""
    if supervisord.poll() is not None:
        raise CommandError(
            f"supervisord exited ({supervisord.returncode}); see "
            f"{settings.data_dir}/logs/supervisord.log"
        )
    failed = given_up(settings)
    if failed:
        name, message = failed
        raise CommandError(f"{name} could not run: {message}", EXIT_FAILURE)


def _ready(settings: Settings, supervisord: subprocess.Popen) -> bool:
    from featurestore.security.curve import internal_keys
    from featurestore.wire.client import Client

    _check_supervisord(settings, supervisord)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    if not _port_open(host, settings.port):
        return False
    try:
        with Client(settings.broker_frontend, timeout_ms=1000, curve=internal_keys(settings)) as fs:
            return fs.health()["workers"]["alive"] >= settings.max_workers
    except ServiceError:
        return False


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.cache import rebuild_if_stale
    from featurestore.security.curve import check_keys
    from featurestore.store.factory import open_event_store

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    with _take_data_dir(settings) as lock:
        if _port_open(host, settings.port):
            raise CommandError(f"port {settings.port} is already in use (another service?)")
        check_keys(settings)  # a bad key or tokens file: EXIT_CONFIG now, not from supervisord
        tokens_from_settings(settings)
        # Pre-flight: a bad definitions file, a corrupt or foreign store, fields that do not
        # fit the store or a changed served version are reported here in one line (and the
        # store migrated here, once, before any worker opens it).
        definitions = settings.definitions
        store = open_event_store(settings, role="serve")
        try:
            store.record_versions(
                {v: definitions.versions[v].content_hash for v in settings.versions},
                definitions.source,
            )
        finally:
            store.close()
        if args.demo:
            _fill_demo(settings)
        if rebuild_if_stale(settings):
            print(
                f"featurestore: the cache segment {settings.cache_name!r} had another layout "
                "(settings or definitions changed): rebuilt",
                file=sys.stderr,
                flush=True,
            )
        return _serve(settings, lock)


def _serve(settings: Settings, lock: StackLock) -> int:
    from featurestore.ops.launcher import wait_for

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    supervisord = start_supervisord(settings, owner_pid=lock.record.owner_pid)
    try:
        lock.note({"supervisord": supervisord.pid})
        wait_for(
            lambda: stop.is_set() or _ready(settings, supervisord),
            READY_TIMEOUT_S,
            "the service to start",
            interval_s=0.2,
        )
        if not stop.is_set():
            lock.note({"supervisord": supervisord.pid, **program_pids(settings)})
            print(
                f"featurestore is serving on http://{settings.host}:{settings.port} "
                f"(ZeroMQ {settings.broker_frontend}; logs in {settings.data_dir}/logs). "
                "Ctrl-C stops it.",
                flush=True,
            )
        while not stop.wait(WATCH_INTERVAL_S):
            _check_supervisord(settings, supervisord)
    finally:
        _shutdown(settings, supervisord)
    return 0


def _shutdown(settings: Settings, supervisord: subprocess.Popen) -> None:
    from featurestore.ops.metrics_dir import drop as drop_metrics
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
