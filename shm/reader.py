"""Lock-free vectorised lookups of many keys (the read protocol of layout.py, per row).

Rows whose snapshot is not clean (seq moved or odd, checksum wrong) or whose first tag match is
another key are handed back to the caller, which retries them one by one on the scalar
path (with its bounded retries and full probing).
"""

from __future__ import annotations

import numpy as np

from shm import index, records
from shm.keys import key_matrix
from shm.layout import H_ACTIVE, H_EPOCH, Layout
from shm.views import Views


class ManyReader:
    def __init__(self, views: Views, layout: Layout, ttl_ms: int) -> None:
        self.v = views  # only through `views`, so that closing can drop every export
        self.width = layout.width
        self.ttl_ms = ttl_ms
        self.gen_mask = np.uint64(layout.n_generations - 1)

    def lookup(
        self, code: int, salt: int, keys: list[bytes], hashes: np.ndarray, now_ns: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(values m x width, as_of m, hit m, rows to retry one by one)."""
        v, m = self.v, len(keys)
        tags = hashes ^ np.uint64(salt)
        slots = index.probe(v.buckets[v.words[H_ACTIVE]], tags)
        rows = np.flatnonzero(slots >= 0)
        found = slots[rows]
        seq_before = v.seq[found]
        raw = v.covered_raw[found]
        stored_keys = v.keys[found]
        seq_after = v.seq[found]
        rec = records.as_records(raw, v.covered.dtype)
        lengths = np.fromiter(map(len, keys), np.int64, m)
        wanted = key_matrix([keys[i] for i in rows.tolist()])
        good = (
            (seq_before == seq_after)
            & ((seq_before & np.uint64(1)) == 0)
            & (rec["tag"] == tags[rows].astype(np.uint32))
            & (rec["key_len"] == lengths[rows])
            & (rec["version"] == code)
            & (stored_keys == wanted).all(axis=1)
        )
        good[good] = records.intact(raw[good])
        current = v.gens[(hashes[rows] & self.gen_mask).astype(np.int64)] + np.uint64(
            v.words[H_EPOCH]
        )
        now_ms = now_ns // 1_000_000
        hit_at = good & (rec["entry_gen"] == current) & (rec["stored_at"] > now_ms - self.ttl_ms)
        hits = rows[hit_at]
        values = np.full((m, self.width), np.nan)
        values[hits] = rec["values"][hit_at]
        as_of = np.full(m, -1, dtype=np.int64)
        as_of[hits] = rec["as_of"][hit_at]
        hit = np.zeros(m, dtype=bool)
        hit[hits] = True
        v.access[found[hit_at]] = now_ns
        return values, as_of, hit, rows[~good]
