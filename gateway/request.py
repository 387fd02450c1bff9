"""The gateway's request class: a body must arrive within HTTP_READ_TIMEOUT_MS.

Sanic's REQUEST_TIMEOUT covers the request line and headers; a body (chunked or with a
Content-Length) that stops coming would otherwise hold a server until the response timeout
and end as a 5xx. `receive_body` (which Sanic calls before every non-streaming handler) reads
it under the same deadline and answers 408 `request_timeout` when it passes.
"""

from __future__ import annotations

import asyncio

from sanic import Request

from featurestore.errors import Code, ServiceError


class GatewayRequest(Request):
    async def receive_body(self) -> None:
        if self.body:
            return
        http = self.stream
        if http.request_body is True and len(http.recv_buffer) >= http.request_bytes_left:
            # The whole Content-Length body is already here (the usual case): nothing can
            # stall, so no timer (arming one costs ~8 % of a cached request's throughput).
            self.body = b"".join([data async for data in http])
            return
        timeout_s = self.app.config.REQUEST_TIMEOUT
        try:
            async with asyncio.timeout(timeout_s):
                self.body = b"".join([data async for data in self.stream])
        except TimeoutError:
            # Close the connection after the answer: the rest of that body must neither be read
            # as the next request nor waited for (Sanic drains an unread body otherwise).
            self.stream.keep_alive = False
            self.stream.request_body = None
            raise ServiceError(
                Code.REQUEST_TIMEOUT,
                f"the request body was not received within {timeout_s:g} s (HTTP_READ_TIMEOUT_MS)",
            ) from None
