"""The packed segment layout of the SQLite store: each ingest appends one segment per entity
(its new events as records of the store's layout sorted by (ts, seq), the number of fields
they were written with, and their event ids joined by ID_SEPARATOR); an entity with more than
MAX_SEGMENTS segments is compacted into one, in the current layout. Every function runs
inside the caller's transaction."""

from __future__ import annotations

import itertools
import sqlite3

import numpy as np
import orjson
import pandas as pd

from featurestore.store.layout import RecordLayout

MAX_SEGMENTS = 8
ID_SEPARATOR = "\n"  # ids cannot contain control characters
JSON_IDS = "(SELECT value FROM json_each(?))"  # a JSON array parameter as a set of ids
_INSERT_SEGMENT = (
    "INSERT INTO segments (entity_id, first_seq, n, events, event_ids, n_fields) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def append_segments(
    conn: sqlite3.Connection,
    entity_ids: np.ndarray,
    records: np.ndarray,
    event_ids: np.ndarray,
    layout: RecordLayout,
    *,
    compact: bool,
) -> list[str]:
    """Append one segment per entity (records sorted by ts, seq); compact long chains."""
    if records.size == 0:
        return []
    codes, uniques = pd.factorize(entity_ids)
    order = np.lexsort((records["seq"], records["ts"], codes))
    records = records[order]
    codes = codes[order]
    counts = np.bincount(codes, minlength=len(uniques))
    bounds = np.concatenate(([0], np.cumsum(counts)))
    first_seqs = np.minimum.reduceat(records["seq"], bounds[:-1]).tolist()
    id_text = _ids_per_entity(event_ids[order], codes, len(uniques))
    blob = records.tobytes()
    size = layout.dtype.itemsize
    n_fields = layout.n_fields
    touched = [str(u) for u in uniques]
    spans = bounds.tolist()
    conn.executemany(
        _INSERT_SEGMENT,
        (
            (
                entity,
                first_seqs[i],
                spans[i + 1] - spans[i],
                blob[spans[i] * size : spans[i + 1] * size],
                id_text[i],
                n_fields,
            )
            for i, entity in enumerate(touched)
        ),
    )
    conn.executemany(
        "INSERT INTO entities (entity_id, n_events, n_segments) VALUES (?, ?, 1) "
        "ON CONFLICT (entity_id) DO UPDATE SET n_events = n_events + excluded.n_events, "
        "n_segments = n_segments + 1",
        zip(touched, counts.tolist(), strict=True),
    )
    if compact:
        compact_entities(conn, _long_chains(conn, touched), layout)
    return touched


def _long_chains(conn: sqlite3.Connection, entity_ids: list[str]) -> list[str]:
    rows = conn.execute(
        "SELECT entity_id FROM entities WHERE n_segments > ? "
        "AND entity_id IN (SELECT value FROM json_each(?))",
        (MAX_SEGMENTS, orjson.dumps(entity_ids)),
    ).fetchall()
    return [r[0] for r in rows]


def compact_entities(conn: sqlite3.Connection, entity_ids: list[str], layout: RecordLayout) -> None:
    """Merge every segment of each entity into one, in the current layout (inside the
    current transaction)."""
    if not entity_ids:
        return
    payload = orjson.dumps(entity_ids)
    rows = conn.execute(
        "SELECT entity_id, first_seq, events, event_ids, n_fields FROM segments "
        "WHERE entity_id IN (SELECT value FROM json_each(?)) ORDER BY entity_id, first_seq",
        (payload,),
    ).fetchall()
    merged = []
    for entity, group in itertools.groupby(rows, key=lambda r: r[0]):
        parts = list(group)
        events = merge_segments([layout.records(p[2], p[4]) for p in parts])
        ids = ID_SEPARATOR.join(p[3] for p in parts if p[3])
        merged.append((entity, parts[0][1], events.size, events.tobytes(), ids, layout.n_fields))
    conn.execute(f"DELETE FROM segments WHERE entity_id IN {JSON_IDS}", (payload,))
    conn.executemany(_INSERT_SEGMENT, merged)
    conn.execute(f"UPDATE entities SET n_segments = 1 WHERE entity_id IN {JSON_IDS}", (payload,))


def _ids_per_entity(event_ids: np.ndarray, codes: np.ndarray, n_entities: int) -> list[str]:
    """Each entity's event ids joined by ID_SEPARATOR ("" where it has none); `codes` sorted."""
    present = pd.notna(event_ids)
    if not present.any():
        return [""] * n_entities
    ids = event_ids[present].tolist()
    bounds = np.searchsorted(codes[present], np.arange(n_entities + 1)).tolist()
    return [ID_SEPARATOR.join(ids[bounds[i] : bounds[i + 1]]) for i in range(n_entities)]


def merge_segments(parts: list[np.ndarray]) -> np.ndarray:
    """Segments' records (each sorted by ts, seq; in sequence order, one layout) merged into
    (ts, seq) order."""
    merged = np.concatenate(parts)
    return merged[np.argsort(merged["ts"], kind="stable")]
