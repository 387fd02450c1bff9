"""Idempotency by ingest request id (SPEC §3, §11), inside the ingest's own transaction.

Each request id is kept for the retention with a digest of its validated events and a small
answer (`accepted`, `duplicates`; never the entity list, so a 10,000-event ingest costs one
short row). A request id seen before, within the retention:
- with the same digest: a retry or a re-dispatch. It returns the original answer and stores
  nothing; its entity ids (taken from the repeated request itself) are still returned, for
  the caller to invalidate, because the first attempt may have died between its commit and
  its invalidation;
- with another digest: `request_id_conflict`; nothing is stored.
An id older than the retention is unknown again, whether it was pruned yet or not, so the
answer never depends on when the pruning ran.

The digest is BLAKE2b over the validated columns, not over the bytes that came in, so the
same events give the same digest over HTTP, ZeroMQ or a file, whatever their JSON spelling
(an ISO timestamp or its epoch ms, 1 or 1.0).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Sequence

import numpy as np

from featurestore.errors import Code, ServiceError
from featurestore.store.base import IngestResult
from featurestore.store.columns import EventColumns

DIGEST_BYTES = 16
DIGEST_PERSON = b"fs-events-v1"  # a new canonical form gets a new personalisation
DIGEST_PERSON_FIELDS = b"fs-events-v2"  # events of declared fields (SPEC §14)
PRUNE_BATCH = 1000  # request ids deleted per transaction: a few ms of the write lock
_SEPARATOR = "\n"  # never inside an id or category (control characters are invalid)
_ABSENT = "\x00"  # no category / no event id (likewise never a valid value)


def events_digest(events: EventColumns) -> bytes:
    """The canonical digest of validated events: count, timestamps, values, then each string
    column (absent values marked), each part prefixed by its length. Events of exactly the
    default fields (`value`, `category`) keep the digest of Part I (DIGEST_PERSON), so a
    request retried across the upgrade is still recognised; any other fields are digested
    by name, in name order (DIGEST_PERSON_FIELDS)."""
    default = set(events.numeric) == {"value"} and set(events.categorical) <= {"category"}
    person = DIGEST_PERSON if default else DIGEST_PERSON_FIELDS
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES, person=person)
    digest.update(len(events).to_bytes(8, "little"))
    digest.update(np.ascontiguousarray(events.ts, dtype="<i8").tobytes())
    if default:
        digest.update(np.ascontiguousarray(events.value, dtype="<f8").tobytes())
        columns = [events.entity_id, events.categorical_column("category"), events.event_id]
    else:
        for name in sorted(events.numeric):
            _update_text(digest, name)
            digest.update(np.ascontiguousarray(events.numeric[name], dtype="<f8").tobytes())
        columns = [events.entity_id, events.event_id]
        for name in sorted(events.categorical):
            _update_text(digest, name)
            columns.append(events.categorical[name])
    for column in columns:
        _update_text(digest, _joined(column))
    return digest.digest()


def _update_text(digest, text: str) -> None:
    data = text.encode("utf-8")
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)


def _joined(column: Iterable[str | None]) -> str:
    try:
        return _SEPARATOR.join(column)  # the common case: no value absent
    except TypeError:
        return _SEPARATOR.join(v if isinstance(v, str) else _ABSENT for v in column)


def replayed(
    conn: sqlite3.Connection,
    request_id: str,
    digest: bytes,
    entity_ids: Sequence[str],
    cutoff_ms: int,
) -> IngestResult | None:
    """The original answer if `request_id` was stored after `cutoff_ms` with this digest;
    None if it is new (or expired); `request_id_conflict` if it came with another body."""
    row = conn.execute(
        "SELECT digest, accepted, duplicates FROM requests "
        "WHERE request_id = ? AND created_ms >= ?",
        (request_id, cutoff_ms),
    ).fetchone()
    if row is None:
        return None
    return judge(row, request_id, digest, entity_ids)


def judge(
    stored: tuple[bytes | None, int, int],
    request_id: str,
    digest: bytes,
    entity_ids: Sequence[str],
) -> IngestResult:
    """What a request id found within the retention as (digest, accepted, duplicates) answers
    (every store): the original answer for the same digest, else `request_id_conflict`."""
    saved_digest, accepted, duplicates = stored
    if saved_digest is not None and bytes(saved_digest) != digest:  # NULL: body unknown
        raise ServiceError(
            Code.REQUEST_ID_CONFLICT,
            f"request id {request_id!r} was already used for an ingest with a different body; "
            "nothing was stored (use a new request id for new events)",
        )
    return IngestResult(accepted, duplicates, list(dict.fromkeys(entity_ids)), replayed=True)


def record(
    conn: sqlite3.Connection, request_id: str, digest: bytes, result: IngestResult, now: int
) -> None:
    """Remember the answer (replacing an expired row of the same id)."""
    conn.execute(
        "INSERT OR REPLACE INTO requests (request_id, created_ms, digest, accepted, duplicates) "
        "VALUES (?, ?, ?, ?, ?)",
        (request_id, now, digest, result.accepted, result.duplicates),
    )


def has_expired(conn: sqlite3.Connection, cutoff_ms: int) -> bool:
    """Whether any request id is older than the cutoff (a read: no write lock taken)."""
    query = "SELECT 1 FROM requests WHERE created_ms < ? LIMIT 1"
    return conn.execute(query, (cutoff_ms,)).fetchone() is not None


def prune(conn: sqlite3.Connection, cutoff_ms: int, limit: int = PRUNE_BATCH) -> int:
    """Delete up to `limit` request ids older than the cutoff, oldest first; how many."""
    return conn.execute(
        "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests "
        "WHERE created_ms < ? ORDER BY created_ms LIMIT ?)",
        (cutoff_ms, limit),
    ).rowcount
