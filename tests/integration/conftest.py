"""Fixtures of the integration tests: real broker and worker processes on a small demo store.

One stack per module (SPEC §9: a stack per test does not fit 2 cores). A module sets
`STACK_ENV` (extra environment) and `STACK_WORKERS` to shape its stack; tests that must break
a stack (kill, restart, overload, poison) start their own with `make_stack`. Every process is
stopped in a `finally`, whatever the test did.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from integration_support import copy_store, make_demo_store, running_stack

from featurestore.ops.launcher import Stack
from featurestore.wire.client import Client


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private store filled with the demo data set (300 entities, seed 3, end 2026-01-01)."""
    return make_demo_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, demo_dir: Path) -> Iterator[Stack]:
    env = getattr(request.module, "STACK_ENV", {})
    workers = getattr(request.module, "STACK_WORKERS", 2)
    with running_stack(demo_dir, workers=workers, env=env) as running:
        yield running


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    fs = stack.client()
    try:
        yield fs
    finally:
        fs.close()


@pytest.fixture
def make_stack(demo_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start a private stack on a copy of the module's store (one stack per DATA_DIR):
    make_stack(workers=1, env={...}); its store is `stack.data_dir`."""
    stacks: list[Stack] = []

    def start(**options) -> Stack:
        stack = Stack(copy_store(demo_dir, tmp_path / f"stack{len(stacks)}"), **options)
        stacks.append(stack)
        return stack.start()

    try:
        yield start
    finally:
        for stack in stacks:
            stack.stop()
