"""ZeroMQ serving benchmarks (issue 4), through the shipped `Client` against a real stack.

    python bench/zmq_bench.py [--entities 10000] [--work /tmp/fs-bench]

Floor measured in the same run: a bare pyzmq REQ/REP echo (separate process) of the same
bytes as a cached single-get reply. Writes bench/results/zmq.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np
import zmq
from common import demo_store, report

from featurestore.demo import entity_name
from featurestore.launcher import Stack, free_port
from featurestore.protocol import Op


def echo_server(port: int, ready) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(f"tcp://127.0.0.1:{port}")
    ready.set()
    while True:
        message = socket.recv()
        if message == b"stop":
            socket.send(b"")
            break
        socket.send(message)
    socket.close()
    context.term()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = np.array(samples) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def bench_echo(payload: bytes, n: int) -> tuple[float, float]:
    port = free_port()
    ready = multiprocessing.get_context("spawn").Event()
    server = multiprocessing.get_context("spawn").Process(target=echo_server, args=(port, ready))
    server.start()
    ready.wait(10)
    context = zmq.Context()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(f"tcp://127.0.0.1:{port}")
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        socket.send(payload)
        socket.recv()
        samples.append(time.perf_counter() - started)
    socket.send(b"stop")
    socket.recv()
    socket.close()
    context.term()
    server.join(10)
    return percentiles(samples[n // 10 :])


def bench_stack(data: Path, entities: int, workers: int) -> dict:
    out: dict = {}
    rng = np.random.default_rng(workers)
    with (
        Stack(data, workers=workers, env={"CACHE_MAX_SIZE": str(entities * 2)}) as stack,
        stack.client() as fs,
    ):
        ids = [entity_name(i) for i in rng.permutation(entities)]
        # cold singles: entities never asked before
        cold = []
        for entity in ids[:500]:
            started = time.perf_counter()
            fs.get(entity)
            cold.append(time.perf_counter() - started)
        out["cold_get_p50_ms"], out["cold_get_p99_ms"] = percentiles(cold)
        # cached singles
        warm = []
        for i in range(5000):
            entity = ids[i % 500]
            started = time.perf_counter()
            fs.get(entity)
            warm.append(time.perf_counter() - started)
        out["cached_get_p50_ms"], out["cached_get_p99_ms"] = percentiles(warm[500:])
        reply = fs.request(Op.GET, {"entity_id": ids[0]})
        out["cached_reply_bytes"] = sum(len(f) for f in reply.encode())
        # batches of 1,000: cold (fresh entities), then the same again (cached)
        cold_rates, warm_rates = [], []
        for start in range(500, min(entities, 500 + 5000), 1000):
            chunk = ids[start : start + 1000]
            started = time.perf_counter()
            fs.batch(chunk, arrays=True)
            cold_rates.append(len(chunk) / (time.perf_counter() - started))
            for _ in range(3):
                started = time.perf_counter()
                fs.batch(chunk, arrays=True)
                warm_rates.append(len(chunk) / (time.perf_counter() - started))
        out["batch_1000_cold_entities_per_s"] = float(np.median(cold_rates))
        out["batch_1000_cached_entities_per_s"] = float(np.median(warm_rates))
        started = time.perf_counter()
        items = fs.batch(ids[500:1500])
        out["batch_1000_cached_items_entities_per_s"] = len(items) / (time.perf_counter() - started)
    return out


def bench_scaling(data: Path, entities: int, max_workers: int) -> dict:
    """Cold compute throughput with 1..max_workers workers: 8 batches of 500 in flight."""
    rates = {}
    for workers in sorted({1, 2, max_workers}):
        with Stack(data, workers=workers, env={"BATCH_SIZE": "250"}) as stack, stack.client() as fs:
            fs.clear()
            ids = [entity_name(i) for i in range(entities)]
            started = time.perf_counter()
            wanted = [
                fs.submit(Op.BATCH, {"entity_ids": ids[s : s + 500]}) for s in range(0, 4000, 500)
            ]
            for reply in fs.collect(wanted, timeout_ms=60_000):
                reply.raise_for_error()
            rates[str(workers)] = 4000 / (time.perf_counter() - started)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default="/tmp/fs-bench")
    args = parser.parse_args()
    data = demo_store(args.work, args.entities)
    results = bench_stack(data, args.entities, args.workers)
    results["echo_p50_ms"], results["echo_p99_ms"] = bench_echo(
        b"x" * results["cached_reply_bytes"], 5000
    )
    results["cold_throughput_entities_per_s_by_workers"] = bench_scaling(
        data, args.entities, args.workers
    )
    r = results
    lines = [
        f"cached single get (ZeroMQ client): P50 {r['cached_get_p50_ms']:.3f} ms P99 "
        f"{r['cached_get_p99_ms']:.3f} ms | bare REQ/REP echo of {r['cached_reply_bytes']} bytes "
        f"P50 {r['echo_p50_ms']:.3f} ms P99 {r['echo_p99_ms']:.3f} ms | ratio "
        f"{r['cached_get_p50_ms'] / r['echo_p50_ms']:.2f}x (target <= 1.5x)",
        f"cold single get: P50 {r['cold_get_p50_ms']:.3f} ms P99 {r['cold_get_p99_ms']:.3f} ms",
        f"batch of 1,000 (arrays): cached {r['batch_1000_cached_entities_per_s']:,.0f} / cold "
        f"{r['batch_1000_cold_entities_per_s']:,.0f} entities/s (targets 200,000 / 50,000); "
        f"cached as dicts {r['batch_1000_cached_items_entities_per_s']:,.0f}/s",
        "cold throughput by workers: "
        + ", ".join(
            f"{w}: {v:,.0f}/s" for w, v in r["cold_throughput_entities_per_s_by_workers"].items()
        ),
    ]
    report("zmq", results, lines)


if __name__ == "__main__":
    main()
