"""Per-process resources of a gateway worker, opened in `before_server_start` (Sanic spawns
its workers, so nothing is inherited) and kept on `app.ctx.gw`."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from featurestore.client import AsyncClient
from featurestore.config import Settings
from featurestore.curve import CurveClient
from featurestore.features.registry import definitions
from featurestore.protocol import Op, Reply
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
    in_flight: dict[str, tuple[Op, asyncio.Future, dict]] = field(default_factory=dict)
    repeats: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    @classmethod
    async def open(cls, settings: Settings, curve: CurveClient | None = None) -> Gateway:
        client = AsyncClient(settings.broker_frontend, curve=curve)
        await client.start()
        return cls(
            settings=settings,
            cache=FeatureCache.from_settings(settings),
            client=client,
            started=time.monotonic(),
            definitions_json=orjson.dumps(definitions(settings.versions)),
            openapi_json=orjson.dumps(openapi_document(settings)),
        )

    async def call(
        self, op: Op, payload: dict, request_id: str, timeout_ms: int | None = None
    ) -> Reply:
        """Ask the broker; raise the ServiceError of an error reply.

        X-Request-Id comes from callers, who may send one id on several requests at once. The
        client matches replies by request id, so two of them in flight would take each other's
        answers. An ingest whose id is in flight for an ingest of the same events is its retry:
        it takes that answer (the store would give it too, storing nothing); with other events
        it waits for that one to end and is then sent, for the store to judge (a conflict).
        Its id is its idempotency key, so it never changes. Other operations get a distinct id
        that starts with the caller's.
        """
        if op is Op.INGEST:
            retried = await self._ingest_in_flight(request_id, payload)
            if retried is not None:
                retried.raise_for_error()
                return retried
        else:
            request_id = self._free_id(request_id)
        done = asyncio.get_running_loop().create_future()
        self.in_flight[request_id] = (op, done, payload)
        try:
            reply = await self.client.request(op, payload, request_id, timeout_ms=timeout_ms)
        except asyncio.CancelledError:
            done.cancel()
            raise
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            done.set_result(reply)
        finally:
            del self.in_flight[request_id]
        reply.raise_for_error()
        return reply

    async def _ingest_in_flight(self, request_id: str, payload: dict) -> Reply | None:
        """The reply of the ingest of the same payload in flight with this id; None once the
        id is free."""
        while (running := self.in_flight.get(request_id)) is not None:
            op, done, sent = running
            if op is Op.INGEST and sent == payload:
                return await asyncio.shield(done)
            await asyncio.wait({done})  # another operation or body holds the id for a moment
        return None

    def _free_id(self, request_id: str) -> str:
        given = request_id
        while request_id in self.in_flight:
            request_id = f"{given}~{next(self.repeats)}"
        return request_id

    async def close(self) -> None:
        await self.client.close()
        self.cache.close()
