"""A corrupt or foreign store file (SPEC §11) stops every process that opens it with one clear
line and EXIT_DATA, never a traceback and never a crash loop: a compute worker (at start, or
when it finds damage while serving), the CLI commands, `featurestore serve` (before it starts
supervisord), and a worker under supervisord (which does not restart it forever).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from supervised_support import (
    COMMAND_TIMEOUT_S,
    RUNNING_TIMEOUT_S,
    Supervised,
    featurestore_command,
    private_settings,
    service_env,
)

from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.exitcodes import EXIT_DATA
from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.sqlite import DB_FILENAME, PAGE_SIZE
from featurestore.timestamps import now_ms

STARTRETRIES = 3  # supervisord.conf
NOT_A_DATABASE = b"entity_id,timestamp,value\nuser_1,1700000000000,1.5\n" * 64


def not_a_database(path: Path) -> str:
    path.write_bytes(NOT_A_DATABASE)
    return "not a SQLite database"


def foreign_database(path: Path) -> str:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.commit()
    conn.close()
    return "a SQLite database of another application"


BAD_STORES = {"not a database": not_a_database, "foreign database": foreign_database}


@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    with private_settings(tmp_path / "data", MAX_WORKERS="1") as private:
        yield private


def bad_store(settings: Settings, kind: str = "not a database") -> tuple[Path, str]:
    path = Path(settings.data_dir) / DB_FILENAME
    return path, BAD_STORES[kind](path)


def assert_one_line(output: str, prefix: str, path: Path, problem: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith(f"{prefix}: data error: {path}: "), lines[0]
    assert problem in lines[0]


@pytest.mark.parametrize("kind", list(BAD_STORES))
def test_a_worker_on_a_bad_store_exits_65_with_one_line(settings: Settings, kind: str) -> None:
    # Given DATA_DIR/events.sqlite3 that is not a featurestore store
    path, problem = bad_store(settings, kind)

    # When a compute worker starts on it
    done = subprocess.run(
        [sys.executable, "-m", "workers", "--id", "0"],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )

    # Then it exits EXIT_DATA with one line naming the file and what is wrong
    assert done.returncode == EXIT_DATA, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert_one_line(done.stderr, "featurestore-worker", path, problem)
    assert kind != "not a database" or path.read_bytes() == NOT_A_DATABASE


def test_a_worker_that_finds_its_store_damaged_answers_and_stops_with_one_line(
    tmp_path: Path,
) -> None:
    # Given a running worker whose store holds 10,000 entities, all in the main file
    stack = Stack(tmp_path / "data", workers=1, autorestart=False).start()
    try:
        with stack.client() as fs:
            events = [
                {"entity_id": f"d{i}", "timestamp": now_ms() - 1000, "value": 1.0}
                for i in range(10_000)
            ]
            fs.ingest(events)
            path = stack.data_dir / DB_FILENAME
            conn = sqlite3.connect(path)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()

            # When its pages are overwritten in place and a request reads them
            with path.open("r+b") as handle:
                handle.seek(2 * PAGE_SIZE)
                damaged = path.stat().st_size - 3 * PAGE_SIZE
                handle.write((bytes(range(256)) * (damaged // 256 + 1))[:damaged])
            with pytest.raises(ServiceError) as raised:
                fs.batch([f"d{i}" for i in range(0, 10_000, 7)])

        # Then the request is answered store_unavailable (corrupt), and the worker exits
        # EXIT_DATA with one line
        assert raised.value.code is Code.STORE_UNAVAILABLE
        assert "corrupt" in raised.value.message
        worker = stack.processes["worker-0"].process
        assert worker.wait(timeout=COMMAND_TIMEOUT_S) == EXIT_DATA
        last = stack.log_tail("worker-0", 1)
        assert last.startswith(
            f"featurestore-worker: data error: {path}: the SQLite file is damaged"
        )
        assert "Traceback" not in stack.log_tail("worker-0", 100)
    finally:
        stack.stop()


def test_cli_commands_on_a_non_database_print_one_line_and_exit_65(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a non-database file as the store, and good inputs for each command
    path, problem = bad_store(settings)
    events = tmp_path / "events.csv"
    events.write_text("entity_id,timestamp,value\nuser_1,1700000000000,1.5\n")
    rows = tmp_path / "rows.csv"
    rows.write_text("entity_id,timestamp\nuser_1,1700000000000\n")
    commands = {
        "ingest": ["ingest", str(events)],
        "features": ["features", "user_1"],
        "generate": ["generate", str(rows), "--output", str(tmp_path / "out.csv")],
        "delete": ["delete", "user_1"],
    }

    # When each runs (all at once)
    running = {
        name: subprocess.Popen(
            [*featurestore_command(), *argv, "--data-dir", settings.data_dir],
            env=service_env(settings),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in commands.items()
    }
    outputs = {name: run.communicate(timeout=COMMAND_TIMEOUT_S) for name, run in running.items()}

    # Then each prints one line `featurestore <command>: data error: ...`, exits EXIT_DATA
    for name, (stdout, stderr) in outputs.items():
        assert running[name].returncode == EXIT_DATA, (name, stderr)
        assert stdout == "" and "Traceback" not in stderr, (name, stderr)
        assert_one_line(stderr, f"featurestore {name}", path, problem)
    assert not (tmp_path / "out.csv").exists()
    assert path.read_bytes() == NOT_A_DATABASE


def test_serve_reports_a_bad_store_before_starting_supervisord(settings: Settings) -> None:
    path, problem = bad_store(settings, "foreign database")

    done = subprocess.run(
        [*featurestore_command(), "serve", "--data-dir", settings.data_dir],
        env=service_env(settings),
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == EXIT_DATA, done.stderr
    assert "Traceback" not in done.stderr
    assert_one_line(done.stderr, "featurestore serve", path, problem)
    assert not (Path(settings.data_dir) / "logs" / "supervisord.log").exists()


def test_supervisord_does_not_restart_a_worker_on_a_bad_store_forever(settings: Settings) -> None:
    # Given supervisord.conf started (by hand, not by serve) on a non-database store
    path, problem = bad_store(settings)
    supervised = Supervised(settings)
    try:
        # When the worker starts on it
        def final_state() -> dict | None:
            info = (supervised.info() or {}).get("worker-0")
            return info if info and info["statename"] in ("EXITED", "FATAL") else None

        info = wait_for(final_state, RUNNING_TIMEOUT_S, "worker-0 to stop for good", 0.1)

        # Then supervisord gave up after at most startretries + 1 tries (it exits within
        # startsecs: FATAL; later: EXITED, as EXIT_DATA is in `exitcodes`), each try exited
        # EXIT_DATA leaving one line in its log, and the other programs run on
        log = Path(settings.data_dir, "logs", "supervisord.log").read_text()
        exits = [line for line in log.splitlines() if "exited: worker-0" in line]
        assert 1 <= len(exits) <= STARTRETRIES + 1, log
        assert all(f"exit status {EXIT_DATA};" in line for line in exits), exits
        assert log.count("spawned: 'worker-0'") == len(exits)
        worker_log = Path(settings.data_dir, "logs", "worker-0.log").read_text()
        assert "Traceback" not in worker_log
        lines = worker_log.strip().splitlines()
        assert len(lines) == len(exits), worker_log
        for line in lines:
            assert_one_line(line, "featurestore-worker", path, problem)
        infos = supervised.info() or {}
        assert infos["broker"]["statename"] == "RUNNING", infos
        assert infos["worker-0"]["statename"] == info["statename"]
    finally:
        supervised.close()
