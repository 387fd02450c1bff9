"""Helpers of the HTTP integration tests: a stack with the Sanic gateway, an HTTP client with a
timeout on every request, checks of the JSON error shape and of feature maps, and a small parser
of the Prometheus text format.

Everything talks to real processes over real sockets; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from prometheus_client.multiprocess import MultiProcessCollector

from featurestore.features.registry import feature_set
from featurestore.ops.launcher import Stack, wait_for
from featurestore.ops.metrics_dir import metrics_dir
from gateway.metrics.recorder import REQUEST_DURATION

HTTP_TIMEOUT_S = 15.0
REQUEST_ID = "X-Request-Id"
JSON_TYPE = "application/json"


GATEWAY_WORKERS = 2  # the launcher's GATEWAY_WORKERS
READY_TIMEOUT_S = 30.0


@contextlib.contextmanager
def gateway_stack(data_dir: Path, **options) -> Iterator[Stack]:
    """A started stack with the gateway; only its own pids are stopped when the block ends."""
    stack = Stack(data_dir, gateway=True, **options)
    try:
        start_gateway_stack(stack)
        yield stack
    finally:
        stack.stop()


def start_gateway_stack(stack: Stack) -> Stack:
    """Start `stack` and wait until every gateway worker process serves: the launcher only
    waits for the port, which the Sanic main process opens before its workers are up."""
    stack.start()

    def all_gateway_workers() -> bool:
        try:
            with httpx.Client(base_url=stack.http_url, timeout=HTTP_TIMEOUT_S) as client:
                memory = client.get("/health").json()["memory"]
        except httpx.HTTPError:
            return False
        return all(f"gateway-{i}" in memory for i in range(GATEWAY_WORKERS))

    wait_for(all_gateway_workers, READY_TIMEOUT_S, "every gateway worker to serve")
    return stack


def http_client(stack: Stack, **options) -> httpx.Client:
    return httpx.Client(base_url=stack.http_url, timeout=HTTP_TIMEOUT_S, **options)


class Headers(dict):
    """Response headers, looked up case-insensitively (names are stored lower-cased)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:
        return super().get(name.lower(), default)


@dataclass
class RawResponse:
    status_code: int
    headers: Headers
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> object:
        return json.loads(self.content)


class RawHttp:
    """A minimal HTTP/1.1 client on asyncio streams, for hundreds of requests in flight:
    httpx's asyncio client spends ~20 ms of CPU per request once dozens of connections are
    open, so it, not the server, would be measured. `connections` keep-alive connections
    (or a new connection per request with keep_alive=False, so that every gateway process
    gets some), one request at a time on each; every exchange has a deadline."""

    def __init__(self, url: str, connections: int = 64, keep_alive: bool = True) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.keep_alive = keep_alive
        self.slots: asyncio.Queue = asyncio.Queue()
        for _ in range(connections):
            self.slots.put_nowait(None)  # opened on first use

    async def request(
        self, method: str, path: str, body: object = None, headers: dict | None = None
    ) -> RawResponse:
        payload = b"" if body is None else json.dumps(body).encode()
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines += [f"Content-Length: {len(payload)}", "Content-Type: application/json"]
        if not self.keep_alive:
            lines.append("Connection: close")
        message = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
        connection = await self.slots.get()
        try:
            if connection is None:
                connection = await asyncio.open_connection(self.host, self.port)
            response = await asyncio.wait_for(_exchange(*connection, message), HTTP_TIMEOUT_S)
        except BaseException:
            if connection is not None:
                connection[1].close()
            self.slots.put_nowait(None)
            raise
        if self.keep_alive and response.headers.get("connection") != "close":
            self.slots.put_nowait(connection)
        else:
            connection[1].close()
            self.slots.put_nowait(None)
        return response

    async def close(self) -> None:
        while not self.slots.empty():
            connection = self.slots.get_nowait()
            if connection is not None:
                connection[1].close()

    async def __aenter__(self) -> RawHttp:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
) -> RawResponse:
    writer.write(message)
    await writer.drain()
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = Headers()
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    content = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawResponse(int(status_line.split()[1]), headers, content)


def ok_json(response: httpx.Response | RawResponse) -> dict:
    """The body of a 200 JSON answer (with its request id); fails with the body otherwise."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == JSON_TYPE
    assert response.headers[REQUEST_ID]
    return response.json()


def error_json(response: httpx.Response | RawResponse, status: int, code: str) -> dict:
    """The body of an error answer in the JSON shape of SPEC §5, after checking it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON_TYPE
    assert response.headers[REQUEST_ID]
    body = response.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str)
    assert body["message"]
    return body


def check_feature_types(features: dict, version: str = "v1") -> None:
    """int features are JSON integers, float features JSON floats, nulls None."""
    features_of = feature_set(version)
    kinds = dict(zip(features_of.names, features_of.int_mask.tolist(), strict=True))
    for name, value in features.items():
        if value is None:
            continue
        if kinds[name]:
            assert type(value) is int, (name, value)
        else:
            assert type(value) is float, (name, value)
            assert math.isfinite(value)


def as_vector(features: dict) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in features.values()])


# ---------------------------------------------------------------------- Prometheus text
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>{_LABEL}(?:,{_LABEL})*)?\}})? "
    r"(?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?|\.[0-9]+|Inf|NaN))$"
)
_TYPE = re.compile(rf"^# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)$")
_HELP = re.compile(rf"^# HELP ({_NAME}) .*$")
_LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> tuple[dict[str, str], list[tuple[str, dict, float]]]:
    """(metric -> type, samples) of a text exposition (0.0.4); AssertionError on a bad line,
    a sample before its TYPE, or a family declared twice."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: list[tuple[str, dict, float]] = []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE"):
            match = _TYPE.match(line)
            assert match, line
            assert match[1] not in types, f"TYPE of {match[1]} declared twice"
            types[match[1]] = match[2]
            continue
        if line.startswith("#"):
            assert _HELP.match(line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(_LABEL_PAIR.findall(match["labels"] or ""))
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or family in types, f"sample {name} before its TYPE"
        samples.append((name, labels, float(match["value"])))
    return types, samples


def counts_per_server(stack: Stack, endpoint: str) -> dict[int, float]:
    """Requests of `endpoint` counted by each gateway server, alive or dead: its pid -> the
    count in its own file of the stack's multiprocess directory."""
    directory = metrics_dir(stack.settings.cache_name)
    counts = {}
    for path in directory.glob("histogram_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        counts[pid] = sum(
            s.value
            for s in samples
            if s.name == f"{REQUEST_DURATION}_count" and s.labels["endpoint"] == endpoint
        )
    return counts


def histogram_count(samples: list, metric: str, **labels: str) -> float:
    """The `_count` of one labelled histogram series."""
    values = [
        value
        for name, got, value in samples
        if name == f"{metric}_count" and all(got.get(k) == v for k, v in labels.items())
    ]
    assert len(values) == 1, (metric, labels, values)
    return values[0]
