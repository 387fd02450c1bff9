"""Buckets (a stable BLAKE2b hash of the entity id, power-of-two counts that nest), the
export of events partitioned by bucket read back exactly as the store reads, and rows cut
into pieces that read exactly the chunks of the single-process reader. Real files, no
processes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurestore.offline.buckets import (
    MAX_BUCKETS,
    bucket_count,
    bucket_of,
    check_bucket_count,
    export_bucket_count,
)
from featurestore.offline.export import ExportedEvents, partition_file, write_export
from featurestore.offline.files import ROW_REQUIRED, FileError, read_chunks
from featurestore.offline.rowsource import parquet_pieces, piece_chunks, row_files
from featurestore.store.columns import EventColumns
from featurestore.store.sqlite import open_store

T0 = 1_704_067_200_000


def reference_bucket(entity_id: str, n: int) -> int:
    digest = hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


def test_bucket_is_blake2b_of_the_utf8_id_modulo_the_count() -> None:
    ids = ["user_00042", "é-ü", "x" * 256, "user_00042"]
    for n in (1, 2, 64, MAX_BUCKETS):
        assert bucket_of(ids, n).tolist() == [reference_bucket(i, n) for i in ids]


def test_power_of_two_counts_nest() -> None:
    ids = np.array([f"e{i}" for i in range(5000)], dtype=object)
    fine = bucket_of(ids, 256)
    for coarse in (1, 2, 16, 128):
        assert np.array_equal(bucket_of(ids, coarse), fine % coarse)


def test_bucket_counts_follow_the_data_size() -> None:
    assert bucket_count(2_000_000, 2_000_000, 2) == 8  # 250,000 rows a bucket
    assert bucket_count(100, 0, 1) == 2  # at least two per worker
    assert bucket_count(100, 10_000_000, 1) == 8  # 2,000,000 events a bucket
    assert bucket_count(10**12, 0, 4) == MAX_BUCKETS
    assert export_bucket_count(0) == 1
    assert export_bucket_count(2_100_000) == 4
    for bad in (0, 3, 6, 2 * MAX_BUCKETS):
        with pytest.raises(ValueError, match="power of two"):
            check_bucket_count(bad)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(4)
    n = 3000
    ids = [f"ent-{i}" for i in rng.integers(0, 150, n)]
    ts = T0 + rng.integers(0, 40, n) * 3_600_000  # many equal times
    cats = list(rng.choice(["a", "b", None], n))
    store = open_store(tmp_path / "data")
    try:
        store.ingest(EventColumns(ids, ts, rng.normal(0, 1, n), cats, [None] * n))
        store.ingest(EventColumns(ids[:50], ts[:50], rng.normal(0, 1, 50), cats[:50], [None] * 50))
    finally:
        store.close()
    return tmp_path / "data"


def test_an_export_reads_back_as_the_store_reads(store_dir: Path, tmp_path: Path) -> None:
    store = open_store(store_dir)
    try:
        summary = write_export(store, tmp_path / "export", buckets=8)
        assert summary.events == store.counts()["events"] and summary.buckets == 8
        asked = ["ent-3", "nobody", "ent-3", "ent-149", *store.entity_ids()[:40]]
        expected = store.read(asked)
        exported = ExportedEvents(tmp_path / "export")
        got = exported.read(asked)
        assert exported.label_names() == store.label_names()
        assert got.entity_ids == expected.entity_ids
        assert np.array_equal(got.offsets, expected.offsets)
        for name in ("ts", "seq"):
            assert np.array_equal(getattr(got, name), getattr(expected, name)), name
        for got_columns, expected_columns in (
            (got.numeric, expected.numeric),
            (got.labels, expected.labels),
        ):
            assert list(got_columns) == list(expected_columns)
            for name, column in expected_columns.items():
                assert got_columns[name].dtype == column.dtype
                assert np.array_equal(got_columns[name], column, equal_nan=column.dtype.kind == "f")
        as_of = T0 + 20 * 3_600_000
        assert np.array_equal(exported.read(asked, as_of).ts, store.read(asked, as_of).ts)
        # a second export replaces the first
        write_export(store, tmp_path / "export", buckets=2)
        assert ExportedEvents(tmp_path / "export").buckets == 2
    finally:
        store.close()


def test_an_export_refuses_a_foreign_directory_and_names_a_damaged_partition(
    store_dir: Path, tmp_path: Path
) -> None:
    store = open_store(store_dir)
    try:
        foreign = tmp_path / "photos"
        foreign.mkdir()
        (foreign / "cat.jpg").write_bytes(b"meow")
        with pytest.raises(FileError, match="not an export of events"):
            write_export(store, foreign)
        assert (foreign / "cat.jpg").exists()
        write_export(store, tmp_path / "export", buckets=2)
        ids = store.entity_ids()
    finally:
        store.close()
    damaged = partition_file(tmp_path / "export", 0)
    damaged.write_bytes(b"PAR1 garbage")
    with pytest.raises(FileError, match=str(damaged)):
        ExportedEvents(tmp_path / "export").read(ids)
    with pytest.raises(FileError, match="not an export"):
        ExportedEvents(foreign)


def test_pieces_read_exactly_the_chunks_of_the_single_process_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {"entity_id": [f"e{i}" for i in rng.integers(0, 99, 2345)], "timestamp": np.arange(2345)}
    )
    path = tmp_path / "rows.parquet"
    frame.to_parquet(path, row_group_size=333)
    expected = list(read_chunks(path, ROW_REQUIRED, chunk_rows=100))
    for per_piece in (1, 3, 50):
        chunks = [
            c
            for piece in parquet_pieces([path], 100, per_piece)
            for _, c in piece_chunks(piece, ROW_REQUIRED, 100)
        ]
        assert len(chunks) == len(expected)
        for got, want in zip(chunks, expected, strict=True):
            pd.testing.assert_frame_equal(got, want)


def test_rows_may_be_a_file_a_directory_or_a_glob(tmp_path: Path) -> None:
    (tmp_path / "d" / "x").mkdir(parents=True)
    for name in ("d/b.parquet", "d/a.parquet", "d/x/c.parquet"):
        pd.DataFrame({"entity_id": ["e"], "timestamp": [1]}).to_parquet(tmp_path / name)
    (tmp_path / "d" / "_SUCCESS").write_text("")
    (tmp_path / "d" / ".a.parquet.partial").write_text("")
    names = [p.relative_to(tmp_path).as_posix() for p in row_files(tmp_path / "d")]
    assert names == ["d/a.parquet", "d/b.parquet", "d/x/c.parquet"]
    assert row_files(f"{tmp_path}/d/*.parquet") == [
        tmp_path / "d/a.parquet",
        tmp_path / "d/b.parquet",
    ]
    with pytest.raises(FileError, match="no such file"):
        row_files(tmp_path / "missing.parquet")
    with pytest.raises(FileError, match="no file matches"):
        row_files(f"{tmp_path}/nothing/*.parquet")
    (tmp_path / "e").mkdir()
    with pytest.raises(FileError, match="no Parquet file"):
        row_files(tmp_path / "e")
