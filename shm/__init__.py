"""The shared-memory feature cache (layout and protocols: shm/layout.py).

A leaf library: it imports nothing of the feature store (the versions and width of a stack's
cache are given by `featurestore.cache`). `FeatureCache` and `drop` load NumPy on first use,
so light modules of the package (`shm.procfs`, `shm.errors`) import without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shm.errors import CacheError, CacheLayoutError, CacheTimeout, UnknownVersion

if TYPE_CHECKING:
    from shm.cache import FeatureCache, drop

__all__ = [
    "CacheError",
    "CacheLayoutError",
    "CacheTimeout",
    "FeatureCache",
    "UnknownVersion",
    "drop",
]


def __getattr__(name: str) -> object:
    if name in ("FeatureCache", "drop"):
        from shm import cache

        return getattr(cache, name)
    raise AttributeError(f"module 'shm' has no attribute {name!r}")
