"""Bearer tokens on the HTTP routes (API_TOKENS_FILE; format in featurestore/security/tokens.py).

Each route needs a scope, fixed when the route is defined: `read` unless its handler is
marked `@writes` (a write token) or `@open_route` (no token: /health, for load balancers).
`gateway.http.instrumented` reads the mark once and checks every request of the route:
no or unknown token -> 401 `unauthorized` with `WWW-Authenticate: Bearer`; a read token on a
write route -> 403 `forbidden`. With no tokens file, nothing is checked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from featurestore.errors import Code, ServiceError
from featurestore.security.tokens import Scope, TokenTable

REALM = 'Bearer realm="featurestore"'
_SCOPE_ATTRIBUTE = "required_scope"
Handler = TypeVar("Handler", bound=Callable)


class AuthError(ServiceError):
    """401 or 403, with the `WWW-Authenticate` challenge its response carries (RFC 6750)."""

    def __init__(self, code: Code, message: str, challenge: str) -> None:
        super().__init__(code, message)
        self.challenge = challenge


def writes(handler: Handler) -> Handler:
    """Mark a route as needing a write token."""
    setattr(handler, _SCOPE_ATTRIBUTE, Scope.WRITE)
    return handler


def open_route(handler: Handler) -> Handler:
    """Mark a route as needing no token."""
    setattr(handler, _SCOPE_ATTRIBUTE, None)
    return handler


def required_scope(handler: Callable) -> Scope | None:
    """The scope a route's handler needs (None: none)."""
    return getattr(handler, _SCOPE_ATTRIBUTE, Scope.READ)


def authorize(header: str | None, tokens: TokenTable, required: Scope) -> None:
    """Raise AuthError unless the Authorization header carries a token of scope `required`."""
    if header is None:
        raise AuthError(
            Code.UNAUTHORIZED, "this route needs an 'Authorization: Bearer <token>' header", REALM
        )
    scheme, _, token = header.strip().partition(" ")
    scope = tokens.scope_of(token.strip()) if scheme.lower() == "bearer" else None
    if scope is None:
        raise AuthError(
            Code.UNAUTHORIZED,
            "the Authorization header carries no valid bearer token",
            f'{REALM}, error="invalid_token"',
        )
    if required is Scope.WRITE and scope is not Scope.WRITE:
        raise AuthError(
            Code.FORBIDDEN,
            "this route needs a write token; the one given is read-only",
            f'{REALM}, error="insufficient_scope", scope="write"',
        )
