"""HTTP benchmarks (issues 5 and 10): the gateway against a bare Sanic endpoint, in one run;
then the cost of security: an open stack and a secured one (bearer tokens, API_TOKENS_FILE,
and CURVE between the processes, ZMQ_CURVE_KEYS_DIR) running at once (the second on a copy
of the store), every measurement alternating between them, their ratios printed (their
absolute figures are not the headline ones: two stacks share the CPU caches).

    python bench/http_bench.py [--entities 10000] [--work /tmp/fs-bench] [--duration 10]

Clients, named: latency and batches use `RawHttp` below (one keep-alive socket, request
bytes prepared once, the response body read by Content-Length, not parsed); throughput uses
wrk (Debian package `wrk`) with 64 connections. Each floor is measured with the same client;
on the secured stack both clients send a read token. Writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import numpy as np
import orjson
from common import alternating, demo_store, report, store_copy

from featurestore.offline.demo import entity_name
from featurestore.ops.launcher import Stack, free_port, wait_for
from featurestore.security import curve
from featurestore.security.tokens import Scope, TokenEntry, TokenTable, add_token, digest, new_token
from gateway.auth import authorize


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client: as little client work as possible."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def request(path: str, body: bytes, token: str | None = None) -> bytes:
        auth = "" if token is None else f"Authorization: Bearer {token}\r\n"
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{auth}Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def send(self, request: bytes) -> tuple[int, bytes]:
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self.sock.recv(65536)
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        while len(rest) < length:
            rest += self.sock.recv(max(65536, length - len(rest)))
        self.buffer = rest[length:]
        return status, rest[:length]

    def close(self) -> None:
        self.sock.close()


class RawHttpPool:
    """`connections` RawHttp connections taken in turn, so that the requests of a comparison
    land on every Sanic worker of a gateway (one connection stays on one of them)."""

    def __init__(self, port: int, connections: int) -> None:
        self.clients = [RawHttp(port) for _ in range(connections)]
        self.turn = itertools.cycle(self.clients)

    def send(self, request: bytes) -> tuple[int, bytes]:
        return next(self.turn).send(request)

    def close(self) -> None:
        for client in self.clients:
            client.close()


def timed(client: RawHttp | RawHttpPool, requests: list[bytes]) -> list[float]:
    samples = []
    for request in requests:
        started = time.perf_counter()
        status, _ = client.send(request)
        samples.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
    return samples


def pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1e3, q))


def wrk(
    port: int,
    path: str,
    body: bytes,
    duration: int,
    *,
    connections: int = 64,
    token: str | None = None,
) -> float:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    auth = "" if token is None else f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"{auth}wrk.body = {json.dumps(body.decode())}\n"
    )
    done = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=True,
    )
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} errors:\n{done.stdout}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))


def start_bare(port: int, workers: int, body: bytes) -> subprocess.Popen:
    body_file = Path(tempfile.mkdtemp()) / "body.json"
    body_file.write_bytes(body)
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent / "bare_sanic.py"),
            str(port),
            str(workers),
            str(body_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )

    def up() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    wait_for(up, 30, "the bare Sanic endpoint")
    return process


def secured_env(work: str) -> tuple[dict[str, str], str]:
    """The environment of a secured stack (CURVE keys, a tokens file) and a read token."""
    secrets = Path(work) / "secrets"
    shutil.rmtree(secrets, ignore_errors=True)
    curve.generate_keys(secrets / "keys")
    token = add_token(secrets / "tokens.toml", "bench", Scope.READ)
    env = {
        "ZMQ_CURVE_KEYS_DIR": str(secrets / "keys"),
        "API_TOKENS_FILE": str(secrets / "tokens.toml"),
    }
    return env, token


Config = tuple[dict[str, str], str | None]  # the stack's extra env, the client's token
BLOCK = 250  # requests on one gateway before switching to the other
WRK_ROUNDS = 3  # wrk runs per configuration when comparing (alternating), their median kept
COMPARE_CONNECTIONS = 8  # keep-alive connections per gateway when comparing, used in turn


def measure_gateways(
    data: Path, ids: list[str], args: argparse.Namespace, configs: dict[str, Config]
) -> tuple[dict[str, dict], bytes]:
    """The gateway's figures, one stack per configuration, all running at once (the first
    on `data`, the others on copies of it), every measurement taken in alternating rounds
    (one configuration: the plain sequential measurement). Also the bytes of the first
    one's cached answer, for the bare floor."""
    env = {"GATEWAY_WORKERS": str(args.gateway_workers), "CACHE_MAX_SIZE": str(args.entities * 2)}
    tokens = {name: token for name, (_, token) in configs.items()}
    names = list(configs)
    with contextlib.ExitStack() as running:
        stacks = {}
        for n, (name, (extra, _)) in enumerate(configs.items()):
            store = data if n == 0 else store_copy(data, name)
            stacks[name] = running.enter_context(
                Stack(store, workers=4, gateway=True, env={**env, **extra})
            )
        connections = 1 if len(names) == 1 else COMPARE_CONNECTIONS
        https = {
            name: RawHttpPool(stack.settings.port, connections) for name, stack in stacks.items()
        }
        for http in https.values():
            running.callback(http.close)
        samples = latencies(https, tokens, ids)
        samples.update(batch_rates(https, tokens, ids))
        body = orjson.dumps({"entity_id": ids[0]})
        _, sample_body = https[names[0]].send(RawHttp.request("/features", body, tokens[names[0]]))
        rounds = 1 if len(names) == 1 else WRK_ROUNDS
        rps: dict[str, list[float]] = {name: [] for name in names}
        for _, name in alternating(names, rounds):
            port = stacks[name].settings.port
            duration = max(2, args.duration // rounds)
            rps[name].append(wrk(port, "/features", body, duration, token=tokens[name]))
    out = {}
    for name in names:
        r = {key: value[name] for key, value in samples.items()}
        r["cached_throughput_rps"] = float(np.median(rps[name]))
        out[name] = r
    return out, sample_body


def latencies(
    https: dict[str, RawHttpPool], tokens: dict[str, str | None], ids: list[str]
) -> dict[str, dict[str, float]]:
    single = {
        name: [
            RawHttp.request("/features", orjson.dumps({"entity_id": e}), tokens[name]) for e in ids
        ]
        for name in https
    }
    cold: dict[str, list[float]] = {name: [] for name in https}
    cached: dict[str, list[float]] = {name: [] for name in https}
    for i, name in alternating(list(https), 300):
        cold[name] += timed(https[name], [single[name][i]])
    for block, name in alternating(list(https), 6000 // BLOCK):
        requests = [single[name][j % 100] for j in range(block * BLOCK, (block + 1) * BLOCK)]
        cached[name] += timed(https[name], requests)
    warm = {name: samples[len(samples) // 6 :] for name, samples in cached.items()}  # warm-up
    return {
        "cold_single_p50_ms": {n: pct(cold[n], 50) for n in https},
        "cold_single_p99_ms": {n: pct(cold[n], 99) for n in https},
        "cached_single_p50_ms": {n: pct(warm[n], 50) for n in https},
        "cached_single_p95_ms": {n: pct(warm[n], 95) for n in https},
        "cached_single_p99_ms": {n: pct(warm[n], 99) for n in https},
    }


def batch_rates(
    https: dict[str, RawHttpPool], tokens: dict[str, str | None], ids: list[str]
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for size in (100, 1000):
        rates: dict[str, dict[str, list[float]]] = {
            name: {"cold": [], "cached": []} for name in https
        }
        for n, start in enumerate(range(300, 300 + 4 * size, size)):
            body = orjson.dumps({"entity_ids": ids[start : start + size]})
            order = list(https) if n % 2 == 0 else list(https)[::-1]
            for name in order:
                request = RawHttp.request("/features/batch", body, tokens[name])
                for kind in ("cold", "cached", "cached"):
                    rates[name][kind].append(size / sum(timed(https[name], [request])))
        for kind in ("cold", "cached"):
            out[f"batch_{size}_{kind}_entities_per_s"] = {
                name: float(np.median(rates[name][kind])) for name in https
            }
    return out


def measure_bare(body: bytes, request_body: bytes, args: argparse.Namespace) -> dict:
    port = free_port()
    bare = start_bare(port, args.gateway_workers, body)
    try:
        http = RawHttp(port)
        floor = timed(http, [RawHttp.request("/features", request_body)] * 6000)[1000:]
        http.close()
        return {
            "bare_p50_ms": pct(floor, 50),
            "bare_p95_ms": pct(floor, 95),
            "bare_p99_ms": pct(floor, 99),
            "bare_throughput_rps": wrk(port, "/features", request_body, args.duration),
        }
    finally:
        bare.terminate()
        bare.wait(10)


def result_lines(r: dict) -> list[str]:
    return [
        f"cached single (HTTP, concurrency 1, RawHttp): P50 {r['cached_single_p50_ms']:.3f} P95 "
        f"{r['cached_single_p95_ms']:.3f} P99 {r['cached_single_p99_ms']:.3f} ms | bare Sanic "
        f"P50 {r['bare_p50_ms']:.3f} P95 {r['bare_p95_ms']:.3f} P99 {r['bare_p99_ms']:.3f} ms | "
        f"ratio {r['cached_single_p50_ms'] / r['bare_p50_ms']:.2f}x "
        "(targets P50 <= 0.5, P99 <= 1.5 ms, <= 2x)",
        f"cold single (HTTP): P50 {r['cold_single_p50_ms']:.3f} ms P99 "
        f"{r['cold_single_p99_ms']:.3f} ms (target P50 <= 2 ms)",
        f"cached throughput (wrk -c64): {r['cached_throughput_rps']:,.0f} req/s | bare Sanic "
        f"{r['bare_throughput_rps']:,.0f} req/s | ratio "
        f"{r['cached_throughput_rps'] / r['bare_throughput_rps']:.2f} (targets >= 5,000, >= 0.75)",
        f"batch 100: cached {r['batch_100_cached_entities_per_s']:,.0f} / cold "
        f"{r['batch_100_cold_entities_per_s']:,.0f} entities/s; batch 1,000: cached "
        f"{r['batch_1000_cached_entities_per_s']:,.0f} / cold "
        f"{r['batch_1000_cold_entities_per_s']:,.0f} entities/s (targets 200,000 / 50,000)",
    ]


SECURED_COMPARED = (
    ("cached single P50", "cached_single_p50_ms", "ms"),
    ("P99", "cached_single_p99_ms", "ms"),
    ("cached throughput", "cached_throughput_rps", "/s"),
    ("cold single P50", "cold_single_p50_ms", "ms"),
    ("batch 1,000 cached", "batch_1000_cached_entities_per_s", "/s"),
    ("cold", "batch_1000_cold_entities_per_s", "/s"),
)


def token_check_us(calls: int = 200_000) -> float:
    """What the gateway adds per request with tokens on (gateway.auth.authorize: header split,
    SHA-256, dict lookup), in this process: steadier than any end-to-end difference."""
    token = new_token()
    table = TokenTable([TokenEntry("bench", Scope.READ, digest(token))])
    header = f"Bearer {token}"
    seconds = timeit.timeit(lambda: authorize(header, table, Scope.READ), number=calls)
    return seconds / calls * 1e6


def secured_line(plain: dict, secured: dict) -> str:
    """Each figure open -> secured, and their ratio (> 1: security costs that much)."""
    parts = []
    for label, key, unit in SECURED_COMPARED:
        off, on = plain[key], secured[key]
        if unit == "ms":
            parts.append(f"{label} {off:.3f} -> {on:.3f} ms ({on / off:.2f}x)")
        else:
            parts.append(f"{label} {off:,.0f} -> {on:,.0f}/s ({off / on:.2f}x)")
    return (
        "tokens + CURVE cost (off -> on, two stacks at once, alternating): "
        + "; ".join(parts)
        + f"; token check {secured['token_check_us']:.2f} us per request in-process"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000)
    parser.add_argument("--work", default="/tmp/fs-bench")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--gateway-workers", type=int, default=2)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed for the throughput lines: apt-get install wrk")
    data = demo_store(args.work, args.entities)
    ids = [entity_name(i) for i in np.random.default_rng(5).permutation(args.entities)]
    r: dict = {
        "client_latency": "RawHttp (keep-alive socket, body not parsed)",
        "client_throughput": "wrk -t2 -c64",
    }
    plain: Config = ({}, None)
    measured, body = measure_gateways(data, ids, args, {"plain": plain})
    r.update(measured["plain"])
    r.update(measure_bare(body, orjson.dumps({"entity_id": ids[0]}), args))
    # tokens and CURVE off and on side by side: two stacks at once, alternating
    secured: Config = secured_env(args.work)
    r["secured_comparison"], _ = measure_gateways(
        data, ids, args, {"plain": plain, "secured": secured}
    )
    compared = r["secured_comparison"]
    compared["secured"]["token_check_us"] = token_check_us()
    lines = [*result_lines(r), secured_line(compared["plain"], compared["secured"])]
    report("http", r, lines)


if __name__ == "__main__":
    main()
