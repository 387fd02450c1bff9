"""The bucket of an entity id: how rows and events are co-partitioned (SPEC §16).

bucket = (first 8 bytes of BLAKE2b(UTF-8 id), unsigned little-endian) mod n, n a power of two:
the identifier digest of SPEC §4 (`features/hashing.py`, the one home of that digest).
It is stable across processes, hosts and Python versions (Python's `hash` of a str is salted
per process). With power-of-two counts, the bucket of a smaller count is the bucket of a
larger one modulo the smaller (`n | m` => h mod n = (h mod m) mod n), so an export of events
made with m buckets serves a run with any power-of-two count n (`partitions_for`).

How many buckets (`bucket_count`): enough that one bucket task holds at most `BUCKET_ROWS`
rows and `BUCKET_EVENTS` events (rows cost ~250 bytes each in a task, input, 27 feature
columns and output; events ~40), at least `BUCKETS_PER_WORKER` per worker so that faster
workers take more of them, at most `MAX_BUCKETS` (the shuffle has pieces x buckets parts).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from featurestore.features.hashing import id_digests

BUCKET_ROWS = 250_000
BUCKET_EVENTS = 2_000_000
BUCKETS_PER_WORKER = 2
MAX_BUCKETS = 4096
EXPORT_BUCKET_EVENTS = 1_000_000  # events per partition of `featurestore export events`


def bucket_of(entity_ids: np.ndarray | list[str], n_buckets: int) -> np.ndarray:
    """The bucket (int64, 0 ... n_buckets - 1) of each id; one hash per distinct id."""
    check_bucket_count(n_buckets)
    codes, uniques = pd.factorize(np.asarray(entity_ids, dtype=object))
    per_unique = id_digests(uniques.tolist()) & np.uint64(n_buckets - 1)
    return per_unique.astype(np.int64)[codes]


def check_bucket_count(n_buckets: int) -> int:
    """`n_buckets` if it is a power of two in [1, MAX_BUCKETS], else ValueError."""
    if not 1 <= n_buckets <= MAX_BUCKETS or n_buckets & (n_buckets - 1):
        raise ValueError(f"the bucket count must be a power of two from 1 to {MAX_BUCKETS}")
    return n_buckets


def _power_of_two_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def bucket_count(rows: int, events: int, workers: int) -> int:
    """The bucket count of a run over `rows` rows and `events` events on `workers` workers."""
    need = max(
        -(-rows // BUCKET_ROWS), -(-events // BUCKET_EVENTS), BUCKETS_PER_WORKER * workers, 1
    )
    return min(MAX_BUCKETS, _power_of_two_at_least(need))


def export_bucket_count(events: int) -> int:
    """The partition count of an export of `events` events."""
    return min(MAX_BUCKETS, _power_of_two_at_least(max(1, -(-events // EXPORT_BUCKET_EVENTS))))


def partitions_for(bucket: int, n_buckets: int, n_partitions: int) -> list[int]:
    """The partitions of an export with `n_partitions` buckets that hold the entities of
    `bucket` (of `n_buckets`): one when the export is coarser, several when it is finer."""
    if n_partitions <= n_buckets:
        return [bucket % n_partitions]
    return list(range(bucket, n_partitions, n_buckets))
