"""The feature cache of a stack: the shared-memory segment (`shm`, which knows nothing of
features) shaped by the definitions the stack serves — a slot per version of the file (a
version's code is its place in the file) and rows as wide as its widest served vector."""

from __future__ import annotations

from featurestore.config import Settings
from featurestore.definitions import FeatureDefinitions, shipped_definitions
from shm import FeatureCache

# The shape of a cache of the shipped file (tools and tests that use no file of their own).
CACHE_VERSIONS: tuple[str, ...] = shipped_definitions().names
CACHE_WIDTH: int = shipped_definitions().width


def cache_shape(definitions: FeatureDefinitions) -> tuple[int, tuple[str, ...]]:
    """(row width, versions) of the cache of these definitions."""
    return definitions.width, definitions.names


def open_cache(settings: Settings, *, wait_s: float = 5.0) -> FeatureCache:
    """Create or attach the cache of these settings, checking that it has their layout. With
    a store other hosts write (STORE_URL), the cache is a near cache: it serves hits only under
    a lease of MAX_STALENESS_MS that this host's listener renews (listener/, SPEC §15)."""
    width, versions = cache_shape(settings.definitions)
    return FeatureCache.open(
        settings.cache_name,
        settings.cache_max_size,
        settings.cache_ttl_ms,
        width,
        versions,
        wait_s=wait_s,
        lease_ms=settings.max_staleness_ms if settings.shared_store else 0,
    )


def rebuild_if_stale(settings: Settings) -> bool:
    """Before a stack starts: a segment left under CACHE_NAME with another layout (another
    size or TTL, other versions or widths after a definitions change) is dropped, so the
    stack's processes create it anew instead of refusing it. True if one was dropped."""
    from shm import CacheLayoutError, drop

    try:
        open_cache(settings).close()
    except CacheLayoutError:
        drop(settings.cache_name)
        return True
    return False
