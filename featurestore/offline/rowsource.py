"""The rows of `generate`: one file, or a Parquet dataset (a directory or a glob), cut into
pieces that tasks read on their own.

Chunks are what `generate` validates, computes and writes at a time: `read_chunks` of each
file in turn (a dataset's files in path order), a new file starting a new chunk. A piece is a
run of whole chunks of one Parquet file, rows [start, stop) with start a multiple of the
chunk size, so a task reading a piece sees exactly the chunks the single-process run sees
(row numbers in messages, and the per-chunk reading of timestamp text, come out the same).
Files of other formats cannot be cut without reading them: `chunk_pieces` reads them once
and each chunk, held in memory, is a piece.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.offline.files import (
    FileError,
    file_format,
    parquet_column_names,
    read_chunks,
    select_columns,
)

GLOB_CHARACTERS = "*?["
DATASET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class RowPiece:
    """Rows [start, stop) of `path` (or `frame`, already read), input positions from `first`."""

    ordinal: int  # the piece's place in the input
    path: str
    start: int
    stop: int
    first: int  # input position of the piece's first row
    frame: pd.DataFrame | None = None

    @property
    def rows(self) -> int:
        return self.stop - self.start


def row_files(rows: str | Path) -> list[Path]:
    """The files of ROWS: itself, a directory's Parquet files, or a glob's, in path order."""
    text = str(rows)
    if any(c in text for c in GLOB_CHARACTERS):
        found = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        where = f"{text}: no file matches"
    elif Path(text).is_dir():
        found = sorted(
            p
            for p in Path(text).rglob("*")
            if p.is_file() and p.suffix.lower() in DATASET_SUFFIXES and not _hidden(p, text)
        )
        where = f"{text}: no Parquet file in this directory"
    elif not Path(text).exists():
        raise FileError(f"{text}: no such file")
    else:
        return [Path(text)]
    if not found:
        raise FileError(where)
    if len(found) > 1 or Path(text).is_dir():
        other = [p for p in found if file_format(p) != "parquet"]
        if other:
            raise FileError(f"{other[0]}: a dataset of rows is Parquet files only")
    return found


def _hidden(path: Path, root: str) -> bool:
    """Files that dataset readers skip: names starting with '.' or '_' (markers, partials)."""
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def is_parquet_input(files: list[Path]) -> bool:
    return all(file_format(f) == "parquet" for f in files)


def parquet_rows(path: Path) -> int:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileError(f"{path}: not a readable Parquet file ({exc})") from None


def parquet_pieces(files: list[Path], chunk_rows: int, piece_chunks: int) -> list[RowPiece]:
    """Pieces of at most `piece_chunks` chunks of `chunk_rows` rows, file by file."""
    pieces: list[RowPiece] = []
    step = chunk_rows * piece_chunks
    first = 0
    for path in files:
        total = parquet_rows(path)
        for start in range(0, total, step):
            stop = min(total, start + step)
            pieces.append(RowPiece(len(pieces), str(path), start, stop, first))
            first += stop - start
    return pieces


def chunk_pieces(
    files: list[Path], required: tuple[str, ...], chunk_rows: int
) -> Iterator[RowPiece]:
    """Each chunk of each file, read here, as a piece that carries its rows."""
    ordinal = first = 0
    for path in files:
        offset = 0
        for chunk in read_chunks(path, required, chunk_rows=chunk_rows):
            n = len(chunk)
            yield RowPiece(ordinal, str(path), offset, offset + n, first, chunk)
            ordinal += 1
            offset += n
            first += n


def piece_chunks(
    piece: RowPiece, required: tuple[str, ...], chunk_rows: int
) -> Iterator[tuple[int, pd.DataFrame]]:
    """(row offset in the file, chunk) for each chunk of the piece, in order."""
    if piece.frame is not None:
        yield piece.start, piece.frame
        return
    path = Path(piece.path)
    try:
        parquet = pq.ParquetFile(path)
        columns = select_columns(path, parquet_column_names(parquet.schema_arrow), required, ())
        table = _row_range(parquet, columns, piece.start, piece.stop)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileError(f"{path}: not a readable Parquet file ({exc})") from None
    for offset in range(0, table.num_rows, chunk_rows):
        yield piece.start + offset, table.slice(offset, chunk_rows).to_pandas()


def _row_range(parquet: pq.ParquetFile, columns: list[str], start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of the file, reading only the row groups they lie in."""
    groups, group_start, first_group_start = [], 0, None
    for index in range(parquet.metadata.num_row_groups):
        size = parquet.metadata.row_group(index).num_rows
        if group_start < stop and group_start + size > start:
            groups.append(index)
            if first_group_start is None:
                first_group_start = group_start
        group_start += size
    table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(start - (first_group_start or 0), stop - start)
