"""GET /health, POST /cache/clear, GET /metrics, GET /openapi.json, and the drift routes."""

from __future__ import annotations

import os

import msgspec
import psutil
from sanic import Blueprint, HTTPResponse, Request

from featurestore.errors import ServiceError
from featurestore.nearcache import listener_health
from featurestore.validation.decoding import decoded_http
from featurestore.wire.frames import Op
from featurestore.wire.messages import Cleared, EmptyRequest
from gateway.auth import open_route, writes
from gateway.http import JSON, instrumented, json_response, raw_response
from gateway.metrics.exposition import CONTENT_TYPE, live_servers, render

system = Blueprint("system")
HEALTH_TIMEOUT_MS = 1000


def gateway_memory(pids: list[int]) -> dict[str, int]:
    """RSS of the gateway's processes: the Sanic main process and each worker."""
    memory: dict[str, int] = {}
    for name, pid in [
        ("gateway", os.getppid()),
        *((f"gateway-{i}", pid) for i, pid in enumerate(sorted(pids))),
    ]:
        try:
            memory[name] = psutil.Process(pid).memory_info().rss
        except psutil.Error:
            continue
    return memory


async def _ask(gw, op: Op, request_id: str):
    """A broker operation without fields, with the short deadline of health checks."""
    return await gw.call(op, EmptyRequest(), request_id, timeout_ms=HEALTH_TIMEOUT_MS)


@system.get("/health", name="health")
@instrumented
@open_route
async def health(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    try:
        body = (await _ask(gw, Op.HEALTH, request.ctx.rid)).body
    except ServiceError:
        body = {
            "status": "down",
            "workers": {"alive": 0, "expected": gw.settings.max_workers},
            "broker": "down",
            "drift": "down",
            "cache": "ok",
            "store": "ok",  # not observable without the broker
            "memory": {},
            **local_store_health(gw),
        }
    add_gateway_health(request, body)
    if body["status"] == "ok" and body["gateway"]["alive"] < gw.settings.gateway_workers:
        body["status"] = "degraded"  # a dead HTTP server is being replaced
    body["uptime_s"] = body.get("uptime_s", 0.0)
    return json_response(body, 503 if body["status"] == "down" else 200)


def local_store_health(gw) -> dict:
    """What the gateway knows of the store without the broker: its backend, and this host's
    listener, which writes its state in the cache segment that the gateway attaches too."""
    body: dict = {"store_backend": gw.settings.store_backend}
    if gw.settings.shared_store:
        listener = listener_health(gw.cache, gw.settings.max_staleness_ms)
        body["listener"] = msgspec.to_builtins(listener)
    return body


def add_gateway_health(request: Request, body: dict) -> None:
    """The gateway's part of a health answer: its HTTP servers that serve, and its memory."""
    servers = live_servers(request.app.ctx.metrics.directory)
    body["gateway"] = {"alive": len(servers), "expected": request.app.ctx.settings.gateway_workers}
    body["memory"] = {**gateway_memory(servers), **body.get("memory", {})}


@system.post("/cache/clear", name="cache_clear")
@instrumented
@writes
async def clear_cache(request: Request) -> HTTPResponse:
    return json_response(Cleared(request.app.ctx.gw.cache.clear()))


@system.get("/metrics", name="metrics")
@instrumented
async def metrics(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    try:
        stats = (await _ask(gw, Op.STATS, request.ctx.rid)).body
        health = (await _ask(gw, Op.HEALTH, request.ctx.rid)).body
    except ServiceError:  # the broker did not answer: the gateway's own figures
        stats, health = None, local_store_health(gw)
    add_gateway_health(request, health)
    recorded = request.app.ctx.metrics
    versions = {
        name: (features.content_hash, len(features.features))
        for name, features in gw.settings.definitions.versions.items()
    }
    text = render(recorded.directory, recorded.endpoints(), stats, health, versions)
    return HTTPResponse(text, content_type=CONTENT_TYPE)


@system.get("/openapi.json", name="openapi")
@instrumented
async def openapi(request: Request) -> HTTPResponse:
    return HTTPResponse(request.app.ctx.gw.openapi_json, content_type=JSON)


@system.get("/drift/report", name="drift_report")
@instrumented
async def drift_report(request: Request) -> HTTPResponse:
    reply = await request.app.ctx.gw.call(Op.DRIFT_REPORT, EmptyRequest(), request.ctx.rid)
    return raw_response(reply)


@system.post("/drift/baseline", name="drift_baseline")
@instrumented
@writes
async def drift_baseline(request: Request) -> HTTPResponse:
    body = decoded_http(Op.DRIFT_BASELINE, request.body)
    return raw_response(await request.app.ctx.gw.call(Op.DRIFT_BASELINE, body, request.ctx.rid))
