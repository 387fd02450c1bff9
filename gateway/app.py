"""The Sanic application: blueprints, per-worker resources, request ids, errors, metrics."""

from __future__ import annotations

import logging

from sanic import HTTPResponse, Request, Sanic

from featurestore.config import Settings
from featurestore.ops.logs import setup_logging
from featurestore.security.curve import internal_keys
from featurestore.security.tokens import tokens_from_settings
from gateway.context import Gateway
from gateway.http import finish, render_error
from gateway.manager import GRACEFUL_SHUTDOWN_S
from gateway.metrics.recorder import ServerMetrics, endpoints
from gateway.request import GatewayRequest
from gateway.routes.events import events
from gateway.routes.features import features
from gateway.routes.system import system

APP_NAME = "featurestore"
log = logging.getLogger("gateway")


def create_app(settings: Settings | None = None) -> Sanic:
    """The app of one HTTP server process (gateway/server.py)."""
    settings = settings or Settings.from_env()
    setup_logging("gateway", settings.log_level)  # each server process
    app = Sanic(APP_NAME, request_class=GatewayRequest)
    app.config.REQUEST_MAX_SIZE = settings.max_body_bytes
    app.config.REQUEST_MAX_HEADER_SIZE = settings.http_max_header_bytes
    app.config.REQUEST_TIMEOUT = settings.http_read_timeout_ms / 1000
    app.config.ACCESS_LOG = False
    app.config.MOTD = False
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = GRACEFUL_SHUTDOWN_S
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.ctx.settings = settings
    # Read in every server process (the gateway's main process checked them before it
    # started any: a bad file stops the gateway with EXIT_CONFIG).
    app.ctx.tokens = tokens_from_settings(settings)
    app.ctx.curve = internal_keys(settings)
    if app.ctx.tokens is not None and not len(app.ctx.tokens):
        log.warning("API_TOKENS_FILE lists no token: every route but /health answers 401")
    app.blueprint([features, events, system])
    app.before_server_start(_open)
    app.after_server_stop(_close)
    app.error_handler.add(Exception, _on_error)
    return app


async def _open(app: Sanic) -> None:
    metrics = ServerMetrics(endpoints(app))  # the routes, every blueprint registered
    app.ctx.gw = await Gateway.open(app.ctx.settings, list(app.router.routes), app.ctx.curve)
    app.ctx.metrics = metrics
    metrics.serving(True)


async def _close(app: Sanic) -> None:
    app.ctx.metrics.serving(False)
    await app.ctx.gw.close()


async def _on_error(request: Request, exc: Exception) -> HTTPResponse:
    """Errors raised before a route runs: unknown route, wrong method, body too large."""
    return finish(request, render_error(request, exc))
