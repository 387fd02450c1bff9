"""Helpers of the Dask tests: a random store with edge cases, random rows, and event sources
that fail for real in a task (an exception, or a worker process that the test SIGKILLs).

The event sources are shipped to the workers by value (cloudpickle), so the worker processes
need not import this module.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from featurestore.config import Settings
from featurestore.definitions import load_definitions
from featurestore.offline.dask_tasks import StoreEvents
from featurestore.store.base import EventStore
from featurestore.store.columns import EventColumns
from featurestore.store.factory import open_event_store
from featurestore.store.sqlite import open_store

T_END = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
GATE_TIMEOUT_S = 60.0
GATE_POLL_S = 0.05


def entity(i: int) -> str:
    return f"acct-{i:04d}"


def make_random_store(
    data_dir: Path,
    seed: int,
    entities: int,
    definitions: Path | None = None,
    store_url: str | None = None,
) -> list[str]:
    """Entities with 1..80 events (some exactly one, some with one constant value, many equal
    timestamps, some without category); every third id of the range has no event at all.
    With `definitions`, the store has its fields, and events an optional `amount` (numeric)
    and `merchant` (categorical), each missing now and then. With `store_url`, the same events
    go to that PostgreSQL database instead (shipped fields only). Returns the ids with events."""
    rng = np.random.default_rng(seed)
    ids, ts, values, cats = [], [], [], []
    for i in range(entities):
        if i % 3 == 2:
            continue  # an entity the rows ask for, with no event
        n = 1 if i % 11 == 0 else int(rng.integers(2, 80))
        times = T_END - rng.integers(0, 60, n) * DAY // 4  # few distinct times: ties
        constant = i % 13 == 0  # std 0, z_score null
        value = np.full(n, 3.25) if constant else np.round(rng.normal(50, 20, n), 3)
        cat = rng.choice(["c1", "c2", "c3", None], n, p=[0.4, 0.3, 0.2, 0.1])
        ids += [entity(i)] * n
        ts += times.tolist()
        values += value.tolist()
        cats += list(cat)
    extra: dict[str, dict] = {"numeric": {}, "categorical": {}}
    schema = {}
    if definitions is not None:
        defs = load_definitions(definitions)
        schema = {"schema": defs.schema, "schema_source": defs.source}
        n = len(ids)
        amount = np.round(rng.lognormal(3, 1, n), 2)
        amount[rng.random(n) < 0.2] = np.nan
        merchant = rng.choice(["food", "travel", "fuel", None], n, p=[0.4, 0.2, 0.2, 0.2])
        extra = {"numeric": {"amount": amount}, "categorical": {"merchant": list(merchant)}}
    columns = EventColumns(
        ids, np.array(ts, np.int64), np.array(values), cats, [None] * len(ids), **extra
    )
    store = open_store(data_dir, **schema) if store_url is None else open_pg(store_url)
    try:
        store.ingest(columns)
    finally:
        store.close()
    return sorted(set(ids))


def open_pg(store_url: str) -> EventStore:
    """The PostgreSQL store of `store_url`, with the shipped definitions' fields."""
    return open_event_store(Settings.from_env({"STORE_URL": store_url}))


def random_rows(seed: int, entities: int, n: int) -> pd.DataFrame:
    """Rows over every id of the range (with and without events) and unknown ids, timestamps
    before, at and after events (many exactly on the event grid), and duplicated rows."""
    rng = np.random.default_rng(seed)
    ids = np.array([entity(i) for i in range(entities)] + ["nobody-1", "nobody-2"], dtype=object)
    picked = ids[rng.integers(0, ids.size, n)]
    on_grid = T_END - rng.integers(0, 70, n) * DAY // 4
    anywhere = T_END - rng.integers(0, 70 * DAY // 4, n)
    frame = pd.DataFrame(
        {"entity_id": picked, "timestamp": np.where(rng.random(n) < 0.5, on_grid, anywhere)}
    )
    duplicates = frame.sample(n // 20, random_state=seed)
    return pd.concat([frame, duplicates], ignore_index=True)


def malloc_environment() -> dict[str, str | None]:
    """The glibc malloc variables of the process this runs in (a worker)."""
    names = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    return {name: os.environ.get(name) for name in names}


@dataclass(frozen=True)
class FailOnceEvents:
    """The store, but the first task of the run to open it raises (it creates `marker`):
    that task fails once and must be retried; every other attempt opens the store."""

    store: StoreEvents
    marker: str

    def open(self) -> object:
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return self.store.open()
        raise OSError("injected failure of the first attempt")


@dataclass(frozen=True)
class GatedEvents:
    """The store, but the first task to open it writes its worker's pid to `gate` and waits
    (until a deadline) to be SIGKILLed by the test; later attempts open the store at once."""

    store: StoreEvents
    gate: str

    def open(self) -> object:
        try:
            descriptor = os.open(self.gate, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return self.store.open()
        os.write(descriptor, str(os.getpid()).encode())
        os.close(descriptor)
        deadline = time.monotonic() + GATE_TIMEOUT_S
        while time.monotonic() < deadline:  # the test kills this process meanwhile
            time.sleep(GATE_POLL_S)  # deadline-poll
        raise TimeoutError("the test did not kill this worker")
