"""The identifier hash of SPEC §4: BLAKE2b (8 bytes), unsigned little-endian, mod 2**20."""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

HASH_BUCKETS = 2**20


def id_hash(text: str) -> int:
    """The hash of one identifier string."""
    digest = blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HASH_BUCKETS


def id_hashes(texts: Sequence[str]) -> np.ndarray:
    """The hashes of many strings, as float64 (exact: every value is below 2**20).

    Strings cannot be hashed inside NumPy; this is one C call per distinct string.
    """
    unique = dict.fromkeys(texts)
    table = {text: id_hash(text) for text in unique}
    return np.fromiter((table[t] for t in texts), dtype=np.float64, count=len(texts))
