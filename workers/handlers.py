"""What a compute worker does with each job: compute, ingest, delete.

Online computations read the entities' cache generations BEFORE reading the store, and write
the cache only if no invalidation happened since, so a vector computed from stale data is
never stored. Ingest and delete invalidate after their commit; a replayed ingest (its request
id was committed before) invalidates too, because the attempt that committed may have died
before it did.

A store that cannot take writes (disk full) answers 503 `store_unavailable` with
`retry_after_s`, and the worker reports it in its figures until it recovers (upkeep.py).
A corrupt store raises `StoreCorrupt` out of here: the worker stops (`EXIT_DATA`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.features.engine import FeatureMatrix, compute
from featurestore.logs import rid
from featurestore.protocol import Op, Reply, get_array, put_array
from featurestore.queries import entity_id_of, invalid
from featurestore.store.base import STORE_OK, EventStore
from featurestore.store.errors import STORE_RETRY_AFTER_S, StoreUnavailable
from featurestore.validation import validate_events
from workers.publisher import VectorPublisher
from workers.upkeep import StoreUpkeep

log = logging.getLogger("worker")


@dataclass
class Figures:
    """This worker's counters, sent to the broker with every heartbeat."""

    jobs: int = 0
    computes: int = 0
    compute_ms: float = 0.0
    ingested: int = 0
    errors: int = 0
    malformed: int = 0
    store: str = STORE_OK  # STORE_OK | STORE_UNAVAILABLE

    def as_dict(self) -> dict:
        return {
            "malformed": self.malformed,
            "jobs": self.jobs,
            "computes": self.computes,
            "compute_ms": round(self.compute_ms, 3),
            "ingested": self.ingested,
            "errors": self.errors,
            "store": self.store,
        }


class Handlers:
    def __init__(
        self,
        settings: Settings,
        store: EventStore,
        cache,
        publisher: VectorPublisher,
        figures: Figures | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.cache = cache
        self.publisher = publisher
        self.figures = figures or Figures()
        self.upkeep = StoreUpkeep(store, self.figures)

    def handle(self, op: Op, payload: dict, blocks: list, request_id: str) -> Reply:
        self.figures.jobs += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", rid(request_id), op.value)
        try:
            if op is Op.COMPUTE:
                return self.compute_online(payload, request_id)
            if op is Op.HISTORICAL_CHUNK:
                return self.compute_historical(payload, blocks, request_id)
            if op is Op.INGEST:
                return self.ingest(payload, request_id)
            if op is Op.DELETE:
                return self.delete(payload, request_id)
            raise ServiceError(Code.INVALID_REQUEST, f"workers do not handle {op.value!r}")
        except ServiceError as error:
            return Reply.error(request_id, error)
        except StoreUnavailable as error:
            self.upkeep.failed(error)
            unavailable = ServiceError(
                Code.STORE_UNAVAILABLE,
                f"the event store is unavailable ({error.problem}); nothing was stored, "
                "try again later",
                retry_after_s=STORE_RETRY_AFTER_S,
            )
            return Reply.error(request_id, unavailable)

    def _compute(self, entity_ids: list[str], as_of, version: str) -> tuple[FeatureMatrix, dict]:
        """The features, and the figures the broker adds to its statistics."""
        started = time.perf_counter()
        codes, uniques = _factorize(entity_ids)
        batch = self.store.read(uniques)
        matrix = compute(batch, codes, as_of, version, self.store.category_names())
        computes = int(matrix.found.sum())
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.figures.computes += computes
        self.figures.compute_ms += elapsed_ms
        return matrix, {"computes": computes, "compute_ms": elapsed_ms}

    def compute_online(self, payload: dict, request_id: str) -> Reply:
        """Full vectors of distinct entities as of one T; cached and published when online."""
        version = payload["version"]
        entity_ids = payload["entity_ids"]
        as_of_ms = int(payload["T"])
        online = bool(payload["online"])
        generations = self.cache.generations(entity_ids) if online else None
        matrix, figures = self._compute(entity_ids, as_of_ms, version)
        if online and matrix.found.any():
            rows = np.flatnonzero(matrix.found)
            found_ids = [entity_ids[i] for i in rows.tolist()]
            self.cache.put_many(
                version,
                found_ids,
                matrix.values[rows],
                np.full(rows.size, as_of_ms, dtype=np.int64),
                generations[rows],
            )
            self.publisher.publish(version, matrix.values[rows])
        blocks: list = []
        body = {
            "values": put_array(blocks, matrix.values),
            "found": put_array(blocks, matrix.found),
            "T": as_of_ms,
            **figures,
        }
        return Reply(request_id, body, blocks=blocks)

    def compute_historical(self, payload: dict, blocks: list, request_id: str) -> Reply:
        version = payload["version"]
        entity_ids = payload["entity_ids"]
        stamps = get_array(blocks, payload["timestamps"])
        matrix, figures = self._compute(entity_ids, stamps, version)
        out: list = []
        body = {
            "values": put_array(out, matrix.values),
            "found": put_array(out, matrix.found),
            **figures,
        }
        return Reply(request_id, body, blocks=out)

    def ingest(self, payload: dict, request_id: str) -> Reply:
        if set(payload) - {"events"}:
            raise invalid("unknown field(s) in the ingest request; allowed: events")
        columns = validate_events(
            payload.get("events"),
            self.settings.events_max_per_request,
            self.settings.max_event_future_ms,
        )
        result = self.store.ingest(columns, request_id=request_id or None)  # "": no key
        self.cache.invalidate_many(result.entity_ids)  # after the commit: read your writes
        if not result.replayed:
            self.upkeep.wrote()
        self.figures.ingested += result.stored_now
        return Reply(request_id, result.body())

    def delete(self, payload: dict, request_id: str) -> Reply:
        entity_id = entity_id_of(payload.get("entity_id"))
        deleted = self.store.delete(entity_id)
        self.cache.invalidate(entity_id)
        self.upkeep.wrote()
        return Reply(request_id, {"deleted_events": deleted})


def _factorize(entity_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    position: dict[str, int] = {}
    codes = np.fromiter(
        (position.setdefault(e, len(position)) for e in entity_ids),
        dtype=np.int64,
        count=len(entity_ids),
    )
    return codes, list(position)
