"""POST /features, /features/batch, /features/historical; GET /features/stats, /definitions.

Cache hits are answered here from the shared-memory cache; misses go to the broker. A lookup
is counted once: the gateway peeks without counting and counts the hits it answers itself;
whatever it forwards is looked up (and counted) by the broker.
"""

from __future__ import annotations

import numpy as np
from sanic import Blueprint, HTTPResponse, Request

from featurestore.protocol import Op
from featurestore.queries import parse_batch, parse_get, parse_historical
from featurestore.results import FeatureBatch, single_body
from featurestore.timestamps import now_ms
from gateway.http import JSON, elapsed_ms, instrumented, json_body, json_response

features = Blueprint("features")


@features.post("/features", name="features")
@instrumented
async def get_features(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    body = json_body(request)
    plan = parse_get(body, gw.settings)
    query = plan.query
    if query.as_of_ms is None:
        hit = gw.cache.get(query.version, plan.entity_id, count=False)
        if hit is not None:
            gw.cache.count_lookups(hits=1)
            result = single_body(plan, hit[0], True, hit[1])
            result["latency_ms"] = elapsed_ms(request)
            return json_response(result)
    reply = await gw.call(Op.GET, body, request.ctx.rid)
    result = reply.body
    result["latency_ms"] = elapsed_ms(request)
    return json_response(result)


def _batch_response(request: Request, batch: FeatureBatch, t_ms: int) -> HTTPResponse:
    latency = elapsed_ms(request)
    count = len(batch.entity_ids)
    return json_response(
        {
            "count": count,
            "features": batch.items(),
            "latency_ms": latency,
            "avg_latency_per_entity": round(latency / count, 6),
            "timestamp": int(t_ms),
        }
    )


@features.post("/features/batch", name="features_batch")
@instrumented
async def get_batch(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    body = json_body(request)
    plan = parse_batch(body, gw.settings)
    query = plan.query
    if query.as_of_ms is None:
        values, as_of, hit = gw.cache.get_many(query.version, plan.entity_ids, count=False)
        if hit.all():
            gw.cache.count_lookups(hits=int(hit.size))
            view = query.view
            selected = values if view.all_columns else values[:, view.columns]
            batch = FeatureBatch(
                plan.entity_ids,
                query.version,
                view.names,
                selected,
                np.ones(hit.size, dtype=bool),
                hit,
                as_of,
            )
            return _batch_response(request, batch, now_ms())
    reply = await gw.call(Op.BATCH, body, request.ctx.rid)
    batch = FeatureBatch.from_reply(plan.entity_ids, reply.body, reply.blocks)
    return _batch_response(request, batch, reply.body["timestamp"])


@features.post("/features/historical", name="features_historical")
@instrumented
async def get_historical(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    body = json_body(request)
    plan = parse_historical(body, gw.settings)
    reply = await gw.call(Op.HISTORICAL, body, request.ctx.rid)
    # each row's T as epoch ms (an ISO string or 1.7e12 given in, an integer out)
    batch = FeatureBatch.from_reply(plan.entity_ids, reply.body, reply.blocks, plan.timestamps)
    return json_response(
        {"count": len(plan.entity_ids), "rows": batch.items(), "latency_ms": elapsed_ms(request)}
    )


@features.get("/features/stats", name="features_stats")
@instrumented
async def get_stats(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    reply = await gw.call(Op.STATS, {}, request.ctx.rid)
    return json_response(reply.body)


@features.get("/features/definitions", name="features_definitions")
@instrumented
async def get_definitions(request: Request) -> HTTPResponse:
    return HTTPResponse(request.app.ctx.gw.definitions_json, content_type=JSON)
