"""The statistics of a cache, computed from shared memory: the same from every process.

Counters (hits, misses, evictions, puts, ...) are sums over the per-instance counter slots.
`size` counts the entries a get would return now (present, of the current generation,
younger than the TTL). `expirations` counts each entry that outlived its TTL exactly once:
those already removed or replaced (counted by the writer that removed them) plus those
still present; so it never decreases. An expired entry's lookups count as misses.
"""

from __future__ import annotations

import numpy as np

from shm import counters
from shm.layout import H_HIGH_WATER, H_RECOVERIES
from shm.writer import Writer


def snapshot(wr: Writer, now_ms: int, memory_bytes: int) -> dict:
    """Every statistic; call with the writer lock held so that the figures agree."""
    high = wr.w[H_HIGH_WATER]
    used = np.flatnonzero(wr.v.used[:high] == 1)
    valid, expired = wr.classify(used, now_ms)
    size = int(np.count_nonzero(valid & ~expired))
    totals = counters.totals(wr.v.counters)
    hits, misses = totals["hits"], totals["misses"]
    lookups = hits + misses
    return {
        "hits": hits,
        "misses": misses,
        "evictions": totals["evictions"],
        "expirations": totals["expirations"] + int(np.count_nonzero(valid & expired)),
        "size": size,
        "max_size": wr.n,
        "hit_rate": hits / lookups if lookups else 0.0,
        "utilization": size / wr.n,
        "memory_bytes": memory_bytes,
        "puts": totals["puts"],
        "stale_puts": totals["stale_puts"],
        "invalidations": totals["invalidations"],
        "recoveries": int(wr.w[H_RECOVERIES]),
        "ttl_ms": wr.ttl_ms,
    }
