"""The near cache of a host that shares its store with others (SPEC §15): what the listener
writes in the cache segment, and what `/health` and `/metrics` read from it.

With STORE_URL set, the host's cache segment is created with a lease of MAX_STALENESS_MS
(`featurestore/cache.py`; the lease itself: `shm/layout.py`). This host's listener
(`listener/`, one process per host) follows the store's change log, invalidates what other
hosts changed, and renews the lease each time it has applied every change committed before
some moment; gateway and broker serve a hit only while the lease holds, so no hit is staler
than MAX_STALENESS_MS, whatever happens to the listener or the database.

The listener also keeps its status in the segment's holder words (indexes `W_*` below), so
that any process of the host reports it without asking the listener anything.
"""

from __future__ import annotations

import time

from featurestore.wire.messages import ListenerHealth
from shm import FeatureCache

# Holder words (FeatureCache.holder_words), written by the listener only.
W_ADOPTED = 0  # 1 once a listener took this segment over (a new segment: 0)
W_STATE = 1  # one of STATES' codes
W_POSITION = 2  # the change sequence number applied last
W_PID = 3  # the listener's pid
W_CONFIRMED_NS = 4  # CLOCK_MONOTONIC ns: every change committed before it is applied
W_RECONNECTS = 5  # connections lost (and made again)
W_CLEARS = 6  # whole-cache clears (the log was pruned past the position, or on taking over)
W_CHANGES = 7  # change-log rows applied
W_INVALIDATED = 8  # entities invalidated

STATE_NEW = 0
STATE_CONNECTING = 1
STATE_CATCHING_UP = 2
STATE_LIVE = 3
STATE_DISCONNECTED = 4
STATE_STOPPED = 5
STATES = {
    STATE_NEW: "starting",
    STATE_CONNECTING: "connecting",
    STATE_CATCHING_UP: "catching_up",
    STATE_LIVE: "live",
    STATE_DISCONNECTED: "disconnected",
    STATE_STOPPED: "stopped",
}


def listener_health(cache: FeatureCache, max_staleness_ms: int) -> ListenerHealth:
    """The listener as this host's cache segment tells it (no lock, no call to it)."""
    words = cache.holder_words()
    confirmed = words[W_CONFIRMED_NS]
    lag_ms = None if not confirmed else round((time.monotonic_ns() - confirmed) / 1e6, 3)
    return ListenerHealth(
        state=STATES.get(words[W_STATE], "starting"),
        fresh=cache.serving(),
        lag_ms=lag_ms,
        max_staleness_ms=max_staleness_ms,
        position=words[W_POSITION],
        reconnects=words[W_RECONNECTS],
        cache_clears=words[W_CLEARS],
        changes_applied=words[W_CHANGES],
        entities_invalidated=words[W_INVALIDATED],
    )


def listener_pid(cache: FeatureCache) -> int:
    """The pid the listener wrote (0: none yet); for its memory in /health."""
    return cache.holder_words()[W_PID]
