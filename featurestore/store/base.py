"""The event store interface every backend implements: SQLite (`sqlite.py`, one host) and
PostgreSQL (`postgres.py`, several hosts); `factory.py` chooses one from the settings.

A store keeps each entity's events durably, in a layout read in bulk into an `EventBatch`,
assigns sequence numbers, `ingested_at` and category labels, and makes ingest idempotent by
event id and by request id in the same transaction. Failures that are not bugs are the
`StoreUnavailable` and `StoreCorrupt` of `featurestore/store/errors.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from featurestore.store.batch import EventBatch
from featurestore.store.columns import EventColumns
from featurestore.store.layout import RecordLayout

# A store's state as a worker reports it in its heartbeat figures (and /health shows it).
STORE_OK = "ok"
STORE_UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class IngestResult:
    """What an ingest stored. `entity_ids` are the entities whose cached vectors are stale:
    those that got events, or for a replayed request every entity of the request."""

    accepted: int
    duplicates: int
    entity_ids: list[str] = field(default_factory=list)
    replayed: bool = False  # the request id was seen before: this is the original answer

    @property
    def stored_now(self) -> int:
        """Events this call stored: 0 for a replayed request (they were stored the first time)."""
        return 0 if self.replayed else self.accepted

    def body(self) -> dict[str, int]:
        return {"accepted": self.accepted, "duplicates": self.duplicates}


class EventStore(Protocol):
    layout: RecordLayout  # the event fields it stores, in their order (`layout.py`)

    def ingest(
        self, events: EventColumns, request_id: str | None = None, *, compact: bool = True
    ) -> IngestResult:
        """Store validated events in one transaction (all or nothing)."""
        ...

    def read(self, entity_ids: Sequence[str], as_of_ms: int | None = None) -> EventBatch:
        """Every event of each requested entity (duplicates allowed), or those with ts <= T."""
        ...

    def delete(self, entity_id: str) -> int:
        """Remove an entity's events; the number removed (0 for an unknown entity)."""
        ...

    def label_names(self) -> dict[str, list[str]]:
        """Label names of every categorical field, indexed by label (0 ... k-1)."""
        ...

    def category_names(self) -> list[str]:
        """Label names of the `category` field, indexed by label (0 ... k-1)."""
        ...

    def entity_ids(self) -> list[str]:
        """Every entity that has events."""
        ...

    def counts(self) -> dict[str, int]:
        """{"entities", "events", "categories"}."""
        ...

    def compact(self, entity_ids: Sequence[str] | None = None) -> int:
        """Rewrite entities stored in several pieces into one (reads get faster)."""
        ...

    def served_versions(self) -> dict[str, tuple[str, int]]:
        """Each version served from the store: (its content hash, when first served)."""
        ...

    def record_versions(self, hashes: dict[str, str], source: str = ...) -> None:
        """Record versions about to be served; SchemaMismatch if one was served with another
        definition (a served version is immutable)."""
        ...

    def forget_version(self, name: str) -> bool:
        """Drop a recorded version; False if it was never recorded."""
        ...

    def service_connections(self) -> list[str]:
        """Service processes of other hosts using the store now (none for a store of one
        host), each described in a few words."""
        ...

    def prune_requests(self, limit: int = ...) -> int:
        """Forget up to `limit` request ids older than the retention; how many."""
        ...

    def prune_changes(self, limit: int = ...) -> int:
        """Forget up to `limit` change-log rows older than their retention (a store shared by
        several hosts; 0 for one that has no change log); how many."""
        ...

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless a write would succeed now."""
        ...

    def close(self) -> None: ...
