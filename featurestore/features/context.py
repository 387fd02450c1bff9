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
        self.batch = batch
        self.lengths = end - first
        self.first = first
        self.starts = np.cumsum(self.lengths) - self.lengths

    @cached_property
    def index(self) -> np.ndarray:
        return gather_index(self.first, self.lengths)

    @cached_property
    def ts(self) -> np.ndarray:
        return self.batch.ts[self.index]

    @cached_property
    def value(self) -> np.ndarray:
        return self.batch.value[self.index]

    @cached_property
    def category(self) -> np.ndarray:
        return self.batch.category[self.index]

    @cached_property
    def stats(self) -> SegmentStats:
        return SegmentStats(self.value, self.starts, self.lengths)

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
        search: SearchIndex | None = None,
    ) -> None:
        self.batch = batch
        self.entity_index = np.asarray(entity_index, dtype=np.int64)
        self.as_of_ms = np.asarray(as_of_ms, dtype=np.int64)
        self.category_names = category_names
        self.begin = batch.offsets[self.entity_index]
        search = search or SearchIndex(batch)
        self.end, self.first_in_week, self.first_in_month = search.locate(
            self.entity_index, [self.as_of_ms, self.as_of_ms - WEEK_MS, self.as_of_ms - MONTH_MS]
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
        ids = self.batch.entity_ids
        entities, position = np.unique(self.entity_index, return_inverse=True)
        return id_hashes([ids[e] for e in entities.tolist()])[position]

    @cached_property
    def interaction_hash(self) -> np.ndarray:
        out = np.full(self.entity_index.size, np.nan)
        rows = np.flatnonzero(self.has_category)
        if rows.size:
            ids, names = self.batch.entity_ids, self.category_names
            pair = self.entity_index[rows] * (len(names) + 1) + self.c_last[rows]
            pairs, position = np.unique(pair, return_inverse=True)
            entity, category = np.divmod(pairs, len(names) + 1)
            keys = [
                f"{ids[e]}|{names[c]}"
                for e, c in zip(entity.tolist(), category.tolist(), strict=True)
            ]
            out[rows] = id_hashes(keys)[position]
        return out

    def category_frequency(self) -> np.ndarray:
        window = self.all
        same = window.category == np.repeat(self.c_last, window.lengths)
        count = segment_sum(same.astype(np.float64), window.starts, window.lengths)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.has_category, count / window.stats.n, np.nan)


class SearchIndex:
    """One monotone int64 key per event (entity * span + shifted ts) over a whole batch, built
    once, so "the events of entity e with ts <= B" is one `searchsorted` for any number of
    queries. Falls back to ranks of the distinct timestamps when the key would overflow."""

    def __init__(self, batch: EventBatch) -> None:
        self.batch = batch
        ts = batch.ts
        if ts.size == 0:
            return
        lengths = batch.lengths
        owner = np.repeat(np.arange(lengths.size, dtype=np.int64), lengths)
        self.low, self.high = int(ts.min()) - 1, int(ts.max())
        span = self.high - self.low + 1
        self.distinct = None
        if span * max(lengths.size, 1) >= 2**62:
            self.distinct = np.unique(ts)
            span = self.distinct.size + 1
            self.keys = owner * span + np.searchsorted(self.distinct, ts) + 1
        else:
            self.keys = owner * span + (ts - self.low)
        self.span = span

    def locate(self, entity_index: np.ndarray, bounds: list[np.ndarray]) -> list[np.ndarray]:
        """For each bound array B: the row just past entity e's events with ts <= B[i]."""
        if self.batch.ts.size == 0:
            return [self.batch.offsets[entity_index].copy() for _ in bounds]
        base = entity_index * self.span
        if self.distinct is None:
            shifted = [np.clip(b, self.low, self.high) - self.low for b in bounds]
        else:
            shifted = [np.searchsorted(self.distinct, b, side="right") for b in bounds]
        return [np.searchsorted(self.keys, base + s, side="right") for s in shifted]
