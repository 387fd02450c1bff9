"""`featurestore ingest FILE`: a CSV/Parquet/JSONL event file into the store.

Two passes over the file: the first validates every row (a bad file stores nothing and names
its first bad row), the second stores it chunk by chunk. Each chunk's request id is derived
from the file's content hash, so re-running an interrupted ingest of the same file stores
nothing twice, with or without event ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from featurestore.definitions.model import EventSchema, schema_or_shipped
from featurestore.offline.files import (
    FileError,
    event_columns,
    read_chunks,
    validate_event_frame,
)
from featurestore.store.base import EventStore
from featurestore.timestamps import now_ms

HASH_BLOCK_BYTES = 1 << 20
WRITE_CHUNK_ROWS = 250_000  # rows per transaction: fewer, larger segments to compact


@dataclass(frozen=True)
class FileIngestSummary:
    rows: int
    accepted: int
    duplicates: int
    entities: int


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def validate_file(path: Path, max_future_ms: int, schema: EventSchema | None = None) -> int:
    """Check every row; the number of rows. FileError names the first bad row."""
    latest = now_ms() + max_future_ms
    schema = schema_or_shipped(schema)
    rows = 0
    for chunk in read_chunks(path, *event_columns(schema), strict=True):
        validate_event_frame(path, chunk, rows, latest, materialize=False, schema=schema)
        rows += len(chunk)
    if rows == 0:
        raise FileError(f"{path}: the file has a header but no rows")
    return rows


def ingest_file(
    store: EventStore,
    path: str | Path,
    max_future_ms: int,
    progress: Callable[[int], None] | None = None,
    on_commit: Callable[[list[str]], None] | None = None,
    *,
    schema: EventSchema | None = None,
) -> FileIngestSummary:
    """Validate the whole file against the schema's fields (default: the shipped file's),
    then store it in chunks; `on_commit` gets each chunk's touched entity ids right after its
    commit (to invalidate cached vectors)."""
    source = Path(path)
    schema = schema_or_shipped(schema)
    total = validate_file(source, max_future_ms, schema)
    digest = file_digest(source)
    latest = now_ms() + max_future_ms
    rows = accepted = duplicates = 0
    touched: set[str] = set()
    for index, chunk in enumerate(
        read_chunks(source, *event_columns(schema), chunk_rows=WRITE_CHUNK_ROWS, strict=True)
    ):
        columns = validate_event_frame(source, chunk, rows, latest, schema=schema)
        result = store.ingest(columns, request_id=f"file:{digest}:{index}", compact=False)
        if on_commit is not None:
            on_commit(result.entity_ids)
        touched.update(result.entity_ids)
        rows += len(chunk)
        accepted += result.stored_now
        duplicates += len(chunk) - result.stored_now
        if progress is not None:
            progress(len(chunk))
    store.compact()
    if rows != total:
        raise FileError(f"{source}: the file changed while it was being ingested")
    return FileIngestSummary(rows, accepted, duplicates, len(touched))
