"""Cache keys: (version, entity_id) -> UTF-8 bytes, version code and 32-bit hashes.

The hashes must agree across independently started processes, so Python's randomised
`hash()` is out; crc32 is one C call. The index tag is crc32(id) ^ salt(version); the
generation table is indexed by crc32(id) alone, so every version of an entity shares it.
Hashes only pick buckets: a key is always confirmed byte for byte (so "abc" and "abc\\0"
are different keys).
"""

from __future__ import annotations

from zlib import crc32

import numpy as np

from featurestore.config import FEATURE_VERSIONS
from shm.errors import UnknownVersion
from shm.layout import KEY_MAX_BYTES

# version -> (code stored in records, salt of its index tags); codes are 1-based positions.
VERSION_CODES: dict[str, tuple[int, int]] = {
    v: (i + 1, crc32(f"feature-version:{v}".encode())) for i, v in enumerate(FEATURE_VERSIONS)
}
SALT_BY_CODE: dict[int, int] = dict(VERSION_CODES.values())


def version_code(version: str) -> tuple[int, int]:
    """(code, salt) of a feature version."""
    try:
        return VERSION_CODES[version]
    except KeyError:
        raise UnknownVersion(
            f"unknown feature version {version!r}; known: {', '.join(VERSION_CODES)}"
        ) from None


def encode_id(entity_id: str) -> bytes:
    key = entity_id.encode()
    if len(key) > KEY_MAX_BYTES:
        raise ValueError(f"entity id longer than {KEY_MAX_BYTES} UTF-8 bytes")
    return key


def encode_ids(entity_ids: list[str]) -> list[bytes]:
    keys = list(map(str.encode, entity_ids))
    if keys and max(map(len, keys)) > KEY_MAX_BYTES:
        raise ValueError(f"entity id longer than {KEY_MAX_BYTES} UTF-8 bytes")
    return keys


def id_hashes(keys: list[bytes]) -> np.ndarray:
    """crc32 of every key, as uint64."""
    return np.fromiter(map(crc32, keys), dtype=np.uint64, count=len(keys))


def key_matrix(keys: list[bytes]) -> np.ndarray:
    """Keys zero-padded to KEY_MAX_BYTES, as an (m, KEY_MAX_BYTES // 8) uint64 matrix."""
    padded = np.array(keys, dtype=f"S{KEY_MAX_BYTES}") if keys else np.zeros(0, f"S{KEY_MAX_BYTES}")
    return padded.view(np.uint64).reshape(len(keys), KEY_MAX_BYTES // 8)
