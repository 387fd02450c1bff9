"""The command line on real files (SPEC §3, §5 historical, §8): `featurestore ingest` of CSV,
Parquet and JSON Lines, bad files that store nothing, `demo`, `features`, `delete`, and
`generate` — including a point-in-time test that fails if later events leak into a row.

Every command runs as a subprocess of the installed console script, with a timeout.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.cli import main as cli_main
from featurestore.config import VARIABLES
from featurestore.exitcodes import EXIT_FAILURE, EXIT_NOT_FOUND
from featurestore.features.engine import compute
from featurestore.features.registry import feature_set
from featurestore.features.vectors import VectorView
from featurestore.offline import files
from featurestore.offline.compute import generate_file
from featurestore.offline.demo import ENTITY_LIST
from featurestore.store.batch import NO_CATEGORY
from featurestore.store.columns import EventColumns
from featurestore.store.sqlite import SqliteEventStore
from featurestore.timestamps import now_ms

CLI_TIMEOUT_S = 120
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z (a Monday)
HOUR = 3_600_000
DAY = 86_400_000


# ---------------------------------------------------------------------------------- helpers
def _featurestore() -> str:
    found = shutil.which("featurestore") or str(Path(sys.executable).parent / "featurestore")
    assert Path(found).exists(), "the featurestore console script is not installed"
    return found


def cli(*args: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run `featurestore ARGS` with a clean environment (no inherited settings)."""
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    clean.update(env or {})
    return subprocess.run(
        [_featurestore(), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=clean,
        check=False,
    )


@dataclass(frozen=True)
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def in_process(capsys, monkeypatch):
    """`featurestore ARGS` through the same `main()` as the console script, in this process:
    interpreter start-up costs ~0.5 s a run, so only one case of each kind pays it."""

    def run(*args: Any, env: dict[str, str] | None = None) -> Done:
        with monkeypatch.context() as patch:
            for name in VARIABLES:
                patch.delenv(name, raising=False)
            for name, value in (env or {}).items():
                patch.setenv(name, value)
            capsys.readouterr()
            code = cli_main([str(a) for a in args])
            out, err = capsys.readouterr()
        return Done(code, out, err)

    return run


def ok(done: subprocess.CompletedProcess | Done) -> str:
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout


def iso(ms: int, variant: int = 0) -> str:
    """The same instant as an ISO-8601 string in one of several accepted spellings."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    frac = f"{moment.microsecond // 1000:03d}"
    if variant == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "Z"
    if variant == 1:
        shifted = moment + timedelta(hours=2)
        return shifted.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "+02:00"
    if variant == 2:  # no offset: UTC
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + frac
    if variant == 3:  # digits below the millisecond are floored
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "987Z"
    shifted = moment - timedelta(hours=5, minutes=30)
    return shifted.strftime("%Y-%m-%dT%H:%M:%S.") + frac + "-05:30"


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """Write `frame` as CSV (empty cell for None), Parquet or JSON Lines, by extension."""
    if path.suffix == ".csv":
        frame.to_csv(path, index=False, lineterminator="\n")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    else:
        with path.open("w", encoding="utf-8") as handle:
            for record in frame.to_dict(orient="records"):
                clean = {k: (None if _is_missing(v) else _plain(v)) for k, v in record.items()}
                handle.write(json.dumps(clean, ensure_ascii=False) + "\n")
    return path


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def open_store(data_dir: Path) -> SqliteEventStore:
    return SqliteEventStore(data_dir)


def snapshot(data_dir: Path) -> dict[str, Any]:
    """Everything a store holds, comparable with ==."""
    store = open_store(data_dir)
    try:
        ids = store.entity_ids()
        batch = store.read(ids)
        return {
            "counts": store.counts(),
            "categories": store.category_names(),
            "entities": ids,
            "offsets": batch.offsets.tolist(),
            "ts": batch.ts.tolist(),
            "seq": batch.seq.tolist(),
            "value": batch.value.tolist(),
            "category": batch.category.tolist(),
        }
    finally:
        store.close()


def assert_empty_store(data_dir: Path) -> None:
    if not data_dir.exists():
        return
    store = open_store(data_dir)
    try:
        assert store.counts() == {"entities": 0, "events": 0, "categories": 0}
        rows = store._conn.execute("SELECT count(*) FROM requests").fetchone()[0]
        ids = store._conn.execute("SELECT count(*) FROM event_ids").fetchone()[0]
        assert (rows, ids) == (0, 0)
    finally:
        store.close()


# ------------------------------------------------------------------------ ingest: good files
# entity, epoch ms, value, category, event id — unsorted, with equal timestamps, no-category
# rows, a multibyte id and a category that needs CSV quoting.
EVENTS = [
    ("alice", T0 + HOUR, 10.5, "food", "e1"),
    ("bob", T0 + 1000, -2.0, None, "e2"),
    ("alice", T0, 7.25, "travel", "e3"),
    ("zoë café", T0 + 5, 0.0, "food", "e4"),
    ("alice", T0 + HOUR, 11.0, None, "e5"),
    ("bob", T0 + 1000, 3.5, "a,b", "e6"),
    ("bob", T0 + DAY + 123, 1e6, "rent", "e7"),
    ("zoë café", T0 + 5, -0.5, None, "e8"),
    ("alice", T0 + 2 * HOUR + 999, 1e-3, "travel", "e9"),
]


def events_frame(stamps: str, optional: tuple[str, ...]) -> pd.DataFrame:
    data: dict[str, list] = {
        "entity_id": [e[0] for e in EVENTS],
        "timestamp": (
            [e[1] for e in EVENTS]
            if stamps == "ms"
            else [iso(e[1], i % 5) for i, e in enumerate(EVENTS)]
        ),
        "value": [e[2] for e in EVENTS],
    }
    if "category" in optional:
        data["category"] = [e[3] for e in EVENTS]
    if "event_id" in optional:
        data["event_id"] = [e[4] for e in EVENTS]
    return pd.DataFrame(data)


def expected_store(with_categories: bool) -> dict[str, Any]:
    """What ingesting EVENTS into an empty store must give (sequence = row order + 1)."""
    labels: dict[str, int] = {}
    if with_categories:
        for e in EVENTS:
            if e[3] is not None:
                labels.setdefault(e[3], len(labels))
    entities = sorted({e[0] for e in EVENTS})
    out: dict[str, list] = {"ts": [], "seq": [], "value": [], "category": [], "offsets": [0]}
    for entity in entities:
        mine = sorted(
            ((e[1], i + 1, e[2], e[3]) for i, e in enumerate(EVENTS) if e[0] == entity),
        )
        out["ts"] += [m[0] for m in mine]
        out["seq"] += [m[1] for m in mine]
        out["value"] += [m[2] for m in mine]
        out["category"] += [
            labels[m[3]] if with_categories and m[3] is not None else NO_CATEGORY for m in mine
        ]
        out["offsets"].append(out["offsets"][-1] + len(mine))
    return {
        "counts": {"entities": len(entities), "events": len(EVENTS), "categories": len(labels)},
        "categories": list(labels),
        "entities": entities,
        **out,
    }


GOOD_FILES = [
    pytest.param(("csv", "ms", ("category", "event_id")), id="csv-ms-category-event_id"),
    pytest.param(("csv", "iso", ()), id="csv-iso-bare"),
    pytest.param(("parquet", "ms", ("category",)), id="parquet-ms-category"),
    pytest.param(("parquet", "iso", ("event_id",)), id="parquet-iso-event_id"),
    pytest.param(("jsonl", "ms", ("category",)), id="jsonl-ms-category"),
    pytest.param(("jsonl", "iso", ("category", "event_id")), id="jsonl-iso-category-event_id"),
]


@pytest.mark.parametrize("case", GOOD_FILES)
def test_ingest_good_file_and_again(tmp_path: Path, in_process, case: tuple) -> None:
    kind, stamps, optional = case
    # Given an event file in one of the accepted shapes
    path = write_table(tmp_path / f"events.{kind}", events_frame(stamps, optional))
    data_dir = tmp_path / "data"
    # When it is ingested
    out = ok(cli("ingest", path, "--data-dir", data_dir))
    # Then every row is stored once, in (ts, row order), with labels by first appearance
    assert out.startswith(f"ingest: {len(EVENTS)} rows, {len(EVENTS)} stored, 0 duplicates, 3 ")
    first = snapshot(data_dir)
    assert first == expected_store("category" in optional)
    # And ingesting the same file again (with or without event ids) stores nothing twice
    ok(in_process("ingest", path, "--data-dir", data_dir))
    assert snapshot(data_dir) == first


def test_same_event_ids_in_another_file_are_duplicates(tmp_path: Path, in_process) -> None:
    data_dir = tmp_path / "data"
    first_file = write_table(tmp_path / "a.csv", events_frame("ms", ("event_id",)))
    ok(in_process("ingest", first_file, "--data-dir", data_dir))
    first = snapshot(data_dir)
    other = write_table(tmp_path / "b.parquet", events_frame("iso", ("event_id", "category")))
    out = ok(cli("ingest", other, "--data-dir", data_dir))
    assert out.startswith(f"ingest: {len(EVENTS)} rows, 0 stored, {len(EVENTS)} duplicates, 0 ")
    assert snapshot(data_dir) == first  # not even a category label was taken


# ------------------------------------------------------------------------- ingest: bad files
def _csv(text: str):
    def make(path: Path) -> Path:
        path.write_text(text, encoding="utf-8")
        return path

    return make


def _frame(frame_data: dict):
    def make(path: Path) -> Path:
        if path.suffix == ".parquet":
            pq.write_table(pa.table(frame_data), path)
        else:
            write_table(path, pd.DataFrame(frame_data))
        return path

    return make


def _raw(text: str):
    def make(path: Path) -> Path:
        path.write_text(text, encoding="utf-8")
        return path

    return make


def _jsonl(*records: dict):
    return _raw("".join(json.dumps(r) + "\n" for r in records))


_HEADER = "entity_id,timestamp,value\n"
_FAR_FUTURE = now_ms() + 10 * DAY

# fmt: off
BAD_FILES = [
    ("missing_column.csv", _csv("entity_id,timestamp\na,1\n"),
     "missing column(s) value; found entity_id, timestamp"),
    ("missing_column.jsonl", _jsonl({"entity_id": "a", "timestamp": T0}),
     "missing column(s) value; found entity_id, timestamp"),
    ("broken.jsonl", _raw('{"entity_id": "a", "timestamp": 1, "value": 1}\n{"entity_id": \n'),
     "not a readable JSON Lines file"),
    ("text_value.csv", _csv(_HEADER + f"a,{T0},1\nb,{T0},2\nc,{T0},abc\n"),
     "row 3, column value: must be a finite number"),
    ("empty_value.csv", _csv(_HEADER + f"a,{T0},1\nb,{T0},\n"), "row 2, column value: is required"),
    ("inf_value.parquet", _frame({"entity_id": ["a", "b"], "timestamp": [T0, T0],
                                  "value": [1.0, float("-inf")]}),
     "row 2, column value: must be a finite number"),
    ("null_value.parquet", _frame({"entity_id": ["a", "b"], "timestamp": [T0, T0],
                                   "value": [1.0, None]}),
     "row 2, column value: is required"),
    ("bool_value.parquet", _frame({"entity_id": ["a"], "timestamp": [T0], "value": [True]}),
     "row 1, column value: must be a number, not a boolean"),
    ("bool_value.jsonl", _jsonl({"entity_id": "a", "timestamp": T0, "value": 1.5},
                                {"entity_id": "b", "timestamp": T0, "value": True}),
     "row 2, column value: must be a number, not a boolean"),
    ("fractional_ts.csv", _csv(_HEADER + f"a,{T0},1\nb,{T0}.5,2\n"),
     "row 2, column timestamp: epoch milliseconds must be an integer in [0, 2^53)"),
    ("fractional_ts.parquet", _frame({"entity_id": ["a", "b"], "timestamp": [float(T0), T0 + 0.5],
                                      "value": [1.0, 2.0]}),
     "row 2, column timestamp: epoch milliseconds must be an integer in [0, 2^53)"),
    ("negative_ts.jsonl", _jsonl({"entity_id": "a", "timestamp": -5, "value": 1}),
     "row 1, column timestamp: epoch milliseconds must be an integer in [0, 2^53)"),
    ("text_in_ms_column.csv", _csv(_HEADER + f"a,{T0},1\nb,{T0},2\nc,soon,3\n"),
     "row 3, column timestamp: not epoch milliseconds"),
    ("impossible_date.csv", _csv(_HEADER + "a,2024-02-28T00:00:00Z,1\nb,2024-02-30T00:00:00Z,2\n"),
     "row 2, column timestamp: not an ISO-8601 timestamp"),
    ("future.csv", _csv(_HEADER + f"a,{T0},1\nb,{_FAR_FUTURE},2\n"),
     "row 2, column timestamp: is too far in the future"),
    ("empty.csv", _raw(""), "the file is empty"),
    ("empty.parquet", _raw(""), "the file is empty"),
    ("header_only.csv", _csv(_HEADER), "the file has a header but no rows"),
    ("header_only.parquet", _frame({"entity_id": pa.array([], pa.string()),
                                    "timestamp": pa.array([], pa.int64()),
                                    "value": pa.array([], pa.float64())}),
     "the file has a header but no rows"),
    ("events.txt", _csv(_HEADER + f"a,{T0},1\n"),
     "unknown file type '.txt' (use .csv, .parquet or .jsonl)"),
    ("events.json", _raw(f'[{{"entity_id": "a", "timestamp": {T0}, "value": 1}}]'),
     "unknown file type '.json' (use .csv, .parquet or .jsonl)"),  # output only
    ("control.csv", _csv(_HEADER + f"a,{T0},1\n\"b\x01c\",{T0},2\n"),
     "row 2, column entity_id: contains a control character (U+0000-U+001F)"),
    ("newline_id.jsonl", _jsonl({"entity_id": "a", "timestamp": T0, "value": 1},
                                {"entity_id": "b\nc", "timestamp": T0, "value": 1}),
     "row 2, column entity_id: contains a control character (U+0000-U+001F)"),
    ("control_category.parquet", _frame({"entity_id": ["a", "b"], "timestamp": [T0, T0],
                                         "value": [1.0, 2.0], "category": [None, "x\x07"]}),
     "row 2, column category: contains a control character (U+0000-U+001F)"),
    ("long_id.csv", _csv(_HEADER + f"a,{T0},1\n{'x' * 257},{T0},2\n"),
     "row 2, column entity_id: must be 1-256 UTF-8 bytes"),
    ("missing_id.csv", _csv(_HEADER + f"a,{T0},1\n,{T0},2\n"),
     "row 2, column entity_id: is required"),
    ("numeric_id.parquet", _frame({"entity_id": [1, 2], "timestamp": [T0, T0],
                                   "value": [1.0, 2.0]}),
     "row 1, column entity_id: must be text"),
    ("mixed_id.jsonl", _jsonl({"entity_id": "a", "timestamp": T0, "value": 1},
                              {"entity_id": "b", "timestamp": T0, "value": 1},
                              {"entity_id": 7, "timestamp": T0, "value": 1}),
     "row 3, column entity_id: must be text"),
    ("corrupt.parquet", _raw("this is not parquet"), "not a readable Parquet file"),
]
# fmt: on
SUBPROCESS_BAD_FILES = {"text_value.csv", "bool_value.parquet", "mixed_id.jsonl", "empty.csv"}


@pytest.mark.parametrize(
    ("name", "make", "message"), [pytest.param(*case, id=case[0]) for case in BAD_FILES]
)
def test_bad_file_is_refused_and_stores_nothing(
    tmp_path: Path, in_process, name: str, make, message: str
) -> None:
    path = make(tmp_path / name)
    data_dir = tmp_path / "data"
    run = cli if name in SUBPROCESS_BAD_FILES else in_process
    done = run("ingest", path, "--data-dir", data_dir)
    assert done.returncode == EXIT_FAILURE
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"featurestore ingest: {path}: ")
    assert message in done.stderr
    if "not a readable" not in message:
        assert "not a readable" not in done.stderr
    assert "(nothing was stored)" in done.stderr
    assert done.stdout == ""
    assert_empty_store(data_dir)


def test_missing_file_is_refused(tmp_path: Path, in_process) -> None:
    for name in ("absent.csv", "absent.parquet", "absent.jsonl"):
        done = in_process("ingest", tmp_path / name, "--data-dir", tmp_path / "data")
        assert done.returncode == EXIT_FAILURE, name
        assert f"{tmp_path / name}: no such file" in done.stderr
        assert "Traceback" not in done.stderr


def test_bad_row_in_a_later_chunk_stores_nothing_at_all(tmp_path: Path) -> None:
    # Given a Parquet file over one chunk long whose only bad row is in the second chunk
    rows = files.CHUNK_ROWS + 50_000
    bad_row = files.CHUNK_ROWS + 20_000  # 0-based
    values = np.arange(rows, dtype=np.float64)
    values[bad_row] = np.inf
    table = pa.table(
        {
            "entity_id": pa.array([f"big_{i % 100}" for i in range(rows)]),
            "timestamp": pa.array(T0 + np.arange(rows, dtype=np.int64)),
            "value": pa.array(values),
            "event_id": pa.array([f"ev{i}" for i in range(rows)]),
        }
    )
    path = tmp_path / "big.parquet"
    pq.write_table(table, path)
    assert pq.ParquetFile(path).metadata.num_rows > files.CHUNK_ROWS
    data_dir = tmp_path / "data"
    # When it is ingested
    done = cli("ingest", path, "--data-dir", data_dir)
    # Then the error names the row (1-based) and nothing of the first chunk was stored
    assert done.returncode == EXIT_FAILURE
    assert f"row {bad_row + 1}, column value: must be a finite number" in done.stderr
    assert_empty_store(data_dir)


# ------------------------------------------------------------------------------------- demo
DEMO_ARGS = ("--entities", "50", "--seed", "1", "--end", "2024-06-01T00:00:00Z")
DEMO_END = 1_717_200_000_000


def test_demo_is_deterministic_and_realistic(tmp_path: Path, in_process) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    out = ok(cli("demo", *DEMO_ARGS, "--data-dir", one))
    ok(cli("demo", *DEMO_ARGS, "--data-dir", two))
    assert out.startswith("demo: 50 entities, ")
    first, second = snapshot(one), snapshot(two)
    assert first == second
    assert (one / ENTITY_LIST).read_bytes() == (two / ENTITY_LIST).read_bytes()

    assert 8 <= len(first["categories"]) <= 12
    assert first["counts"]["entities"] == 50
    ts = np.asarray(first["ts"])
    assert ts.max() <= DEMO_END and ts.min() >= DEMO_END - 90 * DAY
    assert (np.asarray(first["category"]) == NO_CATEGORY).any()

    listing = pd.read_csv(one / ENTITY_LIST, dtype={"entity_id": str})
    assert list(listing.columns) == ["entity_id", "n_events"]
    stored = dict(zip(first["entities"], np.diff(first["offsets"]).tolist(), strict=True))
    listed = dict(zip(listing["entity_id"], listing["n_events"].tolist(), strict=True))
    assert len(listed) == len(listing)  # no id listed twice
    assert set(stored) <= set(listed)
    assert {e: n for e, n in listed.items() if n > 0} == stored
    missing = [e for e, n in listed.items() if n == 0]
    assert 1 <= len(missing) <= 10 and not set(missing) & set(stored)
    assert 1 in stored.values()  # some entity with a single event
    assert sum(stored.values()) == first["counts"]["events"]

    # Running it again into the same directory stores nothing twice.
    ok(in_process("demo", *DEMO_ARGS, "--data-dir", one))
    assert snapshot(one) == first


# ------------------------------------------------------------- a small store with known data
def _event_list() -> list[tuple[str, int, float, str | None]]:
    """Events of two entities in time order. Later events differ sharply from earlier ones, so
    any leak of a later event into an earlier row changes many features."""
    a = [
        (T0 + 0 * DAY + 9 * HOUR, 10.0, "x"),
        (T0 + 1 * DAY + 10 * HOUR, 12.0, "x"),
        (T0 + 2 * DAY + 11 * HOUR, 11.0, None),
        (T0 + 2 * DAY + 11 * HOUR, 13.0, "y"),  # same time, later in sequence
        (T0 + 5 * DAY + 20 * HOUR, 15.0, "x"),
        (T0 + 40 * DAY + 8 * HOUR, 400.0, "z"),
        (T0 + 41 * DAY + 8 * HOUR, -300.0, "y"),
    ]
    b = [
        (T0 + 1 * DAY, 5.0, "y"),
        (T0 + 3 * DAY, 5.0, "y"),
        (T0 + 45 * DAY, 1000.0, "w"),
    ]
    out = [("A", *e) for e in a] + [("B", *e) for e in b]
    return sorted(out, key=lambda e: e[1])  # stable: equal times keep their order


EVENT_LIST = _event_list()


def _columns(events: list[tuple[str, int, float, str | None]]) -> EventColumns:
    return EventColumns(
        entity_id=[e[0] for e in events],
        ts=np.array([e[1] for e in events], dtype=np.int64),
        value=np.array([e[2] for e in events], dtype=np.float64),
        category=[e[3] for e in events],
        event_id=[None] * len(events),
    )


@pytest.fixture
def small_store(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    store = open_store(data_dir)
    try:
        store.ingest(_columns(EVENT_LIST))
    finally:
        store.close()
    return data_dir


class PrefixOracle:
    """Features as of T computed on a separate store holding ONLY the events with ts <= T."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache: dict[tuple[str, int, str], dict | None] = {}

    def __call__(self, entity: str, as_of: int, version: str) -> dict | None:
        key = (entity, as_of, version)
        if key not in self.cache:
            self.cache[key] = self._compute(entity, as_of, version)
        return self.cache[key]

    def _compute(self, entity: str, as_of: int, version: str) -> dict | None:
        prefix = [e for e in EVENT_LIST if e[1] <= as_of]
        store = open_store(self.root / f"prefix_{as_of}")
        try:
            if prefix and store.counts()["events"] == 0:
                store.ingest(_columns(prefix))
            batch = store.read([entity])
            matrix = compute(
                batch, np.zeros(1, dtype=np.int64), as_of, version, store.category_names()
            )
        finally:
            store.close()
        if not matrix.found[0]:
            return None
        return VectorView(version).to_dict(matrix.values[0])


@pytest.fixture
def oracle(tmp_path: Path) -> PrefixOracle:
    return PrefixOracle(tmp_path / "oracle")


def assert_same_features(actual: dict, expected: dict, version: str) -> None:
    types = {f.name: f.type for f in feature_set(version).features}
    assert list(actual) == list(expected)
    for name, want in expected.items():
        got = actual[name]
        if want is None:
            assert got is None, name
        elif types[name] == "int":
            assert type(got) is int and got == want, (name, got, want)
        else:
            assert type(got) is float, (name, got)
            assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9), (name, got, want)


# -------------------------------------------------------------------- features and delete
def test_features_prints_json_with_ints_for_int_features(
    small_store: Path, oracle: PrefixOracle
) -> None:
    as_of = T0 + 3 * DAY
    out = ok(cli("features", "A", "--as-of", iso(as_of), "--data-dir", small_store))
    body = json.loads(out)
    assert set(body) == {"entity_id", "features", "version", "timestamp"}
    assert (body["entity_id"], body["version"], body["timestamp"]) == ("A", "v1", as_of)
    assert list(body["features"]) == feature_set("v1").names
    assert_same_features(body["features"], oracle("A", as_of, "v1"), "v1")
    # Spot checks against the events themselves: four events up to T, the last two tied.
    features = body["features"]
    assert features["value_mean"] == pytest.approx((10 + 12 + 11 + 13) / 4)
    assert features["value_max"] == 13.0
    assert features["day_of_week"] == 2 and features["hour_of_day"] == 11  # Wednesday 11:00
    assert features["is_business_hours"] == 1 and features["is_weekend"] == 0
    assert features["frequency"] == pytest.approx(1 / 4)  # c_last = "y" (the tie's last)


def test_features_with_version_and_epoch_ms(
    small_store: Path, oracle: PrefixOracle, in_process
) -> None:
    as_of = T0 + 41 * DAY + 9 * HOUR
    body = json.loads(
        ok(
            in_process(
                "features", "A", "--as-of", as_of, "--version", "v2", "--data-dir", small_store
            )
        )
    )
    assert body["version"] == "v2" and body["timestamp"] == as_of
    assert_same_features(body["features"], oracle("A", as_of, "v2"), "v2")
    assert body["features"]["value_mean"] == pytest.approx(50.0)  # v2: last 30 days only


@pytest.mark.parametrize(
    "args",
    [("ghost",), ("A", "--as-of", iso(T0)), ("B", "--as-of", T0 + DAY - 1)],
    ids=["unknown", "before-first-event", "just-before"],
)
def test_features_of_an_entity_without_events_exits_3(
    small_store: Path, in_process, args: tuple
) -> None:
    run = cli if args == ("ghost",) else in_process
    done = run("features", *args, "--data-dir", small_store)
    assert done.returncode == EXIT_NOT_FOUND
    assert done.stdout == ""
    assert json.loads(done.stderr)["error"] == "entity_not_found"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("A", "--as-of", "2999-01-01T00:00:00Z"), "--as-of is later than now"),
        (("A", "--as-of", "2024-02-30"), "--as-of: not a valid ISO-8601 timestamp"),
        (("A", "--version", "v9"), "unknown version 'v9'"),
    ],
)
def test_features_refuses_bad_arguments(
    small_store: Path, in_process, args: tuple, message: str
) -> None:
    done = in_process("features", *args, "--data-dir", small_store)
    assert done.returncode == EXIT_FAILURE
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_delete_removes_an_entity(small_store: Path, in_process) -> None:
    n_a = sum(1 for e in EVENT_LIST if e[0] == "A")
    out = ok(cli("delete", "A", "--data-dir", small_store))
    assert json.loads(out) == {"entity_id": "A", "deleted_events": n_a}
    after = snapshot(small_store)
    assert after["entities"] == ["B"]
    assert after["counts"]["events"] == len(EVENT_LIST) - n_a
    again = ok(in_process("delete", "A", "--data-dir", small_store))
    assert json.loads(ok(in_process("delete", "nobody", "--data-dir", small_store))) == {
        "entity_id": "nobody",
        "deleted_events": 0,
    }
    assert json.loads(again) == {"entity_id": "A", "deleted_events": 0}


# --------------------------------------------------------------------------------- generate
# Rows between events, exactly at events, before the first event, duplicates, unknown ids.
ROW_TIMES = [
    ("A", T0 + 1 * DAY + 10 * HOUR),  # exactly at the 2nd event of A
    ("A", T0 + 2 * DAY),  # between events
    ("ghost", T0 + 2 * DAY),  # unknown entity
    ("A", T0 + 2 * DAY + 11 * HOUR),  # at the two tied events
    ("B", T0 + 2 * DAY),
    ("A", T0 + 2 * DAY),  # duplicate row
    ("A", T0 + 9 * HOUR - 1),  # just before A's first event
    ("B", T0 + 30 * DAY),
    ("A", T0 + 40 * DAY + 8 * HOUR - 1),  # just before the big jump
    ("A", T0 + 41 * DAY + 9 * HOUR),
    ("B", T0),  # before B's first event
    ("A", T0 + 80 * DAY),
]


def read_output(path: Path, version: str, names: list[str]) -> list[dict[str, Any]]:
    """Output rows as dicts, with nulls as None and int features as int."""
    types = {f.name: f.type for f in feature_set(version).features}
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        assert table.column_names == ["entity_id", "timestamp", *names, "status"]
        for name in names:
            expected_type = pa.int64() if types[name] == "int" else pa.float64()
            assert table.schema.field(name).type == expected_type, name
        return table.to_pylist()
    if path.suffix in (".jsonl", ".json"):
        text = path.read_text()
        if path.suffix == ".json":  # one array of row objects
            records = json.loads(text)
            assert isinstance(records, list)
        else:
            records = [json.loads(line) for line in text.splitlines()]
        for record in records:
            assert list(record) == ["entity_id", "timestamp", *names, "status"]
        return records
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["entity_id", "timestamp", *names, "status"]
        records = []
        for raw in reader:
            record: dict[str, Any] = dict(raw)
            for name in names:
                text = raw[name]
                if text == "":
                    record[name] = None
                elif types[name] == "int":
                    assert text.lstrip("-").isdigit(), (name, text)
                    record[name] = int(text)
                else:
                    record[name] = float(text)
            records.append(record)
        return records


def check_generated(
    records: list[dict[str, Any]],
    stamps: list[Any],
    oracle: PrefixOracle,
    version: str,
    names: list[str],
) -> None:
    assert len(records) == len(ROW_TIMES)
    for record, (entity, as_of), stamp in zip(records, ROW_TIMES, stamps, strict=True):
        assert record["entity_id"] == entity
        assert record["timestamp"] == stamp and type(record["timestamp"]) is type(stamp)
        expected = oracle(entity, as_of, version)
        features = {name: record[name] for name in names}
        if expected is None:
            assert record["status"] == "not_found", (entity, as_of)
            assert all(v is None for v in features.values()), (entity, as_of)
        else:
            assert record["status"] == "ok", (entity, as_of)
            assert_same_features(features, {n: expected[n] for n in names}, version)


GENERATE_CASES = [
    pytest.param(("csv", "ms", "parquet"), id="csv-ms-to-parquet"),
    pytest.param(("jsonl", "iso", "csv"), id="jsonl-iso-to-csv"),
    pytest.param(("parquet", "ms", "jsonl"), id="parquet-ms-to-jsonl"),
    pytest.param(("csv", "ms", "json"), id="csv-ms-to-json"),
]


@pytest.mark.parametrize("case", GENERATE_CASES)
def test_generate_is_point_in_time_correct(
    tmp_path: Path, small_store: Path, oracle: PrefixOracle, case: tuple[str, str, str]
) -> None:
    source, stamps, target = case
    # Given rows at times between, at and before events, duplicates and unknown ids
    stamp_values: list[Any] = (
        [t for _, t in ROW_TIMES]
        if stamps == "ms"
        else [iso(t, i % 5) for i, (_, t) in enumerate(ROW_TIMES)]
    )
    frame = pd.DataFrame({"entity_id": [e for e, _ in ROW_TIMES], "timestamp": stamp_values})
    rows_path = write_table(tmp_path / f"rows.{source}", frame)
    output = tmp_path / "out" / f"features.{target}"
    # When training data is generated
    out = ok(cli("generate", rows_path, "--output", output, "--data-dir", small_store))
    # Then each row equals the features of a store that holds only the events <= its time
    assert out.startswith(f"generate: {len(ROW_TIMES)} rows (9 with data) -> {output}")
    names = feature_set("v1").names
    # CSV keeps text: timestamps come back as they were written
    expected_stamps = [str(v) for v in stamp_values] if target == "csv" else stamp_values
    check_generated(read_output(output, "v1", names), expected_stamps, oracle, "v1", names)


def test_generate_matches_features_command(
    tmp_path: Path, small_store: Path, oracle: PrefixOracle, in_process
) -> None:
    as_of = T0 + 2 * DAY + 11 * HOUR
    rows = write_table(
        tmp_path / "rows.csv", pd.DataFrame({"entity_id": ["A"], "timestamp": [as_of]})
    )
    output = tmp_path / "one.jsonl"
    ok(cli("generate", rows, "--output", output, "--data-dir", small_store))
    (record,) = read_output(output, "v1", feature_set("v1").names)
    single = json.loads(
        ok(in_process("features", "A", "--as-of", as_of, "--data-dir", small_store))
    )
    generated = {n: record[n] for n in feature_set("v1").names}
    assert generated == single["features"]  # the training/serving guarantee: same numbers
    assert_same_features(generated, oracle("A", as_of, "v1"), "v1")


def test_generate_subset_in_requested_order_with_v2(
    tmp_path: Path, small_store: Path, oracle: PrefixOracle
) -> None:
    names = ["z_score", "hour_of_day", "value_mean", "category_encoded", "entity_hash"]
    frame = pd.DataFrame(
        {"entity_id": [e for e, _ in ROW_TIMES], "timestamp": [t for _, t in ROW_TIMES]}
    )
    rows_path = write_table(tmp_path / "rows.parquet", frame)
    output = tmp_path / "subset.parquet"
    ok(
        cli(
            "generate",
            rows_path,
            "--output",
            output,
            "--version",
            "v2",
            "--features",
            ",".join(names),
            "--data-dir",
            small_store,
        )
    )
    records = read_output(output, "v2", names)
    check_generated(records, [t for _, t in ROW_TIMES], oracle, "v2", names)
    # v2 really differs from v1 where the 30-day window drops old events.
    late = ROW_TIMES.index(("A", T0 + 41 * DAY + 9 * HOUR))
    assert records[late]["value_mean"] == pytest.approx(50.0)
    assert oracle("A", T0 + 41 * DAY + 9 * HOUR, "v1")["value_mean"] == pytest.approx(
        (10 + 12 + 11 + 13 + 15 + 400 - 300) / 7
    )


@pytest.mark.parametrize(
    "case",
    [
        (("--features", "value_mean,bogus,worse"), {}, "unknown feature(s) bogus, worse in v1"),
        (("--version", "v9"), {}, "unknown version 'v9'; valid: v1, v2"),
        (("--version", "v2"), {"ENABLE_VERSIONING": "false"}, "unknown version 'v2'; valid: v1"),
    ],
    ids=["unknown-feature", "unknown-version", "versioning-off"],
)
def test_generate_refuses_unknown_names(
    tmp_path: Path, small_store: Path, in_process, case: tuple
) -> None:
    args, env, message = case
    rows = write_table(tmp_path / "rows.csv", pd.DataFrame({"entity_id": ["A"], "timestamp": [T0]}))
    output = tmp_path / "out.csv"
    done = in_process(
        "generate", rows, "--output", output, *args, "--data-dir", small_store, env=env
    )
    assert done.returncode == EXIT_FAILURE
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()


def test_generate_names_a_bad_row(tmp_path: Path, small_store: Path, in_process) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(f'entity_id,timestamp\nA,{T0}\nA,{T0 + 1}\n"A\x02",{T0}\n', encoding="utf-8")
    done = in_process(
        "generate", rows, "--output", tmp_path / "out.jsonl", "--data-dir", small_store
    )
    assert done.returncode == EXIT_FAILURE
    assert f"{rows}: row 3, column entity_id: contains a control character" in done.stderr
    assert "Traceback" not in done.stderr


def test_generate_streams_many_chunks_in_input_order(
    tmp_path: Path, small_store: Path, oracle: PrefixOracle
) -> None:
    # Given more rows than one generate chunk, in a shuffled order
    rng = np.random.default_rng(7)
    picks = rng.integers(0, len(ROW_TIMES), 60_000)
    entities = [ROW_TIMES[i][0] for i in picks]
    stamps = np.array([ROW_TIMES[i][1] for i in picks], dtype=np.int64)
    rows_path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"entity_id": entities, "timestamp": stamps}), rows_path)
    output = tmp_path / "many.parquet"
    # When generated
    ok(cli("generate", rows_path, "--output", output, "--features", "value_mean,day_of_week",
           "--data-dir", small_store))  # fmt: skip
    # Then row i is the feature vector of input row i
    table = pq.read_table(output)
    assert table.num_rows == len(picks)
    assert table.column("entity_id").to_pylist() == entities
    assert table.column("timestamp").to_numpy().tolist() == stamps.tolist()
    means = table.column("value_mean").to_pylist()
    days = table.column("day_of_week").to_pylist()
    status = table.column("status").to_pylist()
    for k in range(len(ROW_TIMES)):
        expected = oracle(*ROW_TIMES[k], "v1")
        where = np.flatnonzero(picks == k)
        assert {status[i] for i in where} == {"ok" if expected else "not_found"}
        if expected is None:
            assert {means[i] for i in where} == {None} and {days[i] for i in where} == {None}
        else:
            assert {days[i] for i in where} == {expected["day_of_week"]}
            assert all(math.isclose(means[i], expected["value_mean"], rel_tol=1e-9) for i in where)


# ------------------------------------------------------------------------ generate to .json
def _generate(data_dir: Path, rows: Path, output: Path, **options: Any) -> None:
    """`generate_file` in this process (the CLI is tested above), with small chunks."""
    store = open_store(data_dir)
    try:
        generate_file(store, rows, output, version="v1", names=feature_set("v1").names, **options)
    finally:
        store.close()


@pytest.mark.parametrize("case", [("parquet", "ms"), ("jsonl", "iso")], ids="-".join)
def test_generate_json_is_the_rows_of_csv_and_parquet(
    tmp_path: Path, small_store: Path, oracle: PrefixOracle, monkeypatch, case: tuple[str, str]
) -> None:
    # Given rows over several chunks, and JSON slices smaller than a chunk
    source, stamps = case
    times = ROW_TIMES * 3
    stamp_values = [t if stamps == "ms" else iso(t, i % 5) for i, (_, t) in enumerate(times)]
    frame = pd.DataFrame({"entity_id": [e for e, _ in times], "timestamp": stamp_values})
    rows = write_table(tmp_path / f"rows.{source}", frame)
    monkeypatch.setattr(files, "JSON_SLICE_ROWS", 2)
    output = tmp_path / "out.json"
    partial = tmp_path / "out.json.partial"
    seen: list[tuple[bool, bool]] = []
    # When it is generated to JSON (watching the files after each chunk), CSV and Parquet
    _generate(
        small_store,
        rows,
        output,
        chunk_rows=5,
        progress=lambda _n: seen.append((output.exists(), partial.exists())),
    )
    for other in ("out.csv", "out.parquet"):
        _generate(small_store, rows, tmp_path / other, chunk_rows=5)
    # Then the output appeared only when complete
    assert len(seen) == math.ceil(len(times) / 5)
    assert set(seen) == {(False, True)}
    assert output.exists() and not partial.exists()
    # and it is one array of the same rows as Parquet (the same values and the same types)
    names = feature_set("v1").names
    records = read_output(output, "v1", names)
    assert records == read_output(tmp_path / "out.parquet", "v1", names)
    types = {f.name: f.type for f in feature_set("v1").features}
    for record in records:
        assert type(record["timestamp"]) is (int if stamps == "ms" else str)
        for name in names:
            want = int if types[name] == "int" else float
            assert record[name] is None or type(record[name]) is want, (name, record[name])
    assert {r["status"] for r in records} == {"ok", "not_found"}
    assert any(r["value_mean"] is None for r in records)  # nulls as JSON null
    # and as CSV, whose cells are text
    as_text = [{**r, "timestamp": str(r["timestamp"])} for r in records]
    assert as_text == read_output(tmp_path / "out.csv", "v1", names)
    # and the rows are right (the first copy of ROW_TIMES against the oracle)
    check_generated(records[: len(ROW_TIMES)], stamp_values[: len(ROW_TIMES)], oracle, "v1", names)


def test_generate_json_that_fails_in_a_later_chunk_leaves_nothing(
    tmp_path: Path, small_store: Path
) -> None:
    # Given rows whose only bad row is in the third chunk
    good = [{"entity_id": "A", "timestamp": T0 + i * HOUR} for i in range(12)]
    rows = _jsonl(*good, {"entity_id": "A\x07", "timestamp": T0})(tmp_path / "rows.jsonl")
    output = tmp_path / "out.json"
    partial = tmp_path / "out.json.partial"
    written: list[bool] = []
    # When generated to JSON
    with pytest.raises(files.FileError, match="row 13, column entity_id: contains a control"):
        _generate(
            small_store,
            rows,
            output,
            chunk_rows=5,
            progress=lambda _n: written.append(partial.exists()),
        )
    # Then two chunks had been written, and neither the output nor its partial file is left
    assert written == [True, True]
    assert not output.exists()
    assert not partial.exists()


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_generate_json_keeps_datetime_timestamps_as_iso(
    tmp_path: Path, small_store: Path, suffix: str
) -> None:
    # Given a Parquet file of rows whose timestamps are an Arrow timestamp column (ns, UTC)
    stamps = pa.array([t * 1_000_000 for _, t in ROW_TIMES], pa.timestamp("ns", tz="UTC"))
    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"entity_id": [e for e, _ in ROW_TIMES], "timestamp": stamps}), rows)
    output = tmp_path / f"out{suffix}"
    # When generated to JSON or JSON Lines
    _generate(small_store, rows, output)
    # Then each timestamp is the same instant, written as ISO-8601
    records = read_output(output, "v1", feature_set("v1").names)
    instants = [datetime.fromisoformat(r["timestamp"]) for r in records]
    assert instants == [datetime.fromtimestamp(t / 1000, tz=UTC) for _, t in ROW_TIMES]
