"""The errors of the shared-memory cache, in one place."""

from __future__ import annotations


class CacheError(Exception):
    """The cache segment cannot be used (base class)."""


class CacheLayoutError(CacheError):
    """The segment exists with another layout, size, width, TTL or version table."""


class CacheTimeout(CacheError):
    """The segment did not become ready, or a lock was not granted, before the deadline."""


class UnknownVersion(ValueError):
    """A feature version the cache has no code for."""
