"""HTTP plumbing shared by the routes: JSON bodies and responses, request ids, errors."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import orjson
from sanic import HTTPResponse, Request
from sanic.exceptions import MethodNotAllowed, NotFound, PayloadTooLarge, SanicException

from featurestore.errors import Code, ServiceError
from featurestore.protocol import MAX_REQUEST_ID_BYTES

JSON = "application/json"
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID = re.compile(rf"^[\x21-\x7e]{{1,{MAX_REQUEST_ID_BYTES}}}$")


def request_id_of(request: Request) -> str:
    """The caller's X-Request-Id (printable ASCII, 1-128 bytes), or a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is None:
        return uuid.uuid4().hex
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
        raise ServiceError(
            Code.INVALID_JSON, f"the request body is not valid JSON: {exc}"
        ) from None


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(body), status=status, headers=headers, content_type=JSON)


def elapsed_ms(request: Request) -> float:
    return round((time.perf_counter() - request.ctx.started) * 1000, 3)


def error_response(error: ServiceError) -> HTTPResponse:
    headers = {}
    if error.code in (Code.OVERLOADED, Code.NO_WORKERS):
        headers["Retry-After"] = str(int(error.extra.get("retry_after_s", 1)))
    return json_response(error.body(), error.http_status, headers)


def as_service_error(exc: Exception) -> ServiceError:
    """Any exception as the error of the catalogue it stands for."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, PayloadTooLarge):
        return ServiceError(Code.BODY_TOO_LARGE, "the request body exceeds MAX_BODY_BYTES")
    if isinstance(exc, MethodNotAllowed):
        return ServiceError(Code.METHOD_NOT_ALLOWED, "method not allowed for this route")
    if isinstance(exc, NotFound):
        return ServiceError(Code.NOT_FOUND, "no such route")
    if isinstance(exc, SanicException) and 400 <= exc.status_code < 500:
        return ServiceError(Code.INVALID_REQUEST, str(exc) or "bad request")
    return ServiceError(Code.INTERNAL, "internal error")
