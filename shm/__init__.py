"""The shared-memory feature cache (layout and protocols: shm/layout.py)."""

from shm.cache import DEFAULT_WIDTH, FeatureCache, drop
from shm.errors import CacheError, CacheLayoutError, CacheTimeout, UnknownVersion

__all__ = [
    "DEFAULT_WIDTH",
    "CacheError",
    "CacheLayoutError",
    "CacheTimeout",
    "FeatureCache",
    "UnknownVersion",
    "drop",
]
