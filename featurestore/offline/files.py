"""Event and row files (CSV, Parquet, JSON Lines; JSON arrays as output): chunked readers,
vectorised validation and streaming writers. Nothing here holds a whole file in memory or
loops over rows in Python (the JSON writers encode one chunk's row objects at a time).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from featurestore.definitions.model import NUMERIC, EventSchema, schema_or_shipped
from featurestore.store.columns import EventColumns
from featurestore.timestamps import TimestampError, parse_timestamp_column
from featurestore.validation.identifiers import CONTROL_PATTERN, MAX_ID_BYTES

CHUNK_ROWS = 100_000
CSV_BLOCK_BYTES = 4 << 20
JSON_SLICE_ROWS = 10_000  # rows of an output chunk turned into Python objects at a time
EVENT_REQUIRED = ("entity_id", "timestamp", "value")  # the default schema's event columns
EVENT_OPTIONAL = ("category", "event_id")
ROW_REQUIRED = ("entity_id", "timestamp")
_FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
# A JSON array is written chunk by chunk, but cannot be read that way: output only.
_OUTPUT_FORMATS = {**_FORMATS, ".json": "json"}


class FileError(ValueError):
    """A file cannot be used; the message names the file, and the row and column if any."""


def file_format(path: str | Path) -> str:
    """'csv', 'parquet' or 'jsonl', from the file name's extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise FileError(f"{path}: unknown file type {suffix!r} (use .csv, .parquet or .jsonl)")
    return _FORMATS[suffix]


def output_format(path: str | Path) -> str:
    """'csv', 'parquet', 'jsonl' or 'json' (an array of row objects), from the extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in _OUTPUT_FORMATS:
        raise FileError(
            f"{path}: unknown output file type {suffix!r} (use .csv, .parquet, .jsonl or .json)"
        )
    return _OUTPUT_FORMATS[suffix]


def count_rows(path: str | Path) -> int | None:
    """Rows of a Parquet file from its metadata (None for other formats: unknown up front)."""
    if file_format(path) == "parquet":
        try:
            return pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError):
            return None  # missing, empty or corrupt: `read_chunks` names the problem
    return None


def event_columns(schema: EventSchema) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(required, optional) columns of an event file of this schema."""
    required = ("entity_id", "timestamp", *schema.required)
    optional = (*(f.name for f in schema.fields if not f.required), "event_id")
    return required, optional


def read_chunks(
    path: str | Path,
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
    chunk_rows: int = CHUNK_ROWS,
    *,
    strict: bool = False,
) -> Iterator[pd.DataFrame]:
    """The file's `required` and present `optional` columns, chunk by chunk; `strict`: any
    other column is an error (event files: an undeclared field is refused, never dropped).

    CSV cells are read as strings (an empty cell is null); Parquet keeps its column types.
    """
    required, optional = tuple(required), tuple(optional)
    if strict:
        optional = (*optional, _STRICT)
    source = Path(path)
    kind = file_format(source)
    if not source.is_file():
        raise FileError(f"{source}: no such file")
    if source.stat().st_size == 0:
        raise FileError(f"{source}: the file is empty")
    if kind == "parquet":
        yield from _parquet_chunks(source, required, optional, chunk_rows)
    elif kind == "csv":
        yield from _csv_chunks(source, required, optional)
    else:
        yield from _jsonl_chunks(source, required, optional, chunk_rows)


_STRICT = "\x00strict"  # a marker among the optional columns: refuse any other column


def select_columns(
    source: Path, names: list[str], required: tuple[str, ...], optional: tuple[str, ...]
) -> list[str]:
    missing = [c for c in required if c not in names]
    if missing:
        raise FileError(
            f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(names) or 'none'}"
        )
    if _STRICT in optional:
        known = set(required) | set(optional)
        unknown = [c for c in names if c not in known]
        if unknown:
            raise FileError(
                f"{source}: column(s) {', '.join(unknown)} are not declared event fields "
                f"(declared: {', '.join(c for c in (*required, *optional) if c != _STRICT)})"
            )
    return [*required, *(c for c in optional if c in names)]


def _parquet_chunks(source: Path, required, optional, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        parquet = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileError(f"{source}: not a readable Parquet file ({exc})") from None
    columns = select_columns(source, parquet_column_names(parquet.schema_arrow), required, optional)
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
        yield batch.to_pandas()


def parquet_column_names(schema: pa.Schema) -> list[str]:
    """The data columns of a Parquet file: all but those pandas stored its index in."""
    index = _pandas_index_columns(schema)
    return [n for n in schema.names if n not in index]


def _pandas_index_columns(schema: pa.Schema) -> set[str]:
    """The columns pandas stored its DataFrame index in (`to_parquet` of a frame whose index
    is not a plain range): not data, so not refused as undeclared fields."""
    try:
        metadata = schema.pandas_metadata or {}
    except (ValueError, TypeError):  # foreign metadata under the pandas key: no index known
        return set()
    return {c for c in metadata.get("index_columns", []) if isinstance(c, str)}


def _csv_chunks(source: Path, required, optional) -> Iterator[pd.DataFrame]:
    try:
        probe = pacsv.open_csv(source, read_options=pacsv.ReadOptions(block_size=1 << 16))
        names = probe.schema.names
        probe.close()
        columns = select_columns(source, names, required, optional)
        reader = pacsv.open_csv(
            source,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in names},
                include_columns=columns,
                strings_can_be_null=True,
            ),
        )
        for batch in reader:
            yield batch.to_pandas()
    except pa.ArrowInvalid as exc:
        raise FileError(f"{source}: not a readable CSV file ({exc})") from None


def _jsonl_chunks(source: Path, required, optional, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        reader = pd.read_json(source, lines=True, chunksize=chunk_rows, dtype=False)
        for frame in reader:
            columns = select_columns(source, list(frame.columns), required, optional)
            yield frame[columns]
    except FileError:
        raise  # already names the file and the problem
    except ValueError as exc:
        raise FileError(f"{source}: not a readable JSON Lines file ({exc})") from None


# --------------------------------------------------------------------------- validation
def _bad(source: Path, offset: int, row: int, column: str, reason: str) -> FileError:
    return FileError(f"{source}: row {offset + row + 1}, column {column}: {reason}")


def check_identifiers(
    source: Path,
    frame: pd.DataFrame,
    column: str,
    offset: int,
    *,
    required: bool,
    materialize: bool = True,
) -> np.ndarray | None:
    """The column as an object array of str/None, after the identifier rules of SPEC §3
    (`materialize=False`: check only, return None)."""
    series = frame[column]
    if not (pd.api.types.is_string_dtype(series) or series.isna().all()):
        row = 0
        if series.dtype == object:  # mixed types (JSON Lines): name the first non-text row
            text = series.map(lambda v: isinstance(v, str)) | series.isna()
            row = int(np.flatnonzero(~text.to_numpy(dtype=bool))[0])
        raise _bad(source, offset, row, column, "must be text")
    array = _arrow_strings(series)
    nulls = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    if required and nulls.any():
        raise _bad(source, offset, int(np.flatnonzero(nulls)[0]), column, "is required")
    sizes = pc.binary_length(array).to_numpy(zero_copy_only=False)
    too_long = ~nulls & ((np.nan_to_num(sizes, nan=1) < 1) | (np.nan_to_num(sizes) > MAX_ID_BYTES))
    if too_long.any():
        raise _bad(
            source,
            offset,
            int(np.flatnonzero(too_long)[0]),
            column,
            f"must be 1-{MAX_ID_BYTES} UTF-8 bytes",
        )
    control = pc.fill_null(pc.match_substring_regex(array, CONTROL_PATTERN), False)
    control = control.to_numpy(zero_copy_only=False)
    if control.any():
        raise _bad(
            source,
            offset,
            int(np.flatnonzero(control)[0]),
            column,
            "contains a control character (U+0000-U+001F)",
        )
    if not materialize:
        return None
    return _objects(array)


def identifier_values(frame: pd.DataFrame, column: str) -> np.ndarray:
    """The column as `check_identifiers` returns it, without the checks (rows checked before)."""
    return _objects(_arrow_strings(frame[column]))


def _objects(array: pa.Array) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=object)  # None for nulls


def _arrow_strings(series: pd.Series) -> pa.Array:
    """The column as one Arrow string array (no copy when pandas already holds Arrow)."""
    backing = getattr(series.array, "_pa_array", None)
    if backing is not None and pa.types.is_string(backing.type):
        return backing.combine_chunks() if isinstance(backing, pa.ChunkedArray) else backing
    return pa.array(series.astype(object), type=pa.string(), from_pandas=True)


def check_timestamps(
    source: Path, frame: pd.DataFrame, offset: int, latest_ms: int | None = None
) -> np.ndarray:
    column = frame["timestamp"]
    if column.isna().any():
        raise _bad(
            source,
            offset,
            int(np.flatnonzero(column.isna().to_numpy())[0]),
            "timestamp",
            "is required",
        )
    try:
        ts = parse_timestamp_column(column)
    except TimestampError as exc:
        raise _bad(source, offset, exc.row or 0, "timestamp", exc.reason) from None
    if latest_ms is not None and (future := ts > latest_ms).any():
        raise _bad(
            source, offset, int(np.flatnonzero(future)[0]), "timestamp", "is too far in the future"
        )
    return ts


def check_values(
    source: Path, frame: pd.DataFrame, offset: int, name: str = "value", *, required: bool = True
) -> np.ndarray:
    """A numeric field's column as float64: finite numbers, empty cells NaN (missing) unless
    the field is required."""
    column = frame[name]
    if pd.api.types.is_bool_dtype(column):
        raise _bad(source, offset, 0, name, "must be a number, not a boolean")
    if column.dtype == object:  # JSON Lines with mixed types: true must not become 1
        flags = column.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)
        if flags.any():
            row = int(np.flatnonzero(flags)[0])
            raise _bad(source, offset, row, name, "must be a number, not a boolean")
        if file_format(source) == "jsonl":  # a JSON string is not a number ("1.5" neither)
            text = column.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
            if text.any():
                row = int(np.flatnonzero(text)[0])
                raise _bad(source, offset, row, name, "must be a number, not a string")
    numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers)
    if not required:
        bad &= ~column.isna().to_numpy()  # an empty cell: the event lacks the field
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        reason = "is required" if pd.isna(column.iloc[row]) else "must be a finite number"
        raise _bad(source, offset, row, name, reason)
    return numbers


def validate_event_frame(
    source: Path,
    frame: pd.DataFrame,
    offset: int,
    latest_ms: int,
    *,
    materialize: bool = True,
    schema: EventSchema | None = None,
) -> EventColumns | None:
    """One chunk of an event file of this schema (default: the shipped file's), checked and
    turned into store columns (strings as str/None objects); `materialize=False` only checks
    it."""
    schema = schema_or_shipped(schema)
    entity_ids = check_identifiers(
        source, frame, "entity_id", offset, required=True, materialize=materialize
    )
    ts = check_timestamps(source, frame, offset, latest_ms)
    numeric = {
        f.name: check_values(source, frame, offset, f.name, required=f.required)
        for f in schema.fields
        if f.kind == NUMERIC and f.name in frame
    }

    def strings(column: str) -> np.ndarray | None:
        if column not in frame:
            return np.full(len(frame), None, dtype=object)
        return check_identifiers(
            source, frame, column, offset, required=False, materialize=materialize
        )

    categorical = {name: strings(name) for name in schema.categorical}
    event_ids = strings("event_id")
    if not materialize:
        return None
    return EventColumns(
        entity_ids, ts, event_id=event_ids, numeric=numeric, categorical=categorical
    )


def normalise_row_timestamps(column: pd.Series) -> pd.Series:
    """CSV text that is all integers becomes int64 (so JSON output keeps numbers)."""
    if pd.api.types.is_string_dtype(column):
        numbers = pd.to_numeric(column, errors="coerce")
        if numbers.notna().all() and (numbers == np.floor(numbers)).all():
            return numbers.astype(np.int64)
    return column


def frame_to_columns(frame: pd.DataFrame, schema: EventSchema | None = None) -> EventColumns:
    """A validated ingest frame of this schema (default: the shipped file's) as store columns
    (NaN / None where a cell is empty)."""
    schema = schema_or_shipped(schema)

    def strings(name: str) -> np.ndarray:
        if name not in frame:
            return np.full(len(frame), None, dtype=object)
        column = frame[name].astype(object)
        return column.where(column.notna(), None).to_numpy(dtype=object)

    return EventColumns(
        frame["entity_id"].astype(object).to_numpy(dtype=object),
        frame["timestamp"].to_numpy(dtype=np.int64),
        event_id=strings("event_id"),
        numeric={
            name: frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
            for name in schema.numeric
            if name in frame
        },
        categorical={name: strings(name) for name in schema.categorical},
    )


# --------------------------------------------------------------------------- writers
class FrameWriter:
    """Appends DataFrames (same columns and dtypes) to a CSV, Parquet, JSON Lines or JSON file.

    JSON is one array of row objects, written slice by slice: nulls (NaN and pandas NA) are
    JSON null, integer columns (nullable Int64 included) JSON integers, text and numbers as
    they are in the frame. Writes to `<name>.partial` and moves it into place
    on a clean close, so a failed run never leaves a half-written output behind.
    Parquet gets one row group per `write`."""

    def __init__(
        self,
        path: str | Path,
        metadata: dict[str, str] | None = None,
        *,
        make_parents: bool = True,
    ) -> None:
        self.metadata = metadata or {}
        self.final_path = Path(path)
        self.kind = output_format(self.final_path)
        if make_parents:  # a part of a dataset must not bring back an aborted run's directory
            self.final_path.parent.mkdir(parents=True, exist_ok=True)
        self.path = self.final_path.with_name(self.final_path.name + ".partial")
        self._parquet: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._files = contextlib.ExitStack()
        self._handle = (
            None if self.kind == "parquet" else self._files.enter_context(self.path.open("wb"))
        )
        self._first = True
        self._rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.kind == "parquet":
            self._write_parquet(frame)
        elif self.kind == "csv":
            frame.to_csv(self._handle, index=False, header=self._first, lineterminator="\n")
        elif self.kind == "jsonl":
            for rows in _row_slices(frame):
                self._handle.write(b"".join(_encode(row) + b"\n" for row in rows))
        else:
            self._write_json(frame)
        self._first = False

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False, schema=self._schema)
        if self._parquet is None:
            self._schema = table.schema.with_metadata(
                {**(table.schema.metadata or {}), **self.metadata}
            )
            table = table.replace_schema_metadata(self._schema.metadata)
            self._parquet = pq.ParquetWriter(self.path, table.schema)
        self._parquet.write_table(table)

    def _write_json(self, frame: pd.DataFrame) -> None:
        """Each slice's rows in one encoding call, its brackets traded for the array's: `[`
        before the first row, `,` between slices; `close` writes the `]`."""
        for rows in _row_slices(frame):
            if rows:
                lead = b"[" if self._rows == 0 else b","
                self._handle.write(lead + _encode(rows)[1:-1])
                self._rows += len(rows)

    def close(self, keep: bool = True) -> None:
        """Finish the file and move it into place (`keep`), or throw the partial file away."""
        if self._parquet is not None:
            self._parquet.close()
        if keep and self.kind == "json":
            self._handle.write(b"]\n" if self._rows else b"[]\n")
        self._files.close()
        if keep and self.path.exists():
            os.replace(self.path, self.final_path)
        else:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(keep=exc_type is None)


def _row_slices(frame: pd.DataFrame) -> Iterator[list[dict]]:
    """The frame's rows as dicts in column order (NaN and NA None, Int64 cells int), at most
    JSON_SLICE_ROWS at a time: the Python objects of a whole 100,000-row chunk of every
    feature take ~250 MB."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    for batch in table.to_batches(max_chunksize=JSON_SLICE_ROWS):
        yield batch.to_pylist()


def _encode(value: object) -> bytes:
    return orjson.dumps(value, default=_json_default)


def _json_default(value: object) -> str:
    """What orjson leaves to us: pandas' nanosecond Timestamp (a datetime column of a Parquet
    input), as ISO-8601 like the datetimes orjson writes itself."""
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")
