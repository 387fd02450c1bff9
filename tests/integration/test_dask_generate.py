"""`generate --engine dask` (SPEC §16) on a real LocalCluster of 2 worker processes, against
a real SQLite store: the output is the single-process output bit for bit (values, statuses,
row count and order) from the store and from an export; a task that fails once is retried,
a SIGKILLed worker is replaced, and the result is still exact; a failure that persists is one
error and no output; bad arguments are one clear message each.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import dask_support
import pandas as pd
import pytest
from dask_support import FailOnceEvents, GatedEvents, make_random_store, random_rows

from featurestore.cli import main as cli_main
from featurestore.config import VARIABLES, Settings
from featurestore.exitcodes import EXIT_FAILURE, EXIT_USAGE
from featurestore.offline.cluster import (
    WORKER_MALLOC_MMAP_THRESHOLD_BYTES,
    WORKER_MALLOC_TRIM_THRESHOLD_BYTES,
    dask_client,
)
from featurestore.offline.compute import generate_file, select_features
from featurestore.offline.dask_generate import generate_dask
from featurestore.offline.dask_tasks import StoreEvents
from featurestore.offline.export import partition_file
from featurestore.ops.launcher import wait_for
from featurestore.store.sqlite import open_store

ENTITIES = 240
SMALL_CHUNK = 2_000  # many chunks and pieces from a few thousand rows
NAMES = select_features("v1", None)
DEADLINE_S = 60.0
POLL_S = 0.05

cloudpickle.register_pickle_by_value(dask_support)  # the workers need not import it


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def client() -> Iterator:
    with dask_client(None, 2) as running:
        yield running


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("store")
    make_random_store(data, seed=5, entities=ENTITIES)
    return data


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return random_rows(seed=9, entities=ENTITIES, n=12_000)


@pytest.fixture(scope="module")
def rows_file(tmp_path_factory: pytest.TempPathFactory, rows: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("rows") / "rows.parquet"
    rows.to_parquet(path, row_group_size=3_000)
    return path


@pytest.fixture(scope="module")
def rows_dataset(tmp_path_factory: pytest.TempPathFactory, rows: pd.DataFrame) -> Path:
    """The rows in three Parquet files of unequal sizes (and a marker file to be skipped)."""
    root = tmp_path_factory.mktemp("rows") / "dataset"
    (root / "day=2").mkdir(parents=True)
    rows.iloc[:5_000].to_parquet(root / "a.parquet")
    rows.iloc[5_000:5_001].to_parquet(root / "b.parquet")
    rows.iloc[5_001:].to_parquet(root / "day=2" / "c.parquet", row_group_size=1_000)
    (root / "_SUCCESS").write_text("")
    return root


@pytest.fixture
def run(capsys, monkeypatch):
    """`featurestore ARGS` through the console script's `main()`, in this process."""

    def invoke(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for name in VARIABLES:
                patch.delenv(name, raising=False)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            capsys.readouterr()
            try:
                code = cli_main([str(a) for a in args])
            except SystemExit as exc:  # argparse
                code = exc.code
            out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return invoke


def settings_of(data_dir: Path) -> Settings:
    return Settings.from_env({"DATA_DIR": str(data_dir)})


def single_process(data_dir: Path, rows_path: Path, output: Path, **options) -> Path:
    store = open_store(data_dir)
    try:
        generate_file(store, rows_path, output, version="v1", names=NAMES, **options)
    finally:
        store.close()
    return output


def events_count(data_dir: Path) -> int:
    store = open_store(data_dir)
    try:
        return store.counts()["events"]
    finally:
        store.close()


def on_dask(client, events, data_dir: Path, rows_path: Path, output: Path, **options) -> Path:
    generate_dask(
        client,
        events,
        events_count(data_dir),
        rows_path,
        output,
        version="v1",
        names=NAMES,
        **options,
    )
    return output


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


# ------------------------------------------------------------------------------- tests
def test_output_file_is_the_single_process_file_byte_for_byte(
    client, data_dir: Path, rows_file: Path, rows: pd.DataFrame, tmp_path: Path
) -> None:
    # Given 12,600 rows (duplicates, unknown ids, rows before any event) in 7 pieces
    expected = single_process(data_dir, rows_file, tmp_path / "one.parquet", chunk_rows=SMALL_CHUNK)
    # When 16 bucket tasks compute them
    events = StoreEvents(settings_of(data_dir))
    advanced: list[int] = []
    got = on_dask(
        client,
        events,
        data_dir,
        rows_file,
        tmp_path / "dask.parquet",
        chunk_rows=SMALL_CHUNK,
        buckets=16,
        progress=advanced.append,
    )
    # Then the files are identical, and every input row is there once, in order, with a status
    assert got.read_bytes() == expected.read_bytes()
    frame = pd.read_parquet(got)
    assert len(frame) == len(rows)
    assert frame["entity_id"].tolist() == rows["entity_id"].tolist()
    assert frame["timestamp"].tolist() == rows["timestamp"].tolist()
    statuses = set(frame["status"])
    assert statuses == {"ok", "not_found"}
    assert (frame.loc[frame["entity_id"].str.startswith("nobody"), "status"] == "not_found").all()
    # and progress advanced once per bucket task, by its rows, to the total
    assert len(advanced) <= 16 and sum(advanced) == len(rows)


def test_rounds_of_pieces_give_the_same_bytes_file_and_dataset(
    client, data_dir: Path, rows_file: Path, tmp_path: Path
) -> None:
    # Given the 7 pieces of 12,600 rows run in rounds of at least 4,000 rows (4 rounds:
    # 2 pieces of 2,000 rows, three times, then the last piece of 600)
    expected = single_process(data_dir, rows_file, tmp_path / "one.parquet", chunk_rows=SMALL_CHUNK)
    events = StoreEvents(settings_of(data_dir))
    advanced: list[int] = []
    options = {"chunk_rows": SMALL_CHUNK, "buckets": 4, "round_rows": 4_000}
    got = on_dask(
        client,
        events,
        data_dir,
        rows_file,
        tmp_path / "dask.parquet",
        **options,
        progress=advanced.append,
    )
    dataset = on_dask(client, events, data_dir, rows_file, tmp_path / "dask-set", **options)
    # Then each bucket was computed once per round, and the output is the same bytes
    assert 4 < len(advanced) <= 4 * 4 and sum(advanced) == 12_600
    assert got.read_bytes() == expected.read_bytes()
    parts = sorted(p.name for p in dataset.glob("part-*.parquet"))
    assert len(parts) == 7
    pd.testing.assert_frame_equal(
        pd.read_parquet(dataset), pd.read_parquet(expected), check_exact=True
    )
    assert leftovers(tmp_path) == []


def test_cli_dataset_in_dataset_out_equals_one_process(
    client, data_dir: Path, rows_dataset: Path, run, tmp_path: Path
) -> None:
    common = ("--data-dir", data_dir)
    code, _, err = run("generate", rows_dataset, "-o", tmp_path / "one", *common)
    assert code == 0, err
    address = client.scheduler.address
    code, out, err = run(
        "generate",
        rows_dataset,
        "-o",
        tmp_path / "dask",
        *common,
        "--engine",
        "dask",
        "--scheduler",
        address,
    )
    assert code == 0, err
    assert "12600 rows" in out
    expected = pd.read_parquet(tmp_path / "one")
    got = pd.read_parquet(tmp_path / "dask")
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert len(got) == 12_600
    # a glob names the same dataset
    code, _, err = run(
        "generate",
        f"{rows_dataset}/**/*.parquet",
        "-o",
        tmp_path / "glob.parquet",
        *common,
        "--engine",
        "dask",
        "--scheduler",
        address,
    )
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "glob.parquet"), expected)
    assert leftovers(tmp_path) == []


def test_from_an_export_equals_from_the_store(
    client, data_dir: Path, rows_file: Path, run, tmp_path: Path
) -> None:
    expected = single_process(data_dir, rows_file, tmp_path / "one.parquet")
    exported = tmp_path / "events"
    code, out, err = run(
        "export", "events", "--output", exported, "--buckets", "4", "--data-dir", data_dir
    )
    assert code == 0, err
    assert f"{events_count(data_dir)} events" in out
    for buckets in ("2", "32"):  # coarser and finer than the export
        output = tmp_path / f"dask-{buckets}.parquet"
        code, _, err = run(
            "generate",
            rows_file,
            "-o",
            output,
            "--events",
            exported,
            "--engine",
            "dask",
            "--scheduler",
            client.scheduler.address,
            "--buckets",
            buckets,
        )
        assert code == 0, err
        assert output.read_bytes() == expected.read_bytes()
    code, _, err = run("generate", rows_file, "-o", tmp_path / "p.parquet", "--events", exported)
    assert code == 0, err
    assert (tmp_path / "p.parquet").read_bytes() == expected.read_bytes()


def test_tasks_read_a_postgresql_store_and_its_export_exactly(
    client, data_dir: Path, rows_file: Path, *, pg_url: str, run, tmp_path: Path
) -> None:
    # Given the events of the SQLite store, in a PostgreSQL store (STORE_URL) as well
    make_random_store(tmp_path / "unused", seed=5, entities=ENTITIES, store_url=pg_url)
    expected = single_process(data_dir, rows_file, tmp_path / "sqlite.parquet").read_bytes()
    common = ("--data-dir", tmp_path / "pg-data")
    env = {"STORE_URL": pg_url}
    dask = ("--engine", "dask", "--scheduler", client.scheduler.address, "--buckets", "8")
    # When one process, the cluster's tasks (each opening the store) and the cluster from an
    # export of that store compute the rows
    code, _, err = run("generate", rows_file, "-o", tmp_path / "one.parquet", *common, env=env)
    assert code == 0, err
    code, _, err = run("generate", rows_file, "-o", tmp_path / "a.parquet", *common, *dask, env=env)
    assert code == 0, err
    exported = tmp_path / "events"
    code, _, err = run("export", "events", "-o", exported, *common, env=env)
    assert code == 0, err
    code, _, err = run(
        "generate", rows_file, "-o", tmp_path / "b.parquet", *dask, "--events", exported
    )
    assert code == 0, err
    # Then every output is the single-process file of the SQLite store, byte for byte
    for name in ("one", "a", "b"):
        assert (tmp_path / f"{name}.parquet").read_bytes() == expected, name


def test_csv_rows_on_a_local_cluster_with_most_buckets_empty(
    data_dir: Path, rows: pd.DataFrame, run, tmp_path: Path
) -> None:
    few = rows[rows["entity_id"].isin(["acct-0001", "acct-0002", "acct-0005", "nobody-1"])]
    source = tmp_path / "rows.csv"
    few.to_csv(source, index=False)
    code, _, err = run("generate", source, "-o", tmp_path / "one.csv", "--data-dir", data_dir)
    assert code == 0, err
    code, _, err = run(
        "generate",
        source,
        "-o",
        tmp_path / "dask.csv",
        "--data-dir",
        data_dir,
        "--engine",
        "dask",
        "--workers",
        "1",
        "--buckets",
        "256",
    )
    assert code == 0, err
    assert (tmp_path / "dask.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_local_workers_keep_freed_memory_for_reuse(client) -> None:
    # Dask's own 64 KiB trim threshold would make every array a fresh mmap (page faults)
    wanted = {
        "MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC_MMAP_THRESHOLD_BYTES),
        "MALLOC_TRIM_THRESHOLD_": str(WORKER_MALLOC_TRIM_THRESHOLD_BYTES),
    }
    assert list(client.run(dask_support.malloc_environment).values()) == [wanted, wanted]


def test_a_task_that_fails_once_is_retried_and_exact(
    client, data_dir: Path, rows_file: Path, tmp_path: Path
) -> None:
    expected = single_process(data_dir, rows_file, tmp_path / "one.parquet")
    marker = tmp_path / "failed-once"
    events = FailOnceEvents(StoreEvents(settings_of(data_dir)), str(marker))
    got = on_dask(client, events, data_dir, rows_file, tmp_path / "dask.parquet", buckets=8)
    assert marker.exists()  # one attempt did fail
    assert got.read_bytes() == expected.read_bytes()


def test_a_worker_killed_mid_task_is_replaced_and_the_output_exact(
    client, data_dir: Path, rows_file: Path, tmp_path: Path
) -> None:
    expected = single_process(data_dir, rows_file, tmp_path / "one.parquet")
    gate = tmp_path / "gate"
    events = GatedEvents(StoreEvents(settings_of(data_dir)), str(gate))
    outcome: dict[str, object] = {}

    def generate() -> None:
        try:
            on_dask(client, events, data_dir, rows_file, tmp_path / "dask.parquet", buckets=8)
            outcome["ok"] = True
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=generate, daemon=True)
    worker.start()
    pid = wait_for_pid(gate)
    os.kill(pid, signal.SIGKILL)  # the worker process running a compute task
    worker.join(DEADLINE_S)
    assert not worker.is_alive()
    assert outcome == {"ok": True}
    assert (tmp_path / "dask.parquet").read_bytes() == expected.read_bytes()
    client.wait_for_workers(2, timeout=DEADLINE_S)  # the nanny restarted it


def wait_for_pid(gate: Path) -> int:
    def written() -> str:
        return gate.read_text() if gate.exists() else ""

    return int(wait_for(written, DEADLINE_S, "a task to reach the gate", POLL_S))


def test_a_persistent_failure_is_one_error_and_no_output(
    client, data_dir: Path, rows_file: Path, run, tmp_path: Path
) -> None:
    exported = tmp_path / "events"
    code, _, err = run("export", "events", "-o", exported, "--buckets", "4", "--data-dir", data_dir)
    assert code == 0, err
    broken = partition_file(exported, 1)
    broken.write_bytes(b"not parquet")
    output = tmp_path / "out"
    code, _, err = run(
        "generate",
        rows_file,
        "-o",
        output,
        "--events",
        exported,
        "--engine",
        "dask",
        "--scheduler",
        client.scheduler.address,
    )
    assert code == EXIT_FAILURE
    assert err.count("\n") == 1 and err.startswith("featurestore generate: ")
    assert str(broken) in err
    assert not output.exists()
    assert leftovers(tmp_path) == []


def test_a_bad_row_is_named_as_by_one_process_and_nothing_is_written(
    client, rows_dataset: Path, data_dir: Path, run, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in rows_dataset.rglob("*.parquet"):
        frame = pd.read_parquet(path).astype({"timestamp": str})
        if path.name == "c.parquet":
            frame.iloc[1234, frame.columns.get_loc("timestamp")] = "2025-02-30T00:00:00Z"
        frame.to_parquet(bad / path.name)
    common = ("--data-dir", data_dir)
    code, _, one = run("generate", bad, "-o", tmp_path / "one.parquet", *common)
    assert code == EXIT_FAILURE
    code, _, err = run(
        "generate",
        bad,
        "-o",
        tmp_path / "dask",
        *common,
        "--engine",
        "dask",
        "--scheduler",
        client.scheduler.address,
    )
    assert code == EXIT_FAILURE
    assert err == one
    assert "c.parquet: row 1235, column timestamp" in err
    assert not (tmp_path / "dask").exists() and not (tmp_path / "one.parquet").exists()
    assert leftovers(tmp_path) == []


def test_a_missing_column_is_named_as_by_one_process_and_nothing_is_written(
    client, rows: pd.DataFrame, data_dir: Path, run, tmp_path: Path
) -> None:
    # Given a dataset whose second file has no timestamp column (and, shuffled, the index
    # pandas stores beside the data: not a column of the file's rows)
    bad = tmp_path / "bad"
    bad.mkdir()
    rows.iloc[:4_000].to_parquet(bad / "a.parquet")
    shuffled = rows.iloc[4_000:].sample(frac=1.0, random_state=1)
    shuffled.drop(columns="timestamp").to_parquet(bad / "b.parquet")
    common = ("--data-dir", data_dir)
    code, _, one = run("generate", bad, "-o", tmp_path / "one.parquet", *common)
    assert code == EXIT_FAILURE
    # When the cluster computes it
    code, _, err = run(
        "generate",
        bad,
        "-o",
        tmp_path / "dask",
        *common,
        "--engine",
        "dask",
        "--scheduler",
        client.scheduler.address,
    )
    # Then it is the same one line, naming the file and the column, and there is no output
    assert code == EXIT_FAILURE
    assert err == one
    assert err.count("\n") == 1 and "b.parquet" in err and "timestamp" in err
    assert err.endswith("missing column(s) timestamp; found entity_id\n")
    assert not (tmp_path / "dask").exists() and not (tmp_path / "one.parquet").exists()
    assert leftovers(tmp_path) == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_arguments_are_one_clear_message_each(
    client, data_dir: Path, rows_file: Path, run, tmp_path: Path
) -> None:
    out = tmp_path / "out.parquet"
    dask = ("--data-dir", data_dir, "--engine", "dask")
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    code, _, err = run("generate", rows_file, "-o", out, *dask, "--scheduler", nowhere)
    assert code == EXIT_FAILURE
    assert err.startswith(f"featurestore generate: cannot reach the Dask scheduler at {nowhere}")
    assert err.count("\n") == 1
    code, _, err = run("generate", tmp_path / "missing.parquet", "-o", out, *dask, "--workers", "1")
    assert (code, err) == (
        EXIT_FAILURE,
        f"featurestore generate: {tmp_path}/missing.parquet: no such file\n",
    )
    code, _, err = run(
        "generate",
        rows_file,
        "-o",
        out,
        *dask,
        "--workers",
        "2",
        "--scheduler",
        client.scheduler.address,
    )
    assert code == EXIT_USAGE
    assert "argument --scheduler: not allowed with argument --workers" in err
    code, _, err = run("generate", rows_file, "-o", out, "--data-dir", data_dir, "--workers", "2")
    assert (code, err) == (EXIT_FAILURE, "featurestore generate: --workers needs --engine dask\n")
    code, _, err = run("generate", rows_file, "-o", out, *dask, "--buckets", "6", "--workers", "1")
    assert code == EXIT_FAILURE and "power of two" in err
    assert not out.exists()


PAYMENTS = """
[fields.value]
kind = "numeric"
required = true

[fields.category]
kind = "categorical"

[fields.amount]
kind = "numeric"

[fields.merchant]
kind = "categorical"

[versions.pay1]
[[versions.pay1.features]]
name = "food_count_7d"
op = "count"
window = "7d"
where = { merchant = "food" }

[[versions.pay1.features]]
name = "amount_mean_30d"
op = "mean"
field = "amount"
window = "30d"

[[versions.pay1.features]]
name = "amount_decayed"
op = "decayed_sum"
field = "amount"
half_life = "3d"

[[versions.pay1.features]]
name = "last_merchant"
op = "last_label"
field = "merchant"

[[versions.pay1.features]]
name = "merchants"
op = "distinct_count"
field = "merchant"
"""


def test_declared_fields_from_the_store_and_an_export_are_exact(
    client, rows_file: Path, run, tmp_path: Path
) -> None:
    # Given a store of events with two more fields than the default (some events lack them)
    definitions = tmp_path / "payments.toml"
    definitions.write_text(PAYMENTS)
    env = {"FEATURES_FILE": str(definitions)}
    data = tmp_path / "data"
    make_random_store(data, seed=8, entities=ENTITIES, definitions=definitions)
    common = ("--data-dir", data, "--version", "pay1")
    code, _, err = run("generate", rows_file, "-o", tmp_path / "one.parquet", *common, env=env)
    assert code == 0, err
    expected = (tmp_path / "one.parquet").read_bytes()
    frame = pd.read_parquet(tmp_path / "one.parquet")
    assert frame["amount_mean_30d"].notna().any() and frame["food_count_7d"].gt(0).any()
    # When the cluster reads the store, or an export of it
    dask = ("--engine", "dask", "--scheduler", client.scheduler.address, "--buckets", "8")
    code, _, err = run("generate", rows_file, "-o", tmp_path / "a.parquet", *common, *dask, env=env)
    assert code == 0, err
    code, _, err = run("export", "events", "-o", tmp_path / "events", "--data-dir", data, env=env)
    assert code == 0, err
    code, _, err = run(
        "generate",
        rows_file,
        "-o",
        tmp_path / "b.parquet",
        *common,
        *dask,
        "--events",
        tmp_path / "events",
        env=env,
    )
    assert code == 0, err
    # Then both are the single-process file
    assert (tmp_path / "a.parquet").read_bytes() == expected
    assert (tmp_path / "b.parquet").read_bytes() == expected
