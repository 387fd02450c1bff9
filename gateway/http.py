"""HTTP plumbing shared by the routes: JSON bodies and responses, request ids, errors."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from sanic import HTTPResponse, Request
from sanic.exceptions import (
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    SanicException,
)

from featurestore.client import new_request_id
from featurestore.errors import RETRYABLE, Code, ServiceError
from featurestore.protocol import MAX_REQUEST_ID_BYTES
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


def json_body(request: Request) -> Any:
    """The parsed JSON body; `invalid_json` when empty or not JSON."""
    raw = request.body
    if not raw or not raw.strip():
        raise ServiceError(Code.INVALID_JSON, "the request body is empty; expected JSON")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _refused_json(raw, exc) from None


def _refused_json(raw: bytes, exc: orjson.JSONDecodeError) -> ServiceError:
    """Why orjson refused the body. Some JSON that RFC 8259 allows, orjson does not: a lone
    surrogate escape ("\\ud800") or a number beyond float range (1e999). Such a body IS JSON,
    holding a value no field accepts (SPEC section 3), so it is `invalid_request`, not
    `invalid_json`. The standard parser (slower, on this error path only) tells them apart."""
    not_json = ServiceError(Code.INVALID_JSON, f"the request body is not valid JSON: {exc}")
    if not any(word in str(exc) for word in _ORJSON_ONLY):
        return not_json  # plain garbage is not parsed twice
    try:
        value = json.loads(raw, parse_constant=_no_constant)
        found = _unrepresentable(value, [])
    except (ValueError, RecursionError):
        return not_json
    if found is None:
        return not_json
    path, reason = found
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{_printable(p)}" for p in path)
    where = where.lstrip(".") or "the body"
    extra = {}
    if len(path) >= 3 and path[0] == "events" and isinstance(path[1], int):
        field = path[2] if isinstance(path[2], str) else "event"
        extra["errors"] = [{"index": path[1], "field": _printable(field), "reason": reason}]
    return ServiceError(Code.INVALID_REQUEST, f"'{where}' {reason}", **extra)


_ORJSON_ONLY = ("surrogate", "infinity")  # in orjson's messages for what only it refuses


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unrepresentable(value: Any, path: list) -> tuple[list, str] | None:
    """The first string with a lone surrogate or non-finite number in `value`, and why."""
    if isinstance(value, str):
        return (path, "contains a lone surrogate") if _SURROGATE.search(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be finite")
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _SURROGATE.search(key):
            return [*path, key], "is a field name with a lone surrogate"
        found = _unrepresentable(item, [*path, key])
        if found is not None:
            return found
    return None


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(body), status=status, headers=headers, content_type=JSON)


def elapsed_ms(request: Request) -> float:
    return round((time.perf_counter() - request.ctx.started) * 1000, 3)


def error_response(error: ServiceError, headers: dict | None = None) -> HTTPResponse:
    headers = dict(headers or {})
    if error.code in RETRYABLE:
        headers["Retry-After"] = str(int(error.extra.get("retry_after_s", 1)))
    return json_response(error.body(), error.http_status, headers)


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
