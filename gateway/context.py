"""Per-process resources of a gateway worker, opened in `before_server_start` (Sanic spawns
its workers, so nothing is inherited) and kept on `app.ctx.gw`."""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from featurestore.client import AsyncClient
from featurestore.config import Settings
from featurestore.features.registry import definitions
from featurestore.protocol import Op, Reply
from gateway.metrics import MetricsBoard
from gateway.openapi import openapi_document
from shm import FeatureCache


@dataclass
class Gateway:
    settings: Settings
    cache: FeatureCache
    client: AsyncClient
    metrics: MetricsBoard
    started: float
    definitions_json: bytes
    openapi_json: bytes

    @classmethod
    async def open(cls, settings: Settings) -> Gateway:
        client = AsyncClient(settings.broker_frontend)
        await client.start()
        return cls(
            settings=settings,
            cache=FeatureCache.from_settings(settings),
            client=client,
            metrics=MetricsBoard(settings.cache_name),
            started=time.monotonic(),
            definitions_json=orjson.dumps(definitions(settings.versions)),
            openapi_json=orjson.dumps(openapi_document(settings)),
        )

    async def call(
        self, op: Op, payload: dict, request_id: str, timeout_ms: int | None = None
    ) -> Reply:
        """Ask the broker; raise the ServiceError of an error reply."""
        reply = await self.client.request(op, payload, request_id, timeout_ms=timeout_ms)
        reply.raise_for_error()
        return reply

    async def close(self) -> None:
        await self.client.close()
        self.cache.close()
        self.metrics.close()
