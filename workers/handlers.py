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
from featurestore.ops.logs import rid
from featurestore.store.base import STORE_OK, EventStore
from featurestore.store.errors import STORE_RETRY_AFTER_S, StoreUnavailable
from featurestore.validation.decoding import decoded_payload
from featurestore.validation.events import EventColumns, checked_columns, validate_events
from featurestore.validation.requests import entity_id_of, version_of
from featurestore.wire.backend import Job, error_result_frames, result_frames
from featurestore.wire.frames import get_array, put_array
from featurestore.wire.messages import (
    Answer,
    ComputeAnswer,
    ComputeRequest,
    DeleteAnswer,
    DeleteRequest,
    HistoricalRows,
    IngestAnswer,
    IngestColumns,
    IngestRequest,
    Message,
)
from featurestore.wire.results import distinct
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


Result = tuple[Answer, list]  # an answer and the blocks its ArrayRefs point into


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
        self.definitions = settings.definitions
        self.store = store
        self.cache = cache
        self.publisher = publisher
        self.figures = figures or Figures()
        self.upkeep = StoreUpkeep(store, self.figures)

    def handle(self, job: Job) -> list:
        """The RESULT frames of a job: its payload decoded once into its type, then the
        handler of that type; any refusal is an error result of the catalogue."""
        self.figures.jobs += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", rid(job.request_id), job.op.value)
        try:
            answer, blocks = self.run(job, decoded_payload(job.op, job.payload))
        except ServiceError as error:
            return error_result_frames(job.job_id, error)
        except StoreUnavailable as error:
            self.upkeep.failed(error)
            unavailable = ServiceError(
                Code.STORE_UNAVAILABLE,
                f"the event store is unavailable ({error.problem}); nothing was stored, "
                "try again later",
                retry_after_s=STORE_RETRY_AFTER_S,
            )
            return error_result_frames(job.job_id, unavailable)
        return result_frames(job.job_id, answer, blocks)

    def run(self, job: Job, payload: Message) -> Result:
        match payload:
            case ComputeRequest():
                return self.compute_online(payload)
            case HistoricalRows():
                return self.compute_historical(payload, job.blocks)
            case IngestRequest():
                columns = validate_events(
                    payload.events,
                    self.settings.events_max_per_request,
                    self.settings.max_event_future_ms,
                    self.definitions.schema,
                )
                return self.ingest(columns, job.request_id)
            case IngestColumns():
                columns = checked_columns(
                    payload,
                    job.blocks,
                    self.settings.events_max_per_request,
                    self.settings.max_event_future_ms,
                    self.definitions.schema,
                )
                return self.ingest(columns, job.request_id)
            case DeleteRequest():
                return self.delete(entity_id_of(payload.entity_id))
        raise ServiceError(Code.INVALID_REQUEST, f"workers do not handle {job.op.value!r}")

    def _compute(self, entity_ids: list[str], as_of, version: str) -> tuple[FeatureMatrix, float]:
        """The features, and their compute time in ms (for the broker's statistics)."""
        started = time.perf_counter()
        codes, uniques = distinct(entity_ids)
        features = self.definitions.versions[version_of(version, self.settings)]
        batch = self.store.read(uniques)
        matrix = compute(batch, codes, as_of, features, self.store.label_names())
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.figures.computes += int(matrix.found.sum())
        self.figures.compute_ms += elapsed_ms
        return matrix, elapsed_ms

    def _answer(self, matrix: FeatureMatrix, elapsed_ms: float, t_ms: int | None) -> Result:
        """Vectors as wide as the cache's rows (NaN beyond a narrower version's features), the
        one shape every vector has between the processes."""
        blocks: list = []
        values = matrix.values
        if values.shape[1] < self.cache.width:
            values = np.pad(
                values, ((0, 0), (0, self.cache.width - values.shape[1])), constant_values=np.nan
            )
        answer = ComputeAnswer(
            put_array(blocks, values),
            put_array(blocks, matrix.found),
            t_ms,
            int(matrix.found.sum()),
            elapsed_ms,
        )
        return answer, blocks

    def compute_online(self, job: ComputeRequest) -> Result:
        """Full vectors of distinct entities as of one T; cached and published when online."""
        entity_ids, version, t_ms = job.entity_ids, job.version, job.t_ms
        generations = self.cache.generations(entity_ids) if job.online else None
        matrix, elapsed_ms = self._compute(entity_ids, t_ms, version)
        if job.online and matrix.found.any():
            rows = np.flatnonzero(matrix.found)
            found_ids = [entity_ids[i] for i in rows.tolist()]
            self.cache.put_many(
                version,
                found_ids,
                matrix.values[rows],
                np.full(rows.size, t_ms, dtype=np.int64),
                generations[rows],
            )
            self.publisher.publish(version, matrix.values[rows])
        return self._answer(matrix, elapsed_ms, t_ms)

    def compute_historical(self, job: HistoricalRows, blocks: list) -> Result:
        stamps = get_array(blocks, job.timestamps)
        if stamps.shape != (len(job.entity_ids),):
            raise ServiceError(Code.INVALID_REQUEST, "one timestamp per historical row")
        matrix, elapsed_ms = self._compute(job.entity_ids, stamps, job.version)
        return self._answer(matrix, elapsed_ms, None)

    def ingest(self, columns: EventColumns, request_id: str) -> Result:
        result = self.store.ingest(columns, request_id=request_id or None)  # "": no key
        self.cache.invalidate_many(result.entity_ids)  # after the commit: read your writes
        if not result.replayed:
            self.upkeep.wrote()
        self.figures.ingested += result.stored_now
        return IngestAnswer(result.accepted, result.duplicates), []

    def delete(self, entity_id: str) -> Result:
        deleted = self.store.delete(entity_id)
        self.cache.invalidate(entity_id)
        self.upkeep.wrote()
        return DeleteAnswer(deleted), []
