"""HTTP plumbing shared by the routes: JSON responses, request ids, errors, the instrumentation
of every route. Bodies are decoded by `featurestore.validation.decoding.decoded_http`."""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sanic import HTTPResponse, Request
from sanic.exceptions import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    SanicException,
)

from featurestore.errors import RETRYABLE, Code, ServiceError
from featurestore.wire.client import Response
from featurestore.wire.envelope import error_body, new_request_id
from featurestore.wire.frames import MAX_REQUEST_ID_BYTES
from gateway.auth import AuthError, authorize, required_scope

JSON = "application/json"
log = logging.getLogger("gateway")
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(rf"^[\x21-\x7e]{{1,{MAX_REQUEST_ID_BYTES}}}$")


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id (printable ASCII, 1-128 bytes), or a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        return new_request_id()
    if not _REQUEST_ID.match(given):
        raise ServiceError(
            Code.INVALID_REQUEST,
            f"X-Request-Id must be 1-{MAX_REQUEST_ID_BYTES} printable ASCII "
            "characters without spaces",
        )
    return given


_ENCODE = msgspec.json.Encoder().encode


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> HTTPResponse:
    """A typed answer (wire.messages), a dict or list as JSON."""
    return HTTPResponse(_ENCODE(body), status=status, headers=headers, content_type=JSON)


def raw_response(response: Response, status: int = 200) -> HTTPResponse:
    """A broker reply's body (msgpack) as JSON, whatever its type."""
    return json_response(msgspec.msgpack.decode(response.raw), status)


def elapsed_ms(request: Request) -> float:
    return round((time.perf_counter() - request.ctx.started) * 1000, 3)


def error_response(error: ServiceError, headers: dict | None = None) -> HTTPResponse:
    headers = dict(headers or {})
    if error.code in RETRYABLE:
        headers["Retry-After"] = str(int(error.extra.get("retry_after_s", 1)))
    return json_response(error_body(error, with_status=False), error.http_status, headers)


def error_headers(exc: Exception) -> dict:
    """Headers an error must keep, e.g. the `Allow` of a 405 (RFC 9110 section 15.5.6), the
    `WWW-Authenticate` of a 401 or 403 (RFC 6750)."""
    if isinstance(exc, MethodNotAllowed) and exc.allowed_methods:
        return {"Allow": ", ".join(sorted(exc.allowed_methods))}
    if isinstance(exc, AuthError):
        return {"WWW-Authenticate": exc.challenge}
    return {}


# Sanic's own exceptions, as the catalogue's errors (checked in order; the first match wins).
_SANIC_ERRORS: tuple[tuple[type[Exception], str, Code, str], ...] = (
    # (type, words its message must contain, code, message)
    (
        PayloadTooLarge,
        "header",
        Code.HEADERS_TOO_LARGE,
        "the request headers exceed HTTP_MAX_HEADER_BYTES",
    ),
    (PayloadTooLarge, "", Code.BODY_TOO_LARGE, "the request body exceeds MAX_BODY_BYTES"),
    (
        RequestTimeout,
        "",
        Code.REQUEST_TIMEOUT,
        "the request was not received in time (HTTP_READ_TIMEOUT_MS)",
    ),
    (MethodNotAllowed, "", Code.METHOD_NOT_ALLOWED, "method not allowed for this route"),
    (NotFound, "", Code.NOT_FOUND, "no such route"),
)


def as_service_error(exc: Exception) -> ServiceError:
    """Any exception as the error of the catalogue it stands for."""
    if isinstance(exc, ServiceError):
        return exc
    text = str(exc).lower()
    for kind, words, code, message in _SANIC_ERRORS:
        if isinstance(exc, kind) and words in text:
            return ServiceError(code, message)
    if isinstance(exc, SanicException) and 400 <= exc.status_code < 500:
        return ServiceError(Code.INVALID_REQUEST, str(exc) or "bad request")
    return ServiceError(Code.INTERNAL, "internal error")


def instrumented(handler: Callable[..., Awaitable[HTTPResponse]]):
    """Wrap a route: request id in and out, bearer token (gateway.auth), latency, metrics,
    errors as JSON.

    Done here rather than in request/response middleware: Sanic runs middleware as extra
    coroutines on every request, a cost the cached path cannot afford."""
    required = required_scope(handler)

    @functools.wraps(handler)
    async def run(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        request.ctx.started = time.perf_counter()
        try:
            request.ctx.rid = request_id_of(request)
            if required is not None and (tokens := request.app.ctx.tokens) is not None:
                authorize(request.headers.get("authorization"), tokens, required)
            response = await handler(request, *args, **kwargs)
        except Exception as exc:  # every error becomes the JSON shape of the catalogue
            if not hasattr(request.ctx, "rid"):
                request.ctx.rid = new_request_id()  # the given one is unusable: make one up
            response = render_error(request, exc)
        return finish(request, response)

    return run


def render_error(request: Request, exc: Exception) -> HTTPResponse:
    error = as_service_error(exc)
    if error.http_status >= 500 and not isinstance(exc, ServiceError):
        log.error("rid=%s unexpected error", getattr(request.ctx, "rid", "-"), exc_info=exc)
    return error_response(error, error_headers(exc))


def finish(request: Request, response: HTTPResponse) -> HTTPResponse:
    """X-Request-Id on the response, and the request counted in the metrics."""
    ctx = request.ctx
    rid = getattr(ctx, "rid", None)
    if rid is None:  # an error before the route ran: take the caller's id if usable
        try:
            rid = request_id_of(request)
        except ServiceError:
            rid = new_request_id()
        ctx.rid = rid
    response.headers[REQUEST_ID_HEADER] = rid
    if log.isEnabledFor(logging.DEBUG):
        log.debug("rid=%s %s %s -> %d", rid, request.method, request.path, response.status)
    metrics = getattr(request.app.ctx, "metrics", None)
    if metrics is not None:
        started = getattr(ctx, "started", None)
        elapsed_s = 0.0 if started is None else time.perf_counter() - started
        route = request.route
        metrics.observe(route.name if route is not None else "", response.status, elapsed_s)
    return response
