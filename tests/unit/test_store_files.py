"""The store's file (SPEC §11): a file that is not a usable store is refused with one clear
`StoreCorrupt` naming it and what is wrong, and left as it was; a new store is private (its
directory 0700, the file and its -wal/-shm 0600) whatever the umask."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from featurestore.ops.permissions import private_dir
from featurestore.store.errors import StoreCorrupt, StoreError
from featurestore.store.schema import APPLICATION_ID
from featurestore.store.sqlite import DB_FILENAME, SqliteEventStore
from featurestore.validation.events import validate_events


def _bytes(content: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.write_bytes(content)

    return make


def _sqlite(*statements: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in statements:
            conn.execute(statement)
        conn.close()

    return make


def _our_store(*statements: str) -> Callable[[Path], None]:
    """A store made by this code, then changed by `statements`."""

    def make(path: Path) -> None:
        SqliteEventStore(path.parent).close()
        _sqlite(*statements)(path)

    return make


BAD_FILES = {
    "random bytes": (_bytes(bytes(range(256)) * 64), "not a SQLite database"),
    "a CSV file": (_bytes(b"entity_id,timestamp,value\na,1,2\n"), "not a SQLite database"),
    "another application's database": (
        _sqlite("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)"),
        "a SQLite database of another application (tables: invoices)",
    ),
    "another application id": (
        _sqlite("CREATE TABLE meta (key TEXT)", "PRAGMA application_id = 1234"),
        "not a featurestore event store (SQLite application_id 0x000004d2",
    ),
    "a newer schema": (
        _our_store("UPDATE meta SET value = 99 WHERE key = 'schema_version'"),
        "schema version 99 is newer than this featurestore knows (3); upgrade featurestore",
    ),
    "a damaged schema": (
        _our_store("DROP TABLE segments"),
        "damaged featurestore schema (missing tables: segments)",
    ),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_file_that_is_not_a_usable_store_is_refused_in_one_line(
    tmp_path: Path, kind: str
) -> None:
    # Given DATA_DIR/events.sqlite3 that is not a usable store
    make, problem = BAD_FILES[kind]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / DB_FILENAME
    make(path)
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}

    # When the store is opened
    with pytest.raises(StoreCorrupt) as raised:
        SqliteEventStore(data_dir)

    # Then one line names the file and what is wrong, and nothing was written to it
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and problem in message, message
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before


def test_an_empty_file_becomes_a_new_store(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).touch()
    SqliteEventStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
    conn.close()


@contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_new_store_is_private_whatever_the_umask(tmp_path: Path) -> None:
    # Given umask 000 (everything created would be world-readable and writable)
    data_dir = tmp_path / "deep" / "data"
    with umask(0o000):
        # When a store is created in a new directory and written
        store = SqliteEventStore(data_dir)
        try:
            store.ingest(validate_events([{"entity_id": "a", "timestamp": 1, "value": 1}], 9, 0))
            files = sorted(p.name for p in data_dir.iterdir())
            modes = {name: mode(data_dir / name) for name in files}
        finally:
            store.close()

    # Then the directories it made are 0700 and the file, -wal and -shm 0600
    assert files == [DB_FILENAME, f"{DB_FILENAME}-shm", f"{DB_FILENAME}-wal"]
    assert modes == dict.fromkeys(files, 0o600)
    assert mode(data_dir) == mode(tmp_path / "deep") == 0o700


def test_private_dir_keeps_an_existing_directory_as_it_is(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    with umask(0o000):
        private_dir(shared / "a" / "b")
    assert mode(shared) == 0o755
    assert mode(shared / "a") == mode(shared / "a" / "b") == 0o700


def test_a_store_that_cannot_be_created_is_unavailable_not_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as raised:
        SqliteEventStore(blocker / "data")
    assert "cannot create the store" in str(raised.value)
