"""The record codec: a record's covered bytes and their adler32 check, one or many at once.

adler32 of n bytes d_0..d_{n-1}: a = 1 + sum(d), b = n + sum((n - j) d_j), both mod 65521,
check = b << 16 | a. Over many rows that is a row sum and one float matrix-vector product
(exact: every partial sum is an integer below 2**53), equal to zlib.adler32 row by row.
"""

from __future__ import annotations

from zlib import adler32

import numpy as np

from shm.layout import CHECK_FIELD, COVERED_HEAD

ADLER_MOD = 65521


def pack_one(
    tag: int, key_len: int, code: int, *, gen: int, stored_at: int, as_of: int, values: np.ndarray
) -> bytes:
    """Covered bytes + check word of one record, ready to copy into the segment."""
    body = COVERED_HEAD.pack(tag, key_len, code, gen, stored_at, as_of) + values.tobytes()
    return body + CHECK_FIELD.pack(adler32(body))


def checksums(body: np.ndarray) -> np.ndarray:
    """zlib.adler32 of every row of a (k, n) uint8 matrix, as uint64."""
    n = body.shape[1]
    d = body.astype(np.float64)
    a = (1.0 + d @ np.ones(n)) % ADLER_MOD  # two matrix-vector products beat one (k, 2)
    b = (n + d @ (n - np.arange(n, dtype=np.float64))) % ADLER_MOD
    return (b.astype(np.uint64) << np.uint64(16)) | a.astype(np.uint64)


def pack_many(dtype: np.dtype, fields: dict[str, np.ndarray | int]) -> np.ndarray:
    """Covered records with their check words, from per-field columns, as raw bytes
    (k x itemsize uint8; padding zero)."""
    rows = np.zeros(len(fields["tag"]), dtype=dtype)  # type: ignore[arg-type]
    for name, column in fields.items():
        rows[name] = column
    raw = rows.view(np.uint8).reshape(len(rows), dtype.itemsize)
    rows["check"] = checksums(raw[:, : _body_bytes(dtype)])
    return raw


def intact(raw: np.ndarray) -> np.ndarray:
    """For raw covered records (k x itemsize uint8): does each check word match?"""
    body = raw.shape[1] - CHECK_FIELD.size
    stored = np.ascontiguousarray(raw[:, body:]).view("<u8")[:, 0]
    return checksums(raw[:, :body]) == stored


def as_records(raw: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A (k,) structured view of C-contiguous raw covered records. Copy raw bytes, never
    structured arrays: NumPy copies fields only and leaves padding undefined."""
    return raw.view(dtype)[:, 0]


def _body_bytes(dtype: np.dtype) -> int:
    return dtype.itemsize - CHECK_FIELD.size
