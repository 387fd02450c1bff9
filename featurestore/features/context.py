"""`FeatureContext`: the shared intermediates of one vectorised feature computation.

A computation has `m` queries, each an (entity, T) pair over an `EventBatch`. Since an entity's
events are sorted by (ts, seq), its events with ts <= T are a prefix and its windows
(T - 7 d, T] and (T - 30 d, T] are contiguous slices: one `searchsorted` finds them all.
Every intermediate is computed lazily, at most once, for all queries together.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

from featurestore.features.hashing import id_hashes
from featurestore.features.segments import SegmentStats, gather_index, segment_sum
from featurestore.store.batch import NO_CATEGORY, EventBatch

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
WEEK_MS = 7 * MS_PER_DAY
MONTH_MS = 30 * MS_PER_DAY
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0


class Window:
    """The events of each query inside one time range, gathered into flat arrays."""

    def __init__(self, batch: EventBatch, first: np.ndarray, end: np.ndarray) -> None:
        self.lengths = end - first
        index = gather_index(first, self.lengths)
        self.starts = np.cumsum(self.lengths) - self.lengths
        self.ts = batch.ts[index]
        self.value = batch.value[index]
        self.category = batch.category[index]
        self.stats = SegmentStats(self.value, self.starts, self.lengths)

    @cached_property
    def trend(self) -> np.ndarray:
        """Least-squares slope of value against time in days, time centred; NaN if undefined."""
        n = self.lengths
        if self.ts.size == 0:
            return np.full(n.size, np.nan)
        first_ts = self.ts[np.minimum(self.starts, self.ts.size - 1)]  # garbage where n == 0
        last_ts = self.ts[np.clip(self.starts + n - 1, 0, self.ts.size - 1)]
        offset = self.ts - np.repeat(first_ts, n)  # int64 ms since the window's first event
        mean_offset = segment_sum(offset, self.starts, n) / np.maximum(n, 1)
        t_days = (offset - np.repeat(mean_offset, n)) / MS_PER_DAY
        mean_x = segment_sum(self.value, self.starts, n) / np.maximum(n, 1)
        x_centred = self.value - np.repeat(mean_x, n)
        sxy = segment_sum(t_days * x_centred, self.starts, n)
        sxx = segment_sum(t_days * t_days, self.starts, n)
        defined = (n >= 2) & (last_ts != first_ts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(defined, sxy / np.where(defined, sxx, 1.0), np.nan)


class FeatureContext:
    """Intermediates shared by the features of one computation (m queries)."""

    def __init__(
        self,
        batch: EventBatch,
        entity_index: np.ndarray,
        as_of_ms: np.ndarray,
        category_names: list[str],
    ) -> None:
        self.batch = batch
        self.entity_index = np.asarray(entity_index, dtype=np.int64)
        self.as_of_ms = np.asarray(as_of_ms, dtype=np.int64)
        self.category_names = category_names
        self.begin = batch.offsets[self.entity_index]
        self.end, self.first_in_week, self.first_in_month = locate(
            batch,
            self.entity_index,
            [self.as_of_ms, self.as_of_ms - WEEK_MS, self.as_of_ms - MONTH_MS],
        )
        self.found = self.end > self.begin
        last = np.where(self.found, self.end - 1, 0)
        has_events = batch.ts.size > 0
        self.t_last = batch.ts[last] if has_events else np.zeros(last.size, dtype=np.int64)
        self.x_last = batch.value[last] if has_events else np.zeros(last.size)
        self.c_last = (
            np.where(self.found, batch.category[last], NO_CATEGORY)
            if has_events
            else np.full(last.size, NO_CATEGORY)
        )

    @cached_property
    def all(self) -> Window:
        """Every event with ts <= T."""
        return Window(self.batch, self.begin, self.end)

    @cached_property
    def week(self) -> Window:
        """Events with T - 7 d < ts <= T."""
        return Window(self.batch, self.first_in_week, self.end)

    @cached_property
    def month(self) -> Window:
        """Events with T - 30 d < ts <= T."""
        return Window(self.batch, self.first_in_month, self.end)

    @cached_property
    def has_category(self) -> np.ndarray:
        return self.c_last != NO_CATEGORY

    @cached_property
    def day_of_week(self) -> np.ndarray:
        return ((self.t_last // MS_PER_DAY + EPOCH_WEEKDAY) % 7).astype(np.float64)

    @cached_property
    def hour_of_day(self) -> np.ndarray:
        return ((self.t_last % MS_PER_DAY) // MS_PER_HOUR).astype(np.float64)

    @cached_property
    def entity_hash(self) -> np.ndarray:
        per_entity = id_hashes(self.batch.entity_ids)
        return per_entity[self.entity_index]

    @cached_property
    def interaction_hash(self) -> np.ndarray:
        out = np.full(self.entity_index.size, np.nan)
        rows = np.flatnonzero(self.has_category)
        if rows.size:
            ids = self.batch.entity_ids
            keys = [
                f"{ids[e]}|{self.category_names[c]}"
                for e, c in zip(
                    self.entity_index[rows].tolist(), self.c_last[rows].tolist(), strict=True
                )
            ]
            out[rows] = id_hashes(keys)
        return out

    def category_frequency(self) -> np.ndarray:
        window = self.all
        same = window.category == np.repeat(self.c_last, window.lengths)
        count = segment_sum(same.astype(np.float64), window.starts, window.lengths)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.has_category, count / window.stats.n, np.nan)


def locate(
    batch: EventBatch, entity_index: np.ndarray, bounds: list[np.ndarray]
) -> list[np.ndarray]:
    """For each bound array B, the global row index just past entity e's events with ts <= B.

    Searches one monotone key (entity * span + shifted ts) over all entities at once; falls
    back to ranks of the distinct timestamps when that key would overflow int64.
    """
    ts = batch.ts
    if ts.size == 0:
        return [batch.offsets[entity_index].copy() for _ in bounds]
    lengths = batch.lengths
    owner = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
    low, high = int(ts.min()) - 1, int(ts.max())
    span = high - low + 1
    if span * max(lengths.size, 1) < 2**62:
        keys = owner * span + (ts - low)
        return [
            np.searchsorted(keys, entity_index * span + (np.clip(b, low, high) - low), side="right")
            for b in bounds
        ]
    distinct = np.unique(ts)
    span = distinct.size + 1
    keys = owner * span + np.searchsorted(distinct, ts) + 1
    return [
        np.searchsorted(
            keys, entity_index * span + np.searchsorted(distinct, b, side="right"), side="right"
        )
        for b in bounds
    ]
