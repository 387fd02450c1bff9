"""Per-process resources of a gateway server, opened in `before_server_start` and kept on
`app.ctx.gw`: the settings, the cache, the broker client, the documents."""

from __future__ import annotations

import time
from dataclasses import dataclass

import msgspec
import numpy as np

from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.features.registry import definitions
from featurestore.security.curve import CurveClient
from featurestore.wire.client import AsyncClient, Response
from featurestore.wire.frames import Op, get_array
from featurestore.wire.messages import ComputeRequest, decode_answer
from gateway.openapi import openapi_document
from shm import FeatureCache


@dataclass
class Gateway:
    settings: Settings
    cache: FeatureCache
    client: AsyncClient
    started: float
    definitions_json: bytes
    openapi_json: bytes

    @classmethod
    async def open(
        cls, settings: Settings, routes: list, curve: CurveClient | None = None
    ) -> Gateway:
        """`routes`: the app's router routes (the OpenAPI document is derived from them)."""
        client = AsyncClient(
            settings.broker_frontend,
            timeout_ms=settings.request_timeout_ms + CLIENT_SLACK_MS,
            curve=curve,
        )
        await client.start()
        return cls(
            settings=settings,
            cache=open_cache(settings),
            client=client,
            started=time.monotonic(),
            definitions_json=msgspec.json.encode(
                definitions(settings.definitions, settings.versions)
            ),
            openapi_json=msgspec.json.encode(openapi_document(settings, routes)),
        )

    async def call(
        self, op: Op, payload, request_id: str, timeout_ms: int | None = None, blocks=None
    ) -> Response:
        """Ask the broker; raise the ServiceError of an error reply. Replies are matched by
        the client's own correlation id, so callers may send one X-Request-Id on several
        requests at once; for an ingest it is the idempotency key, judged by the store."""
        response = await self.client.request(op, payload, request_id, blocks, timeout_ms)
        response.raise_for_error()
        return response

    async def compute(
        self, version: str, entity_ids: list[str], t_ms: int, online: bool, request_id: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Full vectors (and found) of distinct entities as of `t_ms`, computed by the
        workers (the broker splits them into chunks; online ones are cached and published)."""
        request = ComputeRequest(version, entity_ids, t_ms, online)
        response = await self.call(Op.COMPUTE, request, request_id)
        answer = decode_answer(Op.COMPUTE, response.raw)
        return get_array(response.blocks, answer.values), get_array(response.blocks, answer.found)

    async def close(self) -> None:
        await self.client.close()
        self.cache.close()


CLIENT_SLACK_MS = 1000  # the client waits a bit longer than the broker, so its `timeout` arrives
