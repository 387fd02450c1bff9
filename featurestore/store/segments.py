"""The packed segment layout of every store: each ingest appends one segment per entity (its
new events as records of the store's layout sorted by (ts, seq), the number of fields they
were written with, and their event ids joined by ID_SEPARATOR); an entity with more than
MAX_SEGMENTS segments is compacted into one, in the current layout.

The packing (`event_records`, `pack_segments`, `merge_parts`, `merge_segments`) knows no
database and is shared by the SQLite and the PostgreSQL store; the SQLite statements follow
(`append_segments`, `compact_entities`), each run inside the caller's transaction."""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd

from featurestore.store.columns import EventColumns
from featurestore.store.layout import RecordLayout

MAX_SEGMENTS = 8
ID_SEPARATOR = "\n"  # ids cannot contain control characters
JSON_IDS = "(SELECT value FROM json_each(?))"  # a JSON array parameter as a set of ids
_INSERT_SEGMENT = (
    "INSERT INTO segments (entity_id, first_seq, n, events, event_ids, n_fields) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)


def event_records(
    events: EventColumns,
    keep: np.ndarray,
    layout: RecordLayout,
    labels: Mapping[str, np.ndarray],
    *,
    first_seq: int,
    now_ms: int,
) -> np.ndarray:
    """The packed records (the store's layout) of the kept events, in request order:
    sequence numbers from `first_seq` on, `ingested_at` = now, the numeric fields from the
    events and the categorical ones from `labels` (one label array per field, kept events)."""
    n_new = int(np.count_nonzero(keep))
    records = np.empty(n_new, dtype=layout.dtype)
    records["ts"] = events.ts[keep]
    records["seq"] = np.arange(first_seq, first_seq + n_new, dtype=np.int64)
    records["ingested_at"] = now_ms
    for name in layout.numeric:
        records[name] = events.numeric_column(name)[keep]
    for name in layout.categorical:
        records[name] = labels[name]
    return records


@dataclass(frozen=True)
class Segments:
    """One new segment per entity: entity `i` gets `counts[i]` records from `first_seqs[i]`
    on, `blobs[i]` (sorted by ts, seq), its event ids joined in `event_ids[i]`, all written
    with `n_fields` fields."""

    entity_ids: list[str]  # in order of first appearance in the request
    first_seqs: list[int]
    counts: list[int]
    blobs: list[bytes]
    event_ids: list[str]
    n_fields: int

    def rows(self) -> list[tuple[str, int, int, bytes, str, int]]:
        """(entity_id, first_seq, n, events, event_ids, n_fields): a `segments` row each."""
        n_fields = [self.n_fields] * len(self.entity_ids)
        columns = (self.entity_ids, self.first_seqs, self.counts, self.blobs, self.event_ids)
        return list(zip(*columns, n_fields, strict=True))


def pack_segments(
    entity_ids: np.ndarray, records: np.ndarray, event_ids: np.ndarray, n_fields: int
) -> Segments:
    """Split records (and their event ids) into one segment per entity, each in (ts, seq)."""
    if records.size == 0:
        return Segments([], [], [], [], [], n_fields)
    codes, uniques = pd.factorize(entity_ids)
    order = np.lexsort((records["seq"], records["ts"], codes))
    records = records[order]
    codes = codes[order]
    counts = np.bincount(codes, minlength=len(uniques))
    bounds = np.concatenate(([0], np.cumsum(counts)))
    first_seqs = np.minimum.reduceat(records["seq"], bounds[:-1]).tolist()
    id_text = _ids_per_entity(event_ids[order], codes, len(uniques))
    blob = records.tobytes()
    size = records.dtype.itemsize
    spans = bounds.tolist()
    return Segments(
        entity_ids=[str(u) for u in uniques],
        first_seqs=first_seqs,
        counts=counts.tolist(),
        blobs=[blob[spans[i] * size : spans[i + 1] * size] for i in range(len(uniques))],
        event_ids=id_text,
        n_fields=n_fields,
    )


def merge_parts(
    parts: Sequence[tuple[int, bytes, str, int]], layout: RecordLayout
) -> tuple[int, int, bytes, str, int]:
    """An entity's segments (first_seq, events, event_ids, n_fields), in first_seq order, as
    one in the current layout: (first_seq, n, events in (ts, seq) order, event ids, n_fields)."""
    events = merge_segments([layout.records(p[1], p[3]) for p in parts])
    ids = ID_SEPARATOR.join(p[2] for p in parts if p[2])
    return parts[0][0], int(events.size), events.tobytes(), ids, layout.n_fields


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
    segments = pack_segments(entity_ids, records, event_ids, layout.n_fields)
    touched = segments.entity_ids
    if not touched:
        return []
    conn.executemany(_INSERT_SEGMENT, segments.rows())
    conn.executemany(
        "INSERT INTO entities (entity_id, n_events, n_segments) VALUES (?, ?, 1) "
        "ON CONFLICT (entity_id) DO UPDATE SET n_events = n_events + excluded.n_events, "
        "n_segments = n_segments + 1",
        zip(touched, segments.counts, strict=True),
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
    merged = [
        (entity, *merge_parts([r[1:] for r in group], layout))
        for entity, group in itertools.groupby(rows, key=lambda r: r[0])
    ]
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
