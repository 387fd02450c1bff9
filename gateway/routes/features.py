"""POST /features, /features/batch, /features/historical; GET /features/stats, /definitions.

Each body is decoded once into its request type and checked once. Cache hits are answered
here from the shared-memory cache (each lookup counted here, hit or miss); only what missed
travels to the broker, as a ComputeRequest of the distinct missing entities (or the
validated rows of a historical request), which it routes without parsing it again.
"""

from __future__ import annotations

import numpy as np
from sanic import Blueprint, HTTPResponse, Request

from featurestore.errors import Code, ServiceError
from featurestore.timestamps import now_ms
from featurestore.validation.decoding import decoded_http
from featurestore.validation.requests import check_batch, check_get, check_historical
from featurestore.wire.frames import Op, get_array, put_array
from featurestore.wire.messages import (
    BatchAnswer,
    EmptyRequest,
    HistoricalAnswer,
    HistoricalRows,
    decode_answer,
)
from featurestore.wire.results import FeatureBatch, distinct, single_answer
from gateway.http import JSON, elapsed_ms, instrumented, json_response, raw_response

features = Blueprint("features")


@features.post("/features", name="features")
@instrumented
async def get_features(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    plan = check_get(decoded_http(Op.GET, request.body), gw.settings)
    query = plan.query
    online = query.as_of_ms is None
    if online:
        hit = gw.cache.get(query.version, plan.entity_id)
        if hit is not None:
            answer = single_answer(plan, hit[0], True, hit[1])
            answer.latency_ms = elapsed_ms(request)
            return json_response(answer)
    t_ms = now_ms() if online else query.as_of_ms
    values, found = await gw.compute(query.version, [plan.entity_id], t_ms, online, request.ctx.rid)
    if not found[0]:
        raise ServiceError(
            Code.ENTITY_NOT_FOUND,
            f"no events for entity {plan.entity_id!r} at or before {t_ms}",
            entity_id=plan.entity_id,
        )
    answer = single_answer(plan, values[0], False, t_ms)
    answer.latency_ms = elapsed_ms(request)
    return json_response(answer)


@features.post("/features/batch", name="features_batch")
@instrumented
async def get_batch(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    plan = check_batch(decoded_http(Op.BATCH, request.body), gw.settings)
    query, ids = plan.query, plan.entity_ids
    online = query.as_of_ms is None
    t_ms = now_ms() if online else query.as_of_ms
    if online:
        values, as_of, hit = gw.cache.get_many(query.version, ids)
        found = hit.copy()
        stamps = np.where(hit, as_of, t_ms)
    else:
        values = np.empty((len(ids), gw.cache.width))
        hit = found = np.zeros(len(ids), dtype=bool)
        stamps = np.full(len(ids), t_ms, dtype=np.int64)
    if not hit.all():
        rows = np.flatnonzero(~hit)
        codes, missing = distinct([ids[r] for r in rows.tolist()])
        computed, computed_found = await gw.compute(
            query.version, missing, t_ms, online, request.ctx.rid
        )
        values[rows] = computed[codes]
        found = found.copy()
        found[rows] = computed_found[codes]
    view = query.view
    batch = FeatureBatch(
        ids,
        query.version,
        view.names,
        view.is_int,
        view.select(values),
        found,
        hit,
        stamps,
    )
    latency = elapsed_ms(request)
    return json_response(
        BatchAnswer(len(ids), batch.batch_items(), latency, round(latency / len(ids), 6), t_ms)
    )


@features.post("/features/historical", name="features_historical")
@instrumented
async def get_historical(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    plan = check_historical(decoded_http(Op.HISTORICAL, request.body), gw.settings)
    blocks: list = []
    rows = HistoricalRows(plan.query.version, plan.entity_ids, put_array(blocks, plan.timestamps))
    response = await gw.call(Op.HISTORICAL_ROWS, rows, request.ctx.rid, blocks=blocks)
    answer = decode_answer(Op.HISTORICAL_ROWS, response.raw)
    values = get_array(response.blocks, answer.values)
    view = plan.query.view
    batch = FeatureBatch(
        plan.entity_ids,
        view.version,
        view.names,
        view.is_int,
        view.select(values),
        get_array(response.blocks, answer.found),
        None,
        plan.timestamps,  # each row's T as epoch ms (an ISO string given in, an integer out)
    )
    items = batch.historical_items()
    return json_response(HistoricalAnswer(len(items), items, elapsed_ms(request)))


@features.get("/features/stats", name="features_stats")
@instrumented
async def get_stats(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    return raw_response(await gw.call(Op.STATS, EmptyRequest(), request.ctx.rid))


@features.get("/features/definitions", name="features_definitions")
@instrumented
async def get_definitions(request: Request) -> HTTPResponse:
    return HTTPResponse(request.app.ctx.gw.definitions_json, content_type=JSON)
