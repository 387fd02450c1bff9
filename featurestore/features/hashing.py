"""The identifier hash of SPEC §4: BLAKE2b (8 bytes), unsigned little-endian, mod 2**20."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from hashlib import blake2b

import numpy as np

HASH_BUCKETS = 2**20
HASH_CACHE_SIZE = 65_536  # recent ids and (id|category) pairs: repeated across calls


@lru_cache(maxsize=HASH_CACHE_SIZE)
def id_hash(text: str) -> int:
    """The hash of one identifier string."""
    digest = blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % HASH_BUCKETS


def id_hashes(texts: Sequence[str]) -> np.ndarray:
    """The hashes of many strings, as float64 (exact: every value is below 2**20).

    Strings cannot be hashed inside NumPy; this is one C call per distinct string.
    """
    return np.fromiter((id_hash(t) for t in texts), dtype=np.float64, count=len(texts))
