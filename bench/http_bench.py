"""HTTP benchmarks (issue 5): the gateway against a bare Sanic endpoint, in one run.

    python bench/http_bench.py [--entities 10000] [--work /tmp/fs-bench] [--duration 10]

Clients, named: latency and batches use `RawHttp` below (one keep-alive socket, request
bytes prepared once, the response body read by Content-Length, not parsed); throughput uses
wrk (Debian package `wrk`) with 64 connections. Each floor is measured with the same client.
Writes bench/results/http.json.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
from common import demo_store, report

from featurestore.demo import entity_name
from featurestore.launcher import Stack, free_port, wait_for


class RawHttp:
    """A minimal HTTP/1.1 keep-alive client: as little client work as possible."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    @staticmethod
    def request(path: str, body: bytes) -> bytes:
        return (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
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


def timed(client: RawHttp, requests: list[bytes]) -> list[float]:
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


def wrk(port: int, path: str, body: bytes, duration: int, connections: int = 64) -> float:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
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


def measure_gateway(data: Path, ids: list[str], args: argparse.Namespace) -> tuple[dict, bytes]:
    r: dict = {}
    env = {"GATEWAY_WORKERS": str(args.gateway_workers), "CACHE_MAX_SIZE": str(args.entities * 2)}
    with Stack(data, workers=4, gateway=True, env=env) as stack:
        port = stack.settings.port
        http = RawHttp(port)
        single = [RawHttp.request("/features", orjson.dumps({"entity_id": e})) for e in ids]
        cold = timed(http, single[:300])
        r["cold_single_p50_ms"], r["cold_single_p99_ms"] = pct(cold, 50), pct(cold, 99)
        cached = timed(http, [single[i % 100] for i in range(6000)])[1000:]
        r["cached_single_p50_ms"] = pct(cached, 50)
        r["cached_single_p95_ms"] = pct(cached, 95)
        r["cached_single_p99_ms"] = pct(cached, 99)
        _, sample_body = http.send(single[0])
        for size in (100, 1000):
            rates: dict[str, list[float]] = {"cold": [], "cached": []}
            for start in range(300, 300 + 4 * size, size):
                request = RawHttp.request(
                    "/features/batch", orjson.dumps({"entity_ids": ids[start : start + size]})
                )
                for kind in ("cold", "cached", "cached"):
                    rates[kind].append(size / sum(timed(http, [request])))
            r[f"batch_{size}_cold_entities_per_s"] = float(np.median(rates["cold"]))
            r[f"batch_{size}_cached_entities_per_s"] = float(np.median(rates["cached"]))
        http.close()
        r["cached_throughput_rps"] = wrk(
            port, "/features", orjson.dumps({"entity_id": ids[0]}), args.duration
        )
    return r, sample_body


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
    measured, body = measure_gateway(data, ids, args)
    r.update(measured)
    r.update(measure_bare(body, orjson.dumps({"entity_id": ids[0]}), args))
    lines = result_lines(r)
    report("http", r, lines)


if __name__ == "__main__":
    main()
