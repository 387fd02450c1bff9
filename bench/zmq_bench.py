"""ZeroMQ serving benchmarks (issues 4 and 10), through the shipped `Client` against a real
stack, with CURVE off (the loopback default) and on (ZMQ_CURVE_KEYS_DIR) in the same run.

    python bench/zmq_bench.py [--entities 10000] [--work /tmp/fs-bench]

Both stacks run at once (the CURVE one on a copy of the store) and every measurement
alternates between them in rounds, so the ratio compares like with like on a shared machine.
Floor measured in the same run: a bare pyzmq REQ/REP echo (separate process) of the same
bytes as a cached single-get reply, without and with CURVE. Writes bench/results/zmq.json.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zmq
from common import alternating, demo_store, report, store_copy

from featurestore import curve
from featurestore.client import Client
from featurestore.curve import load_client_keys
from featurestore.demo import entity_name
from featurestore.launcher import Stack, free_port
from featurestore.protocol import Op

BLOCK = 250  # requests per configuration before switching to the other


def echo_server(port: int, ready, server_secret: bytes | None) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    if server_secret is not None:  # CURVE without ZAP: the cipher's cost, not the check's
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, server_secret)
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


def bench_echo(payload: bytes, n: int, keys: Path) -> dict[str, tuple[float, float]]:
    """P50/P99 of a bare REQ/REP echo without and with CURVE, in alternating blocks."""
    secret = curve.read_pair(keys / "server.key_secret")[1]
    spawn = multiprocessing.get_context("spawn")
    context = zmq.Context()
    servers, sockets = [], {}
    for name, server_secret in (("plain", None), ("curve", secret)):
        port = free_port()
        ready = spawn.Event()
        server = spawn.Process(target=echo_server, args=(port, ready, server_secret))
        server.start()
        ready.wait(10)
        servers.append(server)
        socket = context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        if server_secret is not None:
            load_client_keys(keys).apply(socket)
        socket.connect(f"tcp://127.0.0.1:{port}")
        sockets[name] = socket
    samples: dict[str, list[float]] = {name: [] for name in sockets}
    for _, name in alternating(list(sockets), n // BLOCK):
        socket = sockets[name]
        for _ in range(BLOCK):
            started = time.perf_counter()
            socket.send(payload)
            socket.recv()
            samples[name].append(time.perf_counter() - started)
    for socket in sockets.values():
        socket.send(b"stop")
        socket.recv()
        socket.close()
    context.term()
    for server in servers:
        server.join(10)
    return {name: percentiles(s[n // 10 :]) for name, s in samples.items()}


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - started


def bench_stacks(data: Path, entities: int, workers: int, keys: Path) -> dict[str, dict]:
    """Latencies and batch rates through the client on two stacks at once, CURVE off
    ("plain") and on ("curve": ZMQ_CURVE_KEYS_DIR, the client's clients/client pair), each
    measurement taken in alternating rounds."""
    rng = np.random.default_rng(workers)
    env = {"CACHE_MAX_SIZE": str(entities * 2)}
    with contextlib.ExitStack() as running:
        plain = running.enter_context(Stack(data, workers=workers, env=env))
        secured = running.enter_context(
            Stack(
                store_copy(data, "curve"),
                workers=workers,
                env={**env, "ZMQ_CURVE_KEYS_DIR": str(keys)},
            )
        )
        clients = {
            "plain": running.enter_context(plain.client(curve=None)),
            "curve": running.enter_context(secured.client(curve=load_client_keys(keys))),
        }
        ids = [entity_name(i) for i in rng.permutation(entities)]
        samples = measure_alternating(clients, ids, entities)
        return {name: summary(clients[name], samples[name], ids) for name in clients}


def measure_alternating(
    clients: dict[str, Client], ids: list[str], entities: int
) -> dict[str, dict[str, list[float]]]:
    names = list(clients)
    samples: dict[str, dict[str, list[float]]] = {name: defaultdict(list) for name in names}
    # cold singles: entities never asked before (each stack has its own cache)
    for i, name in alternating(names, 500):
        samples[name]["cold"].append(timed(clients[name].get, ids[i]))
    # cached singles, in blocks
    for block, name in alternating(names, 5000 // BLOCK):
        get = clients[name].get
        for i in range(block * BLOCK, (block + 1) * BLOCK):
            samples[name]["warm"].append(timed(get, ids[i % 500]))
    # batches of 1,000: cold (fresh entities), then the same again (cached)
    for n, start in enumerate(range(500, min(entities, 500 + 5000), 1000)):
        chunk = ids[start : start + 1000]
        order = names if n % 2 == 0 else names[::-1]
        for kind, rounds in (("cold_batch", 1), ("warm_batch", 3)):
            for _, name in alternating(order, rounds):
                seconds = timed(clients[name].batch, chunk, arrays=True)
                samples[name][kind].append(len(chunk) / seconds)
    return samples


def summary(fs: Client, got: dict[str, list[float]], ids: list[str]) -> dict:
    r: dict = {}
    r["cold_get_p50_ms"], r["cold_get_p99_ms"] = percentiles(got["cold"])
    r["cached_get_p50_ms"], r["cached_get_p99_ms"] = percentiles(got["warm"][500:])
    r["batch_1000_cold_entities_per_s"] = float(np.median(got["cold_batch"]))
    r["batch_1000_cached_entities_per_s"] = float(np.median(got["warm_batch"]))
    reply = fs.request(Op.GET, {"entity_id": ids[0]})
    r["cached_reply_bytes"] = sum(len(f) for f in reply.encode())
    items_rate = len(ids[500:1500]) / timed(fs.batch, ids[500:1500])
    r["batch_1000_cached_items_entities_per_s"] = items_rate
    return r


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


def curve_keys(work: str) -> Path:
    """WORK/keys: the stack's CURVE keys, made the first time (`featurestore keys generate`)."""
    keys = Path(work) / "keys"
    if not (keys / "server.key_secret").exists():
        curve.generate_keys(keys)
    return keys


CURVE_COMPARED = (
    ("cached single get P50", "cached_get_p50_ms", "ms"),
    ("P99", "cached_get_p99_ms", "ms"),
    ("cold single get P50", "cold_get_p50_ms", "ms"),
    ("batch of 1,000 cached", "batch_1000_cached_entities_per_s", "/s"),
    ("cold", "batch_1000_cold_entities_per_s", "/s"),
    ("bare echo P50", "echo_p50_ms", "ms"),
)


def curve_line(plain: dict, secured: dict) -> str:
    """Each figure without -> with CURVE, and their ratio (> 1: CURVE costs that much)."""
    parts = []
    for label, key, unit in CURVE_COMPARED:
        off, on = plain[key], secured[key]
        if unit == "ms":
            parts.append(f"{label} {off:.3f} -> {on:.3f} ms ({on / off:.2f}x)")
        else:
            parts.append(f"{label} {off:,.0f} -> {on:,.0f}/s ({off / on:.2f}x)")
    return "CURVE cost (off -> on, same run): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default="/tmp/fs-bench")
    args = parser.parse_args()
    data = demo_store(args.work, args.entities)
    keys = curve_keys(args.work)
    measured = bench_stacks(data, args.entities, args.workers, keys)
    results, secured = measured["plain"], measured["curve"]
    echo = bench_echo(b"x" * results["cached_reply_bytes"], 5000, keys)
    results["echo_p50_ms"], results["echo_p99_ms"] = echo["plain"]
    secured["echo_p50_ms"], secured["echo_p99_ms"] = echo["curve"]
    results["curve"] = secured
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
        curve_line(results, secured),
    ]
    report("zmq", results, lines)


if __name__ == "__main__":
    main()
