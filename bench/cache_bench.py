"""Shared-memory feature cache benchmark: get / put latency and get_many / put_many of 1,000
keys, each side by side with a plain Python dict doing the same lookups in the same run.

    python bench/cache_bench.py [--size 10000] [--samples 50000]

Every sample times one call with perf_counter_ns; the clock's own cost (the P50 of two
back-to-back reads, printed) is subtracted from every sample, cache and dict alike. The
dict is the floor of any in-process cache: a lookup that returns a reference, no copy, no
sharing. Targets (issue: shm cache): single get P50 <= 5 µs, get_many of 1,000 <= 1 ms.
Writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import numpy as np

from featurestore.cache import CACHE_VERSIONS, CACHE_WIDTH
from shm import FeatureCache, drop

RESULTS = Path(__file__).parent / "results"
BATCH = 1000
VERSION = "v1"


def clock_cost_ns(samples: int) -> int:
    clock = time.perf_counter_ns
    costs = []
    for _ in range(samples):
        start = clock()
        costs.append(clock() - start)
    return int(np.percentile(costs, 50))


def timed(calls: list[Callable[[], object]], floor_ns: int) -> np.ndarray:
    """Per-call latencies in µs, clock cost subtracted."""
    clock = time.perf_counter_ns
    samples = np.empty(len(calls), dtype=np.int64)
    gc.disable()
    try:
        for i, call in enumerate(calls):
            start = clock()
            call()
            samples[i] = clock() - start
    finally:
        gc.enable()
    return np.maximum(samples - floor_ns, 0) / 1000.0


def summary(samples_us: np.ndarray) -> dict:
    return {
        "p50_us": float(np.percentile(samples_us, 50)),
        "p99_us": float(np.percentile(samples_us, 99)),
    }


def fmt(us: float) -> str:
    return f"{us / 1000:.3f} ms" if us >= 1000 else f"{us:.2f} µs"


def line(label: str, cache: dict, floor_label: str, floor: dict, target: str) -> str:
    ratio = cache["p50_us"] / max(floor["p50_us"], 1e-3)
    return (
        f"{label} P50 {fmt(cache['p50_us'])} P99 {fmt(cache['p99_us'])} | "
        f"{floor_label} P50 {fmt(floor['p50_us'])} P99 {fmt(floor['p99_us'])} | "
        f"ratio {ratio:.0f}x{target}"
    )


def run(size: int, samples: int) -> dict:
    rng = np.random.default_rng(1)
    name = f"fs_bench_{uuid4().hex[:8]}"
    cache = FeatureCache.open(name, size, 3_600_000, CACHE_WIDTH, CACHE_VERSIONS)
    try:
        return measure(cache, rng, size, samples)
    finally:
        cache.close()
        drop(name)


def measure(cache: FeatureCache, rng: np.random.Generator, size: int, samples: int) -> dict:
    ids = [f"user_{i:08d}" for i in range(size)]
    values = rng.normal(size=(size, CACHE_WIDTH))
    as_of = np.arange(size, dtype=np.int64)
    for start in range(0, size, BATCH):
        part = ids[start : start + BATCH]
        cache.put_many(
            VERSION,
            part,
            values[start : start + BATCH],
            as_of[start : start + BATCH],
            cache.generations(part),
        )
    plain = {(VERSION, e): (values[i], int(as_of[i])) for i, e in enumerate(ids)}
    floor_ns = clock_cost_ns(samples)
    picks = [ids[i] for i in rng.integers(size, size=samples)]
    absent = [f"absent_{i}" for i in range(samples)]
    generations = {e: cache.generation(e) for e in set(picks[: samples // 5])}
    batches = [
        [ids[i] for i in rng.integers(size, size=BATCH)] for _ in range(max(50, samples // 200))
    ]

    def get(e: str) -> Callable[[], object]:
        return lambda: cache.get(VERSION, e)

    def dict_get(e: str) -> Callable[[], object]:
        return lambda: plain.get((VERSION, e))

    def put(e: str) -> Callable[[], object]:
        return lambda: cache.put(VERSION, e, values[0], 1, generations[e])

    def dict_put(e: str) -> Callable[[], object]:
        return lambda: plain.__setitem__((VERSION, e), (values[0], 1))

    def get_many(batch: list[str]) -> Callable[[], object]:
        return lambda: cache.get_many(VERSION, batch)

    def dict_many(batch: list[str]) -> Callable[[], object]:
        return lambda: [plain.get((VERSION, e)) for e in batch]

    def dict_set_many(batch: list[str]) -> Callable[[], object]:
        return lambda: plain.update({(VERSION, e): (values[0], 1) for e in batch})

    def put_many(batch: list[str]) -> Callable[[], object]:
        gens = cache.generations(batch)
        return lambda: cache.put_many(VERSION, batch, values[:BATCH], as_of[:BATCH], gens)

    timed([get(e) for e in picks[:1000]], floor_ns)  # warm-up
    result = {
        "get": summary(timed([get(e) for e in picks], floor_ns)),
        "dict_get": summary(timed([dict_get(e) for e in picks], floor_ns)),
        "get_miss": summary(timed([get(e) for e in absent], floor_ns)),
        "dict_get_miss": summary(timed([dict_get(e) for e in absent], floor_ns)),
        "put": summary(timed([put(e) for e in picks[: samples // 5]], floor_ns)),
        "dict_put": summary(timed([dict_put(e) for e in picks[: samples // 5]], floor_ns)),
        "get_many_1000": summary(timed([get_many(b) for b in batches], floor_ns)),
        "dict_get_1000": summary(timed([dict_many(b) for b in batches], floor_ns)),
        "put_many_1000": summary(timed([put_many(b) for b in batches[:50]], floor_ns)),
        "dict_set_1000": summary(timed([dict_set_many(b) for b in batches[:50]], floor_ns)),
    }
    result["clock_cost_ns"] = floor_ns
    result["stats"] = cache.stats()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="cached vectors (CACHE_MAX_SIZE)")
    parser.add_argument("--samples", type=int, default=50_000, help="single-key calls timed")
    args = parser.parse_args()
    r = run(args.size, args.samples)
    lines = [
        line("cache get", r["get"], "dict get", r["dict_get"], " (target P50 <= 5 µs)"),
        line("cache get miss", r["get_miss"], "dict get miss", r["dict_get_miss"], ""),
        line("cache put", r["put"], "dict put", r["dict_put"], ""),
        line(
            "cache get_many 1,000",
            r["get_many_1000"],
            "dict 1,000 gets",
            r["dict_get_1000"],
            " (target P50 <= 1 ms)",
        ),
        line("cache put_many 1,000", r["put_many_1000"], "dict 1,000 sets", r["dict_set_1000"], ""),
        f"(clock cost {r['clock_cost_ns']} ns subtracted; {args.size:,} vectors of "
        f"{CACHE_WIDTH} float64; {r['stats']['memory_bytes'] / 2**20:.1f} MiB segment)",
    ]
    print("\n".join(lines))
    r["lines"] = lines
    r["size"] = args.size
    r["machine"] = {
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cache.json").write_text(json.dumps(r, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
