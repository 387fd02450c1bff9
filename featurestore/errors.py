"""The error catalogue of SPEC §5: every error code, its HTTP status, and one exception type.

HTTP answers and ZeroMQ error replies both carry these codes; no other module spells them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_FEATURE = "unknown_feature"
    UNKNOWN_VERSION = "unknown_version"
    ENTITY_NOT_FOUND = "entity_not_found"
    BODY_TOO_LARGE = "body_too_large"
    BATCH_TOO_LARGE = "batch_too_large"
    OVERLOADED = "overloaded"
    NO_WORKERS = "no_workers"
    TIMEOUT = "timeout"
    REQUEST_ID_CONFLICT = "request_id_conflict"
    REQUEST_TIMEOUT = "request_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    STORE_UNAVAILABLE = "store_unavailable"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"


HTTP_STATUS: dict[Code, int] = {
    Code.INVALID_JSON: 400,
    Code.INVALID_REQUEST: 400,
    Code.UNKNOWN_FEATURE: 400,
    Code.UNKNOWN_VERSION: 400,
    Code.ENTITY_NOT_FOUND: 404,
    Code.BODY_TOO_LARGE: 413,
    Code.BATCH_TOO_LARGE: 413,
    Code.OVERLOADED: 503,
    Code.NO_WORKERS: 503,
    Code.TIMEOUT: 504,
    Code.REQUEST_ID_CONFLICT: 409,
    Code.REQUEST_TIMEOUT: 408,
    Code.HEADERS_TOO_LARGE: 431,
    Code.STORE_UNAVAILABLE: 503,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.INTERNAL: 500,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
}

# Errors that ask the caller to come back: they carry `retry_after_s` (HTTP: Retry-After).
RETRYABLE = frozenset({Code.OVERLOADED, Code.NO_WORKERS, Code.STORE_UNAVAILABLE})
MAX_REPORTED_ERRORS = 20


class ServiceError(Exception):
    """A request that cannot be served: a code of the catalogue, a sentence, extra fields."""

    def __init__(self, code: Code, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = Code(code)
        self.message = message
        self.extra = extra

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self) -> dict[str, Any]:
        """The JSON error shape: {"error", "message", ...extra}."""
        return {"error": self.code.value, "message": self.message, **self.extra}


def invalid_events(errors: list[dict[str, Any]], total: int | None = None) -> ServiceError:
    """An `invalid_request` listing at most MAX_REPORTED_ERRORS {"index", "field", "reason"}."""
    count = len(errors) if total is None else total
    first = errors[0]
    message = (
        f"{count} invalid event field(s); first: events[{first['index']}].{first['field']}: "
        f"{first['reason']}. Nothing was stored."
    )
    return ServiceError(Code.INVALID_REQUEST, message, errors=errors[:MAX_REPORTED_ERRORS])
