"""A worker's care of its event store between jobs: the state it reports, pruning, recovery.

- State: `ok`, or `unavailable` after a write failed for want of space (or an I/O error); it
  travels in the heartbeat figures and turns `/health` degraded. A successful write, or a
  check (room on the file system and a small write that commits) every
  `RECOVERY_CHECK_INTERVAL_S`, makes it `ok` again: the worker recovers by itself.
- Pruning of expired ingest request ids (SPEC §11) and, on a store several hosts share, of
  change-log rows older than CHANGE_LOG_RETENTION_MS (SPEC §15): one bounded batch of each
  per call, once at start and every `PRUNE_INTERVAL_S`, or after `PRUNE_BACKLOG_INTERVAL_S`
  while a backlog lasts. The worker runs it after sending a job's reply, so it never delays an
  answer and a job waits at most for one batch (a few milliseconds of the write lock).
"""

from __future__ import annotations

import logging
import math
import time

from featurestore.store.base import STORE_OK, STORE_UNAVAILABLE, EventStore
from featurestore.store.errors import StoreUnavailable
from featurestore.store.requests import PRUNE_BATCH

log = logging.getLogger("worker")

PRUNE_INTERVAL_S = 60.0
PRUNE_BACKLOG_INTERVAL_S = 0.05
RECOVERY_CHECK_INTERVAL_S = 1.0


class StoreUpkeep:
    def __init__(self, store: EventStore, figures) -> None:
        self.store = store
        self.figures = figures  # workers.handlers.Figures: `store` is reported to the broker
        now = time.monotonic()
        self.next_prune = now
        self.next_check = now + RECOVERY_CHECK_INTERVAL_S

    @property
    def available(self) -> bool:
        return self.figures.store == STORE_OK

    def failed(self, error: StoreUnavailable) -> None:
        """A store operation failed: unavailable until a write succeeds again."""
        if self.available:
            log.error("event store unavailable: %s", error)
        self.figures.store = STORE_UNAVAILABLE
        self.next_check = time.monotonic() + RECOVERY_CHECK_INTERVAL_S

    def wrote(self) -> None:
        """A write committed: the store takes writes."""
        if not self.available:
            log.warning("event store available again")
        self.figures.store = STORE_OK

    def timeout_ms(self) -> int:
        """How long the worker may wait for a job before some upkeep is due."""
        due = self.next_prune if self.available else self.next_check  # no pruning meanwhile
        return max(0, math.ceil((due - time.monotonic()) * 1000))

    def run_due(self) -> None:
        """Whatever is due now (bounded work). StoreCorrupt propagates: the worker stops."""
        now = time.monotonic()
        if not self.available and now >= self.next_check:
            self.check()
        if self.available and now >= self.next_prune:
            self.prune()

    def check(self) -> None:
        try:
            self.store.check_writable()
        except StoreUnavailable as error:
            self.failed(error)
        else:
            self.wrote()

    def prune(self) -> None:
        pruned = changes = 0
        try:
            pruned = self.store.prune_requests(PRUNE_BATCH)
            changes = self.store.prune_changes(PRUNE_BATCH)
        except StoreUnavailable as error:
            self.failed(error)
        if pruned or changes:
            log.debug("pruned %d expired ingest request ids, %d change-log rows", pruned, changes)
        backlog = max(pruned, changes) >= PRUNE_BATCH
        delay = PRUNE_BACKLOG_INTERVAL_S if backlog else PRUNE_INTERVAL_S
        self.next_prune = time.monotonic() + delay
