"""Core benchmarks (issue 2): event store reads, in-process feature computation, offline
generation and file ingest, on a ~2-million-event demo store.

    python bench/core_bench.py [--entities 10000] [--rows 1000000] [--work /tmp/fs-bench]

Prints one line per measurement with its target and a floor measured in the same run, and
writes bench/results/core.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
from common import END_MS, demo_store, report

from featurestore.features.engine import compute
from featurestore.offline.demo import demo_chunks, entity_name
from featurestore.store.sqlite import DB_FILENAME, open_store


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def run_cli(*args: str) -> str:
    done = subprocess.run(
        ["featurestore", *args], capture_output=True, text=True, timeout=900, check=True
    )
    return done.stdout


def bench_read(data: Path, rng: np.random.Generator, entities: int) -> dict:
    store = open_store(data)
    conn = sqlite3.connect(data / DB_FILENAME)
    samples, floor = [], []
    for _ in range(30):
        ids = [entity_name(int(i)) for i in rng.choice(entities, 1000, replace=False)]
        started = time.perf_counter()
        batch = store.read(ids)
        samples.append(time.perf_counter() - started)
        started = time.perf_counter()
        conn.execute(
            "SELECT events FROM segments WHERE entity_id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(ids),),
        ).fetchall()
        floor.append(time.perf_counter() - started)
    store.close()
    conn.close()
    return {
        "read_1000_p50_ms": percentile_ms(samples, 50),
        "bare_sqlite_fetch_p50_ms": percentile_ms(floor, 50),
        "events_per_read": int(batch.ts.size),
    }


def bench_compute(data: Path, rng: np.random.Generator, entities: int) -> dict:
    store = open_store(data)
    names = store.category_names()
    out: dict[str, float] = {}
    for version in ("v1", "v2"):
        rates = []
        for _ in range(10):
            ids = [entity_name(int(i)) for i in rng.choice(entities, 1000, replace=False)]
            started = time.perf_counter()
            batch = store.read(ids)
            compute(batch, np.arange(1000), END_MS, version, names)
            rates.append(1000 / (time.perf_counter() - started))
        out[f"batch_1000_cold_{version}_entities_per_s"] = float(np.median(rates))
    single, compute_only = [], []
    for _ in range(500):
        entity = entity_name(int(rng.integers(entities)))
        started = time.perf_counter()
        batch = store.read([entity])
        middle = time.perf_counter()
        compute(batch, np.zeros(1, dtype=np.int64), END_MS, "v1", names)
        ended = time.perf_counter()
        single.append(ended - started)
        compute_only.append(ended - middle)
    store.close()
    out["single_read_compute_p50_ms"] = percentile_ms(single, 50)
    out["single_compute_p50_ms"] = percentile_ms(compute_only, 50)
    out["single_compute_p99_ms"] = percentile_ms(compute_only, 99)
    return out


def bench_generate(data: Path, work: Path, rows: int, entities: int) -> dict:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "entity_id": np.array([entity_name(i) for i in range(entities)], dtype=object)[
                rng.integers(0, entities, rows)
            ],
            "timestamp": END_MS - rng.integers(0, 95 * 86_400_000, rows),
        }
    )
    source = work / "rows.parquet"
    frame.to_parquet(source)
    output = work / "features.parquet"
    text = run_cli("generate", str(source), "--output", str(output), "--data-dir", str(data))
    rate = float(re.search(r"\(([\d,]+) rows/s\)", text).group(1).replace(",", ""))
    written = pd.read_parquet(output, columns=["status"])
    return {
        "generate_rows": rows,
        "generate_rows_per_s": rate,
        "generate_rows_written": len(written),
    }


def bench_ingest(work: Path, entities: int) -> dict:
    source = work / "events.parquet"
    if not source.exists():
        frames = list(demo_chunks(entities, seed=11, end_ms=END_MS))
        pd.concat(frames, ignore_index=True).sample(frac=1.0, random_state=1).to_parquet(source)
    target = work / "ingest-store"
    shutil.rmtree(target, ignore_errors=True)
    text = run_cli("ingest", str(source), "--data-dir", str(target))
    rate = float(re.search(r"\(([\d,]+) events/s\)", text).group(1).replace(",", ""))
    events = int(re.search(r"(\d+) stored", text).group(1))
    return {"ingest_events": events, "ingest_events_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", default="/tmp/fs-bench")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    data = demo_store(work, args.entities)
    results = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    results.update(bench_read(data, rng, args.entities))
    results.update(bench_compute(data, rng, args.entities))
    results.update(bench_generate(data, work, args.rows, args.entities))
    results.update(bench_ingest(work, args.entities))
    r = results
    lines = [
        f"read 1,000 entities ({r['events_per_read']:,} events): P50 {r['read_1000_p50_ms']:.2f} ms"
        f" | bare SQLite fetch of the same blobs {r['bare_sqlite_fetch_p50_ms']:.2f} ms"
        f" | ratio {r['read_1000_p50_ms'] / r['bare_sqlite_fetch_p50_ms']:.2f}x (target <= 10 ms)",
        "cold batch 1,000 in-process (read + compute): "
        f"v1 {r['batch_1000_cold_v1_entities_per_s']:,.0f}"
        f" / v2 {r['batch_1000_cold_v2_entities_per_s']:,.0f} entities/s (target >= 50,000)",
        f"single entity compute P50 {r['single_compute_p50_ms']:.3f} ms P99 "
        f"{r['single_compute_p99_ms']:.3f} ms; read + compute P50 "
        f"{r['single_read_compute_p50_ms']:.3f} ms (target P50 <= 0.5 ms)",
        f"generate {r['generate_rows']:,} rows: {r['generate_rows_per_s']:,.0f} rows/s, "
        f"{r['generate_rows_written']:,} rows written (target >= 100,000 rows/s)",
        f"ingest Parquet {r['ingest_events']:,} events with ids: "
        f"{r['ingest_events_per_s']:,.0f} events/s (target >= 200,000)",
    ]
    report("core", results, lines)


if __name__ == "__main__":
    main()
