"""Event files are strict about their columns (SPEC §14): an undeclared column is refused,
never dropped; the index pandas stores beside the data is not a column of the file's data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from featurestore.offline.files import FileError, read_chunks

REQUIRED = ("entity_id", "timestamp", "value")
OPTIONAL = ("category", "event_id")


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"entity_id": ["a", "b", "c"], "timestamp": [3, 1, 2], "value": [1.0, 2.0, 3.0]}
    )


def read(path: Path) -> pd.DataFrame:
    return pd.concat(read_chunks(path, REQUIRED, OPTIONAL, strict=True), ignore_index=True)


def test_parquet_with_a_stored_pandas_index_is_read_without_it(tmp_path: Path) -> None:
    # Given a frame shuffled (so its index is not a range), written by pandas as is
    shuffled = frame().sample(frac=1.0, random_state=1)
    path = tmp_path / "events.parquet"
    shuffled.to_parquet(path)
    # Then its rows are read in file order, with the declared columns only
    got = read(path)
    assert list(got.columns) == list(REQUIRED)
    assert got["entity_id"].tolist() == shuffled["entity_id"].tolist()


def test_a_named_index_is_not_data_either(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    frame().set_index(pd.Index([7, 3, 9], name="row")).to_parquet(path)
    assert list(read(path).columns) == list(REQUIRED)


def test_an_undeclared_column_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    frame().assign(amount=1.0).to_parquet(path, index=False)
    with pytest.raises(FileError, match=r"column\(s\) amount are not declared event fields"):
        read(path)
