"""Timestamps of SPEC §3: epoch milliseconds in [0, 2**53) or ISO-8601 strings (UTC default).

`parse_timestamp` checks one JSON value; `parse_timestamp_column` a whole file column at once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

MAX_TIMESTAMP_MS = 2**53
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """The value is not a valid timestamp; the message says why, `row` which (columns only)."""

    def __init__(self, reason: str, row: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.row = row


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def parse_timestamp(value: Any) -> int:
    """Epoch ms of an integer, an integral float or an ISO-8601 string; TimestampError else."""
    if isinstance(value, bool):
        raise TimestampError("a boolean is not a timestamp")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise TimestampError("epoch milliseconds must be an integer")
        ms = int(value)
    elif isinstance(value, str):
        ms = _parse_iso(value)
    else:
        raise TimestampError("expected epoch milliseconds or an ISO-8601 string")
    if not 0 <= ms < MAX_TIMESTAMP_MS:
        raise TimestampError("out of range: epoch milliseconds must be in [0, 2^53)")
    return ms


def _parse_iso(text: str) -> int:
    if not 10 <= len(text) <= 64 or not text[:4].isdigit():
        raise TimestampError("not an ISO-8601 timestamp")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as exc:
        raise TimestampError(f"not a valid ISO-8601 timestamp ({exc})") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def format_iso(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC string with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")


def parse_timestamp_column(column: pd.Series) -> np.ndarray:
    """Epoch ms (int64) of a file column of numbers or ISO-8601 strings; TimestampError names
    the first bad row."""
    if pd.api.types.is_bool_dtype(column):
        raise TimestampError("a boolean is not a timestamp", row=0)
    if pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) | (values != np.floor(values))
        bad |= (values < 0) | (values >= MAX_TIMESTAMP_MS)
        _raise_first(bad, "epoch milliseconds must be an integer in [0, 2^53)")
        if pd.api.types.is_integer_dtype(column):
            return column.to_numpy(dtype=np.int64)
        return values.astype(np.int64)
    if pd.api.types.is_datetime64_any_dtype(column):
        utc = column.dt.tz_localize("UTC") if column.dt.tz is None else column.dt.tz_convert("UTC")
        ms = utc.astype("datetime64[ms, UTC]").astype("int64").to_numpy()  # floors; no ns overflow
        _raise_first(ms < 0, "before 1970-01-01")
        return ms
    return _parse_string_column(column)


def _parse_string_column(column: pd.Series) -> np.ndarray:
    text = column.astype("string")
    numeric = pd.to_numeric(text, errors="coerce")
    if numeric.notna().all():
        return parse_timestamp_column(numeric)
    if pd.notna(numeric.iloc[0]):  # a column of epoch ms with a bad row: name that row
        _raise_first(
            numeric.isna().to_numpy(),
            "not epoch milliseconds (a column is all epoch ms or all ISO-8601)",
        )
    try:
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    except (ValueError, OverflowError) as exc:
        raise TimestampError(f"not ISO-8601 timestamps ({exc})") from None
    _raise_first(
        parsed.isna().to_numpy(),
        "not an ISO-8601 timestamp (a column is all epoch ms or all ISO-8601)",
    )
    ms = parsed.astype("datetime64[ms, UTC]").astype("int64").to_numpy()  # floors; no ns overflow
    _raise_first(ms < 0, "before 1970-01-01")
    return ms


def _raise_first(bad: np.ndarray, reason: str) -> None:
    if bad.any():
        raise TimestampError(reason, row=int(np.flatnonzero(bad)[0]))
