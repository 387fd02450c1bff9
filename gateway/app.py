"""The Sanic application: blueprints, per-worker resources, request ids, errors, metrics."""

from __future__ import annotations

import logging
import time

from sanic import HTTPResponse, Request, Sanic

from featurestore.client import new_request_id
from featurestore.config import Settings
from featurestore.errors import ServiceError
from featurestore.logs import rid
from gateway.context import Gateway
from gateway.http import (
    REQUEST_ID_HEADER,
    as_service_error,
    error_headers,
    error_response,
    request_id_of,
)
from gateway.routes.events import events
from gateway.routes.features import features
from gateway.routes.system import system

APP_NAME = "featurestore"
GRACEFUL_SHUTDOWN_S = 10.0
log = logging.getLogger("gateway")


def create_app(settings: Settings | None = None) -> Sanic:
    """The app; called once per Sanic worker process (the factory of `gateway.main`)."""
    settings = settings or Settings.from_env()
    app = Sanic(APP_NAME)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = GRACEFUL_SHUTDOWN_S
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.ctx.settings = settings
    app.blueprint([features, events, system])
    app.before_server_start(_open)
    app.after_server_stop(_close)
    app.on_request(_on_request)
    app.on_response(_on_response)
    app.error_handler.add(Exception, _on_error)
    return app


async def _open(app: Sanic) -> None:
    app.ctx.gw = await Gateway.open(app.ctx.settings)


async def _close(app: Sanic) -> None:
    await app.ctx.gw.close()


async def _on_request(request: Request) -> HTTPResponse | None:
    request.ctx.started = time.perf_counter()
    try:
        request.ctx.rid = request_id_of(request)
    except ServiceError as error:
        request.ctx.rid = new_request_id()  # the given one is unusable: make one up
        return error_response(error)
    return None


async def _on_response(request: Request, response: HTTPResponse) -> None:
    request_id = getattr(request.ctx, "rid", None) or "-"
    response.headers[REQUEST_ID_HEADER] = request_id
    gw = getattr(request.app.ctx, "gw", None)
    started = getattr(request.ctx, "started", None)
    if gw is not None and started is not None:
        route = request.route
        endpoint = route.name if route is not None else ""
        gw.metrics.observe(endpoint, response.status, (time.perf_counter() - started) * 1000)


async def _on_error(request: Request, exc: Exception) -> HTTPResponse:
    error = as_service_error(exc)
    if error.http_status >= 500 and not isinstance(exc, ServiceError):
        log.exception("%s unexpected error", rid(getattr(request.ctx, "rid", "-")), exc_info=exc)
    return error_response(error, error_headers(exc))
