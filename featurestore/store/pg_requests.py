"""Idempotency by ingest request id in the PostgreSQL store (SPEC §3, §11; the rules and the
digest are `requests.py`'s, shared with SQLite).

The request id is CLAIMED first in the ingest's transaction, by inserting its row: a second
transaction with the same id (a retry racing the original, a re-dispatch on another host)
waits on that row until the first commits (then it finds the row and replays) or rolls back
(then it stores the events itself). So two hosts never both store one request, even without
event ids. A row older than the retention is taken over (updated) as if it were new.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from featurestore.store.base import IngestResult
from featurestore.store.pg_schema import SCHEMA
from featurestore.store.requests import PRUNE_BATCH, judge

_CLAIM = (
    f"INSERT INTO {SCHEMA}.requests (request_id, created_ms, digest, accepted, duplicates) "
    "VALUES (%s, %s, %s, 0, 0) ON CONFLICT (request_id) DO NOTHING RETURNING 1"
)
_STORED = f"SELECT created_ms, digest, accepted, duplicates FROM {SCHEMA}.requests "
_STORED += "WHERE request_id = %s"
_TAKE_OVER = (
    f"UPDATE {SCHEMA}.requests SET created_ms = %s, digest = %s, accepted = 0, duplicates = 0 "
    "WHERE request_id = %s AND created_ms < %s RETURNING 1"
)


def claim(
    cur: psycopg.Cursor,
    request_id: str,
    digest: bytes,
    entity_ids: Sequence[str],
    *,
    now_ms: int,
    cutoff_ms: int,
) -> IngestResult | None:
    """None: the id is this transaction's (new, or expired and taken over); else the
    original answer of its first ingest (or `request_id_conflict`)."""
    if cur.execute(_CLAIM, (request_id, now_ms, digest)).fetchone() is not None:
        return None
    for _ in range(2):
        row = cur.execute(_STORED, (request_id,)).fetchone()
        if row is None:  # pruned in between: claim it again
            if cur.execute(_CLAIM, (request_id, now_ms, digest)).fetchone() is not None:
                return None
            continue
        created_ms, *stored = row
        if created_ms >= cutoff_ms:
            return judge(tuple(stored), request_id, digest, entity_ids)
        if cur.execute(_TAKE_OVER, (now_ms, digest, request_id, cutoff_ms)).fetchone():
            return None
    raise psycopg.errors.SerializationFailure("request id claimed concurrently; retry")


def record(cur: psycopg.Cursor, request_id: str, result: IngestResult) -> None:
    """The answer of the claimed id, at the end of the transaction that stored it."""
    cur.execute(
        f"UPDATE {SCHEMA}.requests SET accepted = %s, duplicates = %s WHERE request_id = %s",
        (result.accepted, result.duplicates, request_id),
    )


def has_expired(conn: psycopg.Connection, cutoff_ms: int) -> bool:
    query = f"SELECT 1 FROM {SCHEMA}.requests WHERE created_ms < %s LIMIT 1"
    return conn.execute(query, (cutoff_ms,)).fetchone() is not None


def prune(conn: psycopg.Connection, cutoff_ms: int, limit: int = PRUNE_BATCH) -> int:
    """Delete up to `limit` request ids older than the cutoff, oldest first; how many."""
    return conn.execute(
        f"DELETE FROM {SCHEMA}.requests WHERE request_id IN (SELECT request_id FROM "
        f"{SCHEMA}.requests WHERE created_ms < %s ORDER BY created_ms LIMIT %s)",
        (cutoff_ms, limit),
    ).rowcount
