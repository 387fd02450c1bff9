"""The offline commands against a PostgreSQL store (SPEC §15): `demo`, `ingest`, `features`,
`generate` and `delete` with STORE_URL give exactly what they give on SQLite, a store of
a newer schema stops a command with one line and EXIT_DATA, and `definitions forget` waits
for every host's service to stop, then forgets for every host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import psycopg
import pytest
from store_targets import Target

from featurestore.cli import main as cli_main
from featurestore.config import VARIABLES
from featurestore.exitcodes import EXIT_DATA, EXIT_FAILURE, EXIT_NOT_FOUND
from featurestore.offline.demo import ENTITY_LIST

CLI_TIMEOUT_S = 120
END = "2026-01-01T00:00:00Z"
AS_OF = "2025-12-15T12:00:00Z"


@pytest.fixture
def run(capsys, monkeypatch):
    """`featurestore ARGS` through the console script's `main()`, in this process."""

    def run(*args: Any, env: dict[str, str]) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for name in VARIABLES:
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            capsys.readouterr()
            code = cli_main([str(a) for a in args])
            out, err = capsys.readouterr()
        return code, out, err

    return run


def session(run, env: dict[str, str], tmp: Path) -> dict[str, Any]:
    """Every offline command once; what each printed or wrote."""
    events = tmp / "events.csv"
    events.write_text(
        "entity_id,timestamp,value,category,event_id\n"
        "user_00003,2025-12-20T00:00:00Z,99.5,brand_new,f-1\n"
        "user_00003,2025-12-21T00:00:00Z,-4,,f-2\n"
        "newcomer,2025-12-22T00:00:00Z,1,cat_a,f-3\n"
    )
    rows = tmp / "rows.csv"
    pd.DataFrame(
        {
            "entity_id": ["user_00003", "user_00004", "newcomer", "ghost"],
            "timestamp": ["2025-12-21T12:00:00Z", AS_OF, "2025-12-30T00:00:00Z", AS_OF],
        }
    ).to_csv(rows, index=False)
    out: dict[str, Any] = {}
    code, printed, err = run("demo", "--entities", 40, "--seed", 5, "--end", END, env=env)
    assert code == 0, err
    out["demo"] = printed.split("; ids in")[0]
    out["listing"] = (Path(env["DATA_DIR"]) / ENTITY_LIST).read_text()
    for attempt in ("first", "again"):  # again: every event id is a duplicate
        code, printed, err = run("ingest", events, env=env)
        assert code == 0, err
        out[f"ingest_{attempt}"] = printed.split(" in ")[0]  # not the timing
    code, printed, err = run("features", "user_00003", "--as-of", AS_OF, env=env)
    assert code == 0, err
    out["features"] = json.loads(printed)
    generated = tmp / "training.csv"
    code, _, err = run("generate", rows, "--output", generated, "--version", "v2", env=env)
    assert code == 0, err
    out["generate"] = generated.read_text()
    code, printed, err = run("delete", "user_00004", env=env)
    assert code == 0, err
    out["delete"] = json.loads(printed)
    code, _, err = run("features", "user_00004", env=env)
    out["after_delete"] = (code, err.split(":")[0])
    return out


def test_offline_commands_answer_the_same_on_postgresql_as_on_sqlite(
    tmp_path: Path, pg_url: str, run
) -> None:
    target = Target.make("postgresql", tmp_path / "pg", pg_url)
    target.reset()
    sqlite_env = {"DATA_DIR": str(tmp_path / "sqlite")}
    pg_env = {"DATA_DIR": str(tmp_path / "pg"), "STORE_URL": pg_url}
    (tmp_path / "work_s").mkdir()
    (tmp_path / "work_p").mkdir()

    on_sqlite = session(run, sqlite_env, tmp_path / "work_s")
    on_postgresql = session(run, pg_env, tmp_path / "work_p")

    assert on_postgresql == on_sqlite
    assert on_postgresql["after_delete"][0] == EXIT_NOT_FOUND
    assert on_postgresql["ingest_first"] == "ingest: 3 rows, 3 stored, 0 duplicates, 2 entities"
    assert on_postgresql["ingest_again"].startswith("ingest: 3 rows, 0 stored, 3 duplicates")
    assert not (tmp_path / "pg" / "events.sqlite3").exists()  # nothing went to SQLite
    assert target.sql("SELECT count(*) FROM changes")[0][0] >= 3  # every write logged


def test_a_newer_schema_stops_a_command_with_one_line_and_the_data_exit_code(
    tmp_path: Path, pg_url: str
) -> None:
    target = Target.make("postgresql", tmp_path, pg_url)
    target.reset()
    target.open().close()
    target.sql("UPDATE meta SET value = value + 1 WHERE key = 'schema_version'")
    script = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({"DATA_DIR": str(tmp_path), "STORE_URL": pg_url})
    done = subprocess.run(
        [script, "features", "user_00001"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert done.returncode == EXIT_DATA
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("featurestore features: data error: postgresql://")
    assert "newer than this featurestore knows" in line


def test_definitions_forget_on_a_shared_store_waits_for_every_hosts_service(
    tmp_path: Path, pg_url: str, run
) -> None:
    # Given a version served from the PostgreSQL store, and a worker of some host connected
    target = Target.make("postgresql", tmp_path, pg_url)
    target.reset()
    store = target.open()
    try:
        store.record_versions({"pay1": "a" * 64})
    finally:
        store.close()
    env = {"DATA_DIR": str(tmp_path), "STORE_URL": pg_url}
    with psycopg.connect(pg_url, application_name="featurestore-worker-3"):
        # When the version is forgotten, it is refused naming the connected process
        code, out, err = run("definitions", "forget", "pay1", env=env)
    assert code == EXIT_FAILURE and not out
    (line,) = err.strip().splitlines()
    assert line.startswith("featurestore definitions: a service is using postgresql://")
    assert "featurestore-worker-3" in line and "stop every host's service first" in line
    assert target.sql("SELECT name FROM versions") == [("pay1",)]

    # Then with every service stopped it is forgotten, logged as a change of every entity
    code, out, err = run("definitions", "forget", "pay1", env=env)
    assert code == 0, err
    assert "version 'pay1' forgotten" in out
    assert target.sql("SELECT name FROM versions") == []
    assert target.sql("SELECT entity_ids FROM changes") == [(None,)]
    code, _, err = run("definitions", "forget", "pay1", env=env)
    assert code == EXIT_FAILURE
    assert "'pay1' was never served from postgresql://" in err
    assert target.sql("SELECT count(*) FROM changes") == [(1,)]  # nothing logged
