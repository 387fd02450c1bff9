"""ZeroMQ serving benchmarks (issues 4 and 10), through the shipped `Client` against a real
stack; then the cost of CURVE (ZMQ_CURVE_KEYS_DIR) in the same run.

    python bench/zmq_bench.py [--entities 10000] [--work /tmp/fs-bench]

Floor measured in the same run: a bare pyzmq REQ/REP echo (separate process) of the same
bytes as a cached single-get reply. The CURVE line compares a stack without and one with
CURVE running at once (the second on a copy of the store), every measurement alternating
between them in rounds (and so the two echo floors), so that the ratio compares like with
like on a shared machine; its absolute figures are not the headline ones (two stacks share
the CPU caches). Writes bench/results/zmq.json.
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

from featurestore.offline.demo import entity_name
from featurestore.ops.launcher import Stack, free_port
from featurestore.security import curve
from featurestore.security.curve import CurveClient, load_client_keys
from featurestore.wire.client import Client
from featurestore.wire.frames import Op

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


def bench_echo(
    payload: bytes, n: int, servers: dict[str, bytes | None], keys: CurveClient | None = None
) -> dict[str, tuple[float, float]]:
    """P50/P99 of a bare REQ/REP echo per server (name -> its CURVE secret key, or None),
    several in alternating blocks; `keys`: the client's, for the CURVE ones."""
    spawn = multiprocessing.get_context("spawn")
    context = zmq.Context()
    processes, sockets = [], {}
    for name, server_secret in servers.items():
        port = free_port()
        ready = spawn.Event()
        process = spawn.Process(target=echo_server, args=(port, ready, server_secret))
        process.start()
        ready.wait(10)
        processes.append(process)
        socket = context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        curve.secure_client(socket, None if server_secret is None else keys)
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
    for process in processes:
        process.join(10)
    return {name: percentiles(s[n // 10 :]) for name, s in samples.items()}


def timed(call: Callable[..., object], *args: object, **kwargs: object) -> float:
    started = time.perf_counter()
    call(*args, **kwargs)
    return time.perf_counter() - started


Config = tuple[dict[str, str], CurveClient | None]  # the stack's extra env, the client's keys


def bench_stacks(
    data: Path, entities: int, workers: int, configs: dict[str, Config]
) -> dict[str, dict]:
    """Latencies and batch rates through the client, one stack per configuration, all
    running at once (the first on `data`, the others on copies of it), every measurement
    taken in alternating rounds. One configuration: the plain sequential measurement."""
    rng = np.random.default_rng(workers)
    env = {"CACHE_MAX_SIZE": str(entities * 2)}
    with contextlib.ExitStack() as running:
        clients = {}
        for n, (name, (extra, keys)) in enumerate(configs.items()):
            store = data if n == 0 else store_copy(data, name)
            stack = running.enter_context(Stack(store, workers=workers, env={**env, **extra}))
            clients[name] = running.enter_context(stack.client(curve=keys))
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
    # the reply's body and array blocks (its envelope adds a few bytes of ids and status)
    r["cached_reply_bytes"] = len(reply.raw) + sum(len(block) for block in reply.blocks)
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
                fs.submit(Op.BATCH, {"entity_ids": ids[s : s + 500]}, timeout_ms=60_000)
                for s in range(0, 4000, 500)
            ]
            for reply in fs.collect(wanted):
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
    return "CURVE cost (off -> on, two stacks at once, alternating): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--work", default="/tmp/fs-bench")
    args = parser.parse_args()
    data = demo_store(args.work, args.entities)
    plain: Config = ({}, None)
    results = bench_stacks(data, args.entities, args.workers, {"plain": plain})["plain"]
    payload = b"x" * results["cached_reply_bytes"]
    results["echo_p50_ms"], results["echo_p99_ms"] = bench_echo(payload, 5000, {"plain": None})[
        "plain"
    ]
    # CURVE off and on side by side: two stacks at once, alternating
    keys = curve_keys(args.work)
    secured: Config = ({"ZMQ_CURVE_KEYS_DIR": str(keys)}, load_client_keys(keys))
    compared = bench_stacks(data, args.entities, args.workers, {"plain": plain, "curve": secured})
    secret = curve.read_pair(keys / "server.key_secret")[1]
    echo = bench_echo(payload, 5000, {"plain": None, "curve": secret}, secured[1])
    for name in compared:
        compared[name]["echo_p50_ms"], compared[name]["echo_p99_ms"] = echo[name]
    results["curve_comparison"] = compared
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
        curve_line(compared["plain"], compared["curve"]),
    ]
    report("zmq", results, lines)


if __name__ == "__main__":
    main()
