"""POST /events and DELETE /entities/{entity_id}: writes, through the broker to a worker.

The request's X-Request-Id is the ingest request id of the store, so a retried POST with the
same id stores nothing twice.
"""

from __future__ import annotations

from urllib.parse import unquote

from sanic import Blueprint, HTTPResponse, Request

from featurestore.protocol import Op
from featurestore.queries import entity_id_of, invalid, require_object
from gateway.auth import writes
from gateway.http import instrumented, json_body, json_response

events = Blueprint("events")


@events.post("/events", name="events")
@instrumented
@writes
async def post_events(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    body = require_object(json_body(request))
    reply = await gw.call(Op.INGEST, body, request.ctx.rid)
    return json_response(reply.body)


@events.delete("/entities/<entity_id:path>", name="entities_delete")
@instrumented
@writes
async def delete_entity(request: Request, entity_id: str) -> HTTPResponse:
    gw = request.app.ctx.gw
    try:  # strict: a percent-encoding that is not UTF-8 names no entity (not U+FFFD's)
        decoded = unquote(entity_id, errors="strict")
    except UnicodeDecodeError:
        raise invalid("'entity_id' is not percent-encoded UTF-8") from None
    entity = entity_id_of(decoded)
    reply = await gw.call(Op.DELETE, {"entity_id": entity}, request.ctx.rid)
    return json_response(reply.body)
