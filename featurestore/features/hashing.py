"""The identifier digest of SPEC §4: BLAKE2b (8 bytes) as an unsigned little-endian integer.

The `hash` op takes it modulo its `buckets` (features/ops.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from hashlib import blake2b

import numpy as np

DIGEST_CACHE_SIZE = 65_536  # recent ids and (id|label) pairs: repeated across calls


@lru_cache(maxsize=DIGEST_CACHE_SIZE)
def id_digest(text: str) -> int:
    """The 64-bit digest of one identifier string."""
    return int.from_bytes(blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def id_digests(texts: Sequence[str]) -> np.ndarray:
    """The digests of many strings, as uint64 (one C call per distinct string: strings cannot
    be hashed inside NumPy)."""
    return np.fromiter((id_digest(t) for t in texts), dtype=np.uint64, count=len(texts))
