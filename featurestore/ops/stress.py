"""`featurestore bench stress`: a mixed HTTP load against a running service.

Many concurrent keep-alive connections (asyncio streams, no client library in the way) send a
weighted mix: cached and cold single gets, batches, historical rows, ingests, stats and drift
reports. Reports requests/s, the error count (must be 0), P50/P99 per operation, and the RSS
of every process (from /health) at 10 s and at the end.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import orjson

from featurestore.timestamps import now_ms

RSS_CHECKPOINT_S = 10.0
REQUEST_TIMEOUT_S = 10.0
HOT_ENTITIES = 200


@dataclass
class Outcome:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)


class Connection:
    """One HTTP/1.1 keep-alive connection."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.host, self.port = host, port
        self.auth = "" if token is None else f"Authorization: Bearer {token}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        payload = body or b""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return int(status_line[9:12]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class Mix:
    """The operations and their weights; each returns (name, method, path, body)."""

    def __init__(self, entity_ids: list[str], seed: int) -> None:
        self.ids = entity_ids
        self.hot = entity_ids[:HOT_ENTITIES]
        self.random = random.Random(seed)
        self.operations = [
            (40, self.cached_get),
            (10, self.cold_get),
            (10, self.batch),
            (5, self.historical),
            (10, self.ingest),
            (3, self.stats),
            (2, self.drift_report),
        ]
        self.weights = [w for w, _ in self.operations]

    def next(self) -> tuple[str, str, str, bytes | None]:
        operation = self.random.choices(self.operations, self.weights)[0][1]
        return operation()

    def cached_get(self):
        body = {"entity_id": self.random.choice(self.hot)}
        return "get_cached", "POST", "/features", orjson.dumps(body)

    def cold_get(self):
        as_of = now_ms() - self.random.randint(0, 60_000)  # after every event: never cached
        body = {"entity_id": self.random.choice(self.ids), "as_of": as_of}
        return "get_cold", "POST", "/features", orjson.dumps(body)

    def batch(self):
        body = {"entity_ids": self.random.sample(self.ids, min(100, len(self.ids)))}
        return "batch_100", "POST", "/features/batch", orjson.dumps(body)

    def historical(self):
        now = now_ms()
        rows = [
            {
                "entity_id": self.random.choice(self.ids),
                "timestamp": now - self.random.randint(0, 90 * 86_400_000),
            }
            for _ in range(20)
        ]
        return "historical_20", "POST", "/features/historical", orjson.dumps({"rows": rows})

    def ingest(self):
        now = now_ms()
        events = [
            {
                "entity_id": self.random.choice(self.ids),
                "timestamp": now,
                "value": self.random.gauss(50, 10),
                "category": "cat_a",
            }
            for _ in range(10)
        ]
        return "ingest_10", "POST", "/events", orjson.dumps({"events": events})

    def stats(self):
        return "stats", "GET", "/features/stats", None

    def drift_report(self):
        return "drift_report", "GET", "/drift/report", None


async def _client(connection: Connection, mix: Mix, deadline: float, outcome: Outcome) -> None:
    try:
        while time.monotonic() < deadline:
            name, method, path, body = mix.next()
            started = time.perf_counter()
            try:
                status, data = await asyncio.wait_for(
                    connection.request(method, path, body), REQUEST_TIMEOUT_S
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                connection.close()
                outcome.errors[name] += 1
                outcome.error_samples.append(f"{name}: {type(exc).__name__}")
                continue
            outcome.latencies[name].append(time.perf_counter() - started)
            if status != 200:
                outcome.errors[name] += 1
                if len(outcome.error_samples) < 20:
                    outcome.error_samples.append(f"{name}: HTTP {status} {data[:200]!r}")
    finally:
        connection.close()


async def _memory(host: str, port: int) -> dict[str, int]:
    connection = Connection(host, port)
    try:
        status, data = await connection.request("GET", "/health")
        return orjson.loads(data).get("memory", {}) if status in (200, 503) else {}
    finally:
        connection.close()


async def run_stress(
    host: str,
    port: int,
    entity_ids: list[str],
    *,
    duration_s: float,
    concurrency: int,
    seed: int = 1,
    token: str | None = None,
) -> dict:
    """The mixed load; `token`: a write bearer token when the gateway has API_TOKENS_FILE."""
    outcome = Outcome()
    started = time.monotonic()
    deadline = started + duration_s
    tasks = [
        asyncio.create_task(
            _client(Connection(host, port, token), Mix(entity_ids, seed + i), deadline, outcome)
        )
        for i in range(concurrency)
    ]
    await asyncio.sleep(min(RSS_CHECKPOINT_S, duration_s))  # the 10 s checkpoint itself
    rss_early = await _memory(host, port)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - started
    rss_end = await _memory(host, port)
    return summarise(
        outcome, elapsed, rss_early=rss_early, rss_end=rss_end, concurrency=concurrency
    )


def summarise(
    outcome: Outcome, elapsed: float, rss_early: dict, rss_end: dict, concurrency: int
) -> dict:
    operations = {}
    total = 0
    for name, samples in sorted(outcome.latencies.items()):
        ms = np.array(samples) * 1000
        total += len(samples)
        operations[name] = {
            "count": len(samples),
            "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)),
            "errors": outcome.errors.get(name, 0),
        }
    memory = {
        name: {
            "rss_10s": rss_early.get(name),
            "rss_end": rss_end.get(name),
            "ratio": (
                rss_end[name] / rss_early[name]
                if rss_early.get(name) and rss_end.get(name)
                else None
            ),
        }
        for name in sorted(set(rss_early) | set(rss_end))
    }
    return {
        "duration_s": elapsed,
        "concurrency": concurrency,
        "requests": total,
        "requests_per_s": total / elapsed,
        "errors": sum(outcome.errors.values()),
        "error_samples": outcome.error_samples[:20],
        "operations": operations,
        "memory": memory,
    }


def report_lines(result: dict) -> list[str]:
    lines = [
        f"stress: {result['requests']:,} requests in {result['duration_s']:.1f} s "
        f"({result['requests_per_s']:,.0f} req/s) with {result['concurrency']} clients, "
        f"errors: {result['errors']}"
    ]
    for name, op in result["operations"].items():
        lines.append(
            f"  {name:<14} {op['count']:>8,}  P50 {op['p50_ms']:8.2f} ms  "
            f"P99 {op['p99_ms']:8.2f} ms  errors {op['errors']}"
        )
    for name, mem in result["memory"].items():
        ratio = f"{mem['ratio']:.3f}" if mem["ratio"] else "n/a"
        lines.append(
            f"  rss {name:<12} 10 s {_mib(mem['rss_10s'])}  end {_mib(mem['rss_end'])}"
            f"  end/10 s {ratio} (target <= 1.1)"
        )
    lines += [f"  error: {sample}" for sample in result["error_samples"]]
    return lines


def _mib(value: int | None) -> str:
    return "   n/a   " if value is None else f"{value / 2**20:7.1f} MiB"
