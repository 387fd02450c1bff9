"""Cache keys: (version, entity_id) -> UTF-8 bytes, version code and 32-bit hashes.

The hashes must agree across independently started processes, so Python's randomised
`hash()` is out; crc32 is one C call. The index tag is crc32(id) ^ salt(version) (the
salts are in the segment's header, `VersionTable`); the
generation table is indexed by crc32(id) alone, so every version of an entity shares it.
Hashes only pick buckets: a key is always confirmed byte for byte (so "abc" and "abc\\0"
are different keys).
"""

from __future__ import annotations

from zlib import crc32

import numpy as np

from shm.errors import UnknownVersion
from shm.layout import H_SALTS, H_VERSION_COUNT, KEY_MAX_BYTES, MAX_VERSIONS


class VersionTable:
    """The versions of a segment: code (1-based position, stored in records) and salt of
    each. Built from the names the opener serves, or, for tools that attach without them,
    from the header's table alone (codes and salts, no names)."""

    def __init__(self, names: tuple[str, ...] | None, words: memoryview) -> None:
        count = words[H_VERSION_COUNT]
        self.salts = np.zeros(MAX_VERSIONS + 1, dtype=np.uint64)  # by code; 0 = no version
        self.salts[1 : count + 1] = words[H_SALTS + 1 : H_SALTS + 1 + count]
        self.known = np.zeros(MAX_VERSIONS + 1, dtype=bool)
        self.known[1 : count + 1] = True
        self.pairs = [(code, int(self.salts[code])) for code in range(1, count + 1)]
        self.codes: dict[str, tuple[int, int]] = (
            {} if names is None else {v: self.pairs[i] for i, v in enumerate(names)}
        )

    def code(self, version: str) -> tuple[int, int]:
        """(code, salt) of a feature version."""
        try:
            return self.codes[version]
        except KeyError:
            raise UnknownVersion(
                f"unknown feature version {version!r}; known: {', '.join(self.codes)}"
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
