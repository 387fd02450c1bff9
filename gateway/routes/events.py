"""POST /events and DELETE /entities/{entity_id}: writes, through the broker to a worker.

The events are decoded and validated here, once, and travel as columns (`IngestColumns`).
The request's X-Request-Id is the ingest request id of the store, so a retried POST with the
same id stores nothing twice.
"""

from __future__ import annotations

from urllib.parse import unquote

from sanic import Blueprint, HTTPResponse, Request

from featurestore.validation.decoding import decoded_http, invalid
from featurestore.validation.events import validate_events
from featurestore.validation.requests import entity_id_of
from featurestore.wire.frames import Op, put_array
from featurestore.wire.messages import DeleteRequest, IngestColumns
from gateway.auth import writes
from gateway.http import instrumented, raw_response

events = Blueprint("events")


@events.post("/events", name="events")
@instrumented
@writes
async def post_events(request: Request) -> HTTPResponse:
    gw = request.app.ctx.gw
    settings = gw.settings
    body = decoded_http(Op.INGEST, request.body)
    columns = validate_events(
        body.events,
        settings.events_max_per_request,
        settings.max_event_future_ms,
        settings.definitions.schema,
    )
    blocks: list = []
    message = IngestColumns(
        list(columns.entity_id),
        put_array(blocks, columns.ts),
        list(columns.event_id),
        {name: put_array(blocks, values) for name, values in columns.numeric.items()},
        {name: list(values) for name, values in columns.categorical.items()},
    )
    response = await gw.call(Op.INGEST_COLUMNS, message, request.ctx.rid, blocks=blocks)
    return raw_response(response)


@events.delete("/entities/<entity_id:path>", name="entities_delete")
@instrumented
@writes
async def delete_entity(request: Request, entity_id: str) -> HTTPResponse:
    gw = request.app.ctx.gw
    try:  # strict: a percent-encoding that is not UTF-8 names no entity (not U+FFFD's)
        decoded = unquote(entity_id, errors="strict")
    except UnicodeDecodeError:
        raise invalid("'entity_id' is not percent-encoded UTF-8") from None
    message = DeleteRequest(entity_id_of(decoded))
    return raw_response(await gw.call(Op.DELETE, message, request.ctx.rid))
