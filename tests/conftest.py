"""Fixtures every test directory shares: the tests' PostgreSQL server (`pg_support.py`) and
the event stores of both backends (`store_targets.py`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_support import Databases
from store_targets import BACKENDS, Target


@pytest.fixture(scope="session")
def postgres() -> Iterator[Databases]:
    """The tests' PostgreSQL server, started on first use (one per test process)."""
    databases = Databases.start()
    try:
        yield databases
    finally:
        databases.close()


@pytest.fixture(scope="module")
def pg_url(postgres: Databases, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of this test module's own."""
    url = postgres.create(request.module.__name__)
    try:
        yield url
    finally:
        postgres.drop(url)


@pytest.fixture(params=BACKENDS)
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """An empty store of each backend in turn."""
    pg = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    target = Target.make(request.param, tmp_path / "data", pg)
    target.reset()
    return target
