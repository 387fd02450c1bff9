"""The change log of the PostgreSQL store (SPEC §15): how a commit tells every host which
entities changed, and how a host's listener reads it.

Writer side: every transaction that stores or deletes events takes the next change sequence
number (`counters.change_seq`, under the row lock that orders those commits), appends one
row `changes(seq, committed_ms, entity_ids)` and sends `NOTIFY featurestore_changes, 'seq'`.
A forgotten version (`featurestore definitions forget`) is the change of every entity: its
row has no entity ids (NULL), and every host that applies it clears its whole cache.
The notification carries only the sequence number, never the entities (a NOTIFY payload is
limited to 8,000 bytes; an ingest may touch 10,000 entities, a file chunk many more), and is
delivered by PostgreSQL at commit, so a listener that hears it finds the row.

Reader side: the change sequence is contiguous (a rolled-back transaction gives its number
back) and commits in its order, so "every change up to the head" is one query away: a
listener reads the head, then the rows after the last one it applied. A row missing from
that range means the log was pruned past the listener (it was away longer than
CHANGE_LOG_RETENTION_MS): it cannot know what changed and clears its whole cache.

Pruning (`prune`, by the workers' upkeep) deletes rows older than the retention, oldest
first, in bounded batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import psycopg

from featurestore.store.pg_schema import SCHEMA

CHANNEL = "featurestore_changes"
PRUNE_BATCH = 1000

_APPEND = (
    f"WITH change AS (INSERT INTO {SCHEMA}.changes (seq, committed_ms, entity_ids) "
    "VALUES (%s, %s, %s) RETURNING seq) "
    f"SELECT pg_notify('{CHANNEL}', seq::text) FROM change"
)


def append(cur: psycopg.Cursor, seq: int, entity_ids: Sequence[str] | None, now_ms: int) -> None:
    """Inside the writing transaction: log the entities it changed (None: every entity), and
    notify."""
    cur.execute(_APPEND, (seq, now_ms, None if entity_ids is None else list(entity_ids)))


def head(conn: psycopg.Connection) -> int:
    """The sequence number of the last committed change (0: none yet)."""
    row = conn.execute(f"SELECT change_seq FROM {SCHEMA}.counters WHERE id = 1").fetchone()
    return int(row[0]) if row else 0


def read_after(
    conn: psycopg.Connection, position: int, until: int, limit: int
) -> list[tuple[int, list[str] | None]]:
    """(seq, entity ids) of the changes in (position, until], in order, at most `limit`;
    entity ids None: every entity changed."""
    return conn.execute(
        f"SELECT seq, entity_ids FROM {SCHEMA}.changes WHERE seq > %s AND seq <= %s "
        "ORDER BY seq LIMIT %s",
        (position, until, limit),
    ).fetchall()


def has_expired(conn: psycopg.Connection, cutoff_ms: int) -> bool:
    query = f"SELECT 1 FROM {SCHEMA}.changes WHERE committed_ms < %s LIMIT 1"
    return conn.execute(query, (cutoff_ms,)).fetchone() is not None


def prune(conn: psycopg.Connection, cutoff_ms: int, limit: int = PRUNE_BATCH) -> int:
    """Delete up to `limit` changes committed before the cutoff, oldest first; how many."""
    return conn.execute(
        f"DELETE FROM {SCHEMA}.changes WHERE seq IN (SELECT seq FROM {SCHEMA}.changes "
        "WHERE committed_ms < %s ORDER BY seq LIMIT %s)",
        (cutoff_ms, limit),
    ).rowcount
