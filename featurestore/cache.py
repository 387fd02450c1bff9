"""The feature cache of a stack: the shared-memory segment (`shm`, which knows nothing of
features) shaped by the feature versions this stack serves."""

from __future__ import annotations

from featurestore.config import FEATURE_VERSIONS, Settings
from featurestore.features.registry import REGISTRY
from shm import FeatureCache

CACHE_VERSIONS: tuple[str, ...] = FEATURE_VERSIONS  # a version's code is its place here
CACHE_WIDTH = max(len(feature_set.features) for feature_set in REGISTRY.values())


def open_cache(settings: Settings, *, wait_s: float = 5.0) -> FeatureCache:
    """Create or attach the cache of these settings, checking that it has their layout. With
    a store other hosts write (STORE_URL), the cache is a near cache: it serves hits only under
    a lease of MAX_STALENESS_MS that this host's listener renews (listener/, SPEC §15)."""
    return FeatureCache.open(
        settings.cache_name,
        settings.cache_max_size,
        settings.cache_ttl_ms,
        CACHE_WIDTH,
        CACHE_VERSIONS,
        wait_s=wait_s,
        lease_ms=settings.max_staleness_ms if settings.shared_store else 0,
    )
