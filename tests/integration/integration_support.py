"""Helpers of the integration tests: the demo store, expected features computed in-process,
feature vectors as float64 arrays, raw ZeroMQ sockets that fail instead of hanging, peers.

Everything here talks to real processes; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import sqlite3
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np
import pandas as pd
import zmq

from featurestore.features.engine import compute
from featurestore.features.registry import feature_set
from featurestore.offline.demo import ENTITY_LIST, write_demo
from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.sqlite import DB_FILENAME, open_store
from featurestore.timestamps import parse_timestamp
from featurestore.wire.client import Response
from featurestore.wire.envelope import decode_reply
from featurestore.wire.frames import PROTOCOL_VERSION, Op
from featurestore.wire.messages import decode_answer
from featurestore.wire.results import FeatureBatch

DEMO_ENTITIES = 300
DEMO_SEED = 3
DEMO_END = "2026-01-01T00:00:00Z"
DEMO_END_MS = parse_timestamp(DEMO_END)
DAY_MS = 86_400_000
RECV_TIMEOUT_MS = 5000
PEER_SCRIPT = Path(__file__).with_name("peer_worker.py")


# ------------------------------------------------------------------------------ data
def make_demo_store(data_dir: Path) -> Path:
    """`featurestore demo --entities 300 --seed 3 --end 2026-01-01T00:00:00Z` into data_dir."""
    store = open_store(data_dir)
    try:
        write_demo(store, data_dir, entities=DEMO_ENTITIES, seed=DEMO_SEED, end_ms=DEMO_END_MS)
    finally:
        store.close()
    return data_dir


def copy_store(source: Path, target: Path) -> Path:
    """A consistent copy of the store in `source` (SQLite's backup API, safe while a stack
    reads or writes it), with its entity list: one DATA_DIR per stack (SPEC §11)."""
    target.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source / DB_FILENAME)) as src,
        contextlib.closing(sqlite3.connect(target / DB_FILENAME)) as dst,
    ):
        src.backup(dst)
    if (source / ENTITY_LIST).exists():
        shutil.copyfile(source / ENTITY_LIST, target / ENTITY_LIST)
    return target


def demo_counts(data_dir: Path) -> dict[str, int]:
    """entity id -> number of demo events (0 for the listed not-found ids)."""
    listing = pd.read_csv(data_dir / ENTITY_LIST)
    return dict(zip(listing["entity_id"], listing["n_events"].astype(int), strict=True))


def entity(index: int) -> str:
    return f"user_{index:05d}"


def expected_matrix(
    data_dir: Path,
    entity_ids: Sequence[str],
    as_of_ms: int | Sequence[int] | np.ndarray,
    version: str = "v1",
) -> tuple[np.ndarray, np.ndarray]:
    """(values, found) of the full vectors, computed in this process from a store read."""
    store = open_store(data_dir)
    try:
        unique = list(dict.fromkeys(entity_ids))
        position = {e: i for i, e in enumerate(unique)}
        codes = np.array([position[e] for e in entity_ids], dtype=np.int64)
        stamps = as_of_ms if isinstance(as_of_ms, int) else np.asarray(as_of_ms, dtype=np.int64)
        matrix = compute(store.read(unique), codes, stamps, version, store.category_names())
    finally:
        store.close()
    return matrix.values, matrix.found


def event_count(data_dir: Path, entity_id: str) -> int:
    store = open_store(data_dir)
    try:
        return int(store.read([entity_id]).lengths[0])
    finally:
        store.close()


def vector(features: dict) -> np.ndarray:
    """A `features` map of a reply as float64 (null -> NaN), in its key order."""
    return np.array(
        [np.nan if v is None else float(v) for v in features.values()], dtype=np.float64
    )


def full_vector(features: dict, version: str = "v1") -> np.ndarray:
    """A full `features` map in registry order as float64; asserts the keys and their order."""
    assert list(features) == feature_set(version).names
    return vector(features)


def identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical float64 arrays (same shape, same values, NaN where the other has NaN)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


# --------------------------------------------------------------------------- processes
@contextlib.contextmanager
def running_stack(data_dir: Path, **options) -> Iterator[Stack]:
    """A started Stack, always stopped (only its own pids) when the block ends."""
    stack = Stack(data_dir, **options)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()


def alive_workers(stack: Stack) -> int | None:
    health = stack.health()
    return None if health is None else health["workers"]["alive"]


def wait_alive(stack: Stack, count: int, timeout_s: float = 15.0) -> None:
    wait_for(lambda: alive_workers(stack) == count, timeout_s, f"{count} alive worker(s)")


def start_peer(stack: Stack, name: str, mode: str, peer_id: str):
    """A peer worker process (see peer_worker.py) that the stack does not restart."""
    return stack.add(
        name, [sys.executable, str(PEER_SCRIPT), mode, "--id", peer_id], autorestart=False
    )


# ------------------------------------------------------------------------- raw sockets
@dataclasses.dataclass
class RawReply:
    """A reply read off a raw socket: its envelope, and its body as plain data."""

    correlation_id: int
    ok: bool
    body: dict
    blocks: list


def read_reply(frames: list) -> RawReply:
    reply = decode_reply(frames)
    return RawReply(
        reply.correlation_id, reply.ok, msgspec.msgpack.decode(reply.body), reply.blocks
    )


def batch_of(ids: list[str], response: Response, op: Op = Op.BATCH) -> FeatureBatch:
    """The FeatureBatch of a batch or historical response of the client."""
    return FeatureBatch.from_answer(ids, decode_answer(op, response.raw), response.blocks)


def request_header(correlation_id: int, request_id: str, op: str, payload: object) -> bytes:
    """A hand-made request header: [version, correlation_id, request_id, op, payload]."""
    return msgspec.msgpack.encode([PROTOCOL_VERSION, correlation_id, request_id, op, payload])


class RawSocket:
    """A DEALER on an endpoint for hand-made frames; every receive has a deadline."""

    def __init__(self, endpoint: str) -> None:
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)

    def send(self, frames: list) -> None:
        self.socket.send_multipart(frames)

    def recv(self, timeout_ms: int = RECV_TIMEOUT_MS) -> list[bytes]:
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            raise AssertionError(f"no message within {timeout_ms} ms")
        return self.socket.recv_multipart()

    def reply(self, frames: list, timeout_ms: int = RECV_TIMEOUT_MS) -> RawReply:
        self.send(frames)
        return read_reply(self.recv(timeout_ms))

    def close(self) -> None:
        self.socket.close(linger=0)
        self.context.term()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
