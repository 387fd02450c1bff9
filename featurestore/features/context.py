"""`FeatureContext`: the shared intermediates of one vectorised feature computation.

A computation has `m` queries, each an (entity, T) pair over an `EventBatch`. Since an entity's
events are sorted by (ts, seq), its events with ts <= T are a prefix and every window
(T - w, T] is a contiguous slice: one `searchsorted` per distinct window finds them all for
every query. Every intermediate — a window's rows, the rows a `where` keeps, a field's present
values there and their statistics — is computed lazily, at most once per call, and shared by
every feature that needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import numpy as np

from featurestore.definitions.model import Condition
from featurestore.features.hashing import id_digests
from featurestore.features.segments import SegmentStats, gather_index, segment_sum, slope
from featurestore.store.batch import NO_LABEL, EventBatch

MS_PER_DAY = 86_400_000
MS_PER_HOUR = 3_600_000
EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday; Monday = 0


_COMPARE = {
    "eq": np.equal,
    "ne": np.not_equal,
    "gt": np.greater,
    "ge": np.greater_equal,
    "lt": np.less,
    "le": np.less_equal,
}


class Selection:
    """Events of each query (a window, filtered): batch rows `index[starts[i]:starts[i] +
    lengths[i]]` belong to query i, in (ts, seq) order."""

    def __init__(self, index: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.index = index
        self.starts = starts
        self.lengths = lengths

    @classmethod
    def of_slices(cls, first: np.ndarray, end: np.ndarray) -> Selection:
        lengths = end - first
        return cls(gather_index(first, lengths), np.cumsum(lengths) - lengths, lengths)

    def keep(self, mask: np.ndarray) -> Selection:
        """The rows where `mask` (one bool per row of `index`) holds."""
        if mask.all():
            return self
        lengths = segment_sum(mask.astype(np.int64), self.starts, self.lengths)
        return Selection(self.index[mask], np.cumsum(lengths) - lengths, lengths)

    @cached_property
    def n(self) -> np.ndarray:
        return self.lengths.astype(np.float64)


class FieldValues:
    """One field's present values in a selection: flat values and times, segmented per query."""

    def __init__(self, x: np.ndarray, ts: np.ndarray, selection: Selection) -> None:
        self.x = x
        self.ts = ts
        self.starts = selection.starts
        self.lengths = selection.lengths

    @cached_property
    def stats(self) -> SegmentStats:
        return SegmentStats(self.x, self.starts, self.lengths)

    @cached_property
    def slope(self) -> np.ndarray:
        """Least-squares slope; exactly 0 for constant values (decided exactly: rounding of
        the mean must not tilt a flat line, e.g. of values near 1e100)."""
        fitted = slope(self.ts, self.x, self.starts, self.lengths)
        flat = self.stats.constant & ~np.isnan(fitted)
        return np.where(flat, 0.0, fitted) if flat.any() else fitted

    def first(self) -> np.ndarray:
        out = np.full(self.lengths.size, np.nan)
        has = self.lengths > 0
        out[has] = self.x[self.starts[has]]
        return out

    def last(self) -> np.ndarray:
        out = np.full(self.lengths.size, np.nan)
        has = self.lengths > 0
        out[has] = self.x[self.starts[has] + self.lengths[has] - 1]
        return out


class FeatureContext:
    """Intermediates shared by the features of one computation (m queries)."""

    def __init__(
        self,
        batch: EventBatch,
        entity_index: np.ndarray,
        as_of_ms: np.ndarray,
        label_names: Mapping[str, list[str]],
        *,
        search: SearchIndex | None = None,
        windows: tuple[int, ...] = (),
    ) -> None:
        self.batch = batch
        self.entity_index = np.asarray(entity_index, dtype=np.int64)
        self.as_of_ms = np.asarray(as_of_ms, dtype=np.int64)
        self.label_names = label_names
        self.begin = batch.offsets[self.entity_index]
        search = search or SearchIndex(batch)
        located = search.locate(
            self.entity_index, [self.as_of_ms, *(self.as_of_ms - w for w in windows)]
        )
        self.end = located[0]
        self._window_first = dict(zip(windows, located[1:], strict=True))
        self.found = self.end > self.begin
        self.has_events = batch.ts.size > 0
        self.last_row = np.where(self.found, self.end - 1, 0)
        self.t_last = (
            batch.ts[self.last_row] if self.has_events else np.zeros(self.last_row.size, np.int64)
        )
        self._selections: dict[tuple, Selection] = {}
        self._values: dict[tuple, FieldValues] = {}

    # -- the last event ------------------------------------------------------------------
    def last_value(self, field: str) -> np.ndarray:
        """The last event's value of a numeric field (NaN when it lacks it, or no event)."""
        if not self.has_events:
            return np.full(self.last_row.size, np.nan)
        return self.batch.numeric[field][self.last_row]

    def last_label(self, field: str) -> np.ndarray:
        """The last event's label of a categorical field (NO_LABEL when it lacks it)."""
        if not self.has_events:
            return np.full(self.last_row.size, NO_LABEL, dtype=np.int32)
        return np.where(self.found, self.batch.labels[field][self.last_row], NO_LABEL)

    @cached_property
    def t_first(self) -> np.ndarray:
        if not self.has_events:
            return np.zeros(self.begin.size, np.int64)
        return self.batch.ts[np.where(self.found, self.begin, 0)]

    @cached_property
    def day_of_week(self) -> np.ndarray:
        return ((self.t_last // MS_PER_DAY + EPOCH_WEEKDAY) % 7).astype(np.float64)

    @cached_property
    def hour_of_day(self) -> np.ndarray:
        return ((self.t_last % MS_PER_DAY) // MS_PER_HOUR).astype(np.float64)

    @cached_property
    def entity_digests(self) -> np.ndarray:
        ids = self.batch.entity_ids
        entities, position = np.unique(self.entity_index, return_inverse=True)
        return id_digests([ids[e] for e in entities.tolist()])[position]

    def pair_digests(self, field: str) -> np.ndarray:
        """Digests of `entity_id|name of the last event's label` (0 where it has none; the
        caller nulls those)."""
        out = np.zeros(self.entity_index.size, dtype=np.uint64)
        labels = self.last_label(field)
        rows = np.flatnonzero(labels != NO_LABEL)
        if rows.size:
            ids, names = self.batch.entity_ids, self.label_names[field]
            pair = self.entity_index[rows] * (len(names) + 1) + labels[rows]
            pairs, position = np.unique(pair, return_inverse=True)
            entity, label = np.divmod(pairs, len(names) + 1)
            keys = [
                f"{ids[e]}|{names[c]}" for e, c in zip(entity.tolist(), label.tolist(), strict=True)
            ]
            out[rows] = id_digests(keys)[position]
        return out

    # -- windows, filters, fields --------------------------------------------------------
    def selection(self, window_ms: int | None, where: tuple[Condition, ...] = ()) -> Selection:
        """The events of each query in the window (None = all up to T) that pass `where`."""
        key = (window_ms, where)
        found = self._selections.get(key)
        if found is None:
            if where:
                found = self.selection(window_ms).keep(self._passes(window_ms, where))
            else:
                first = self.begin if window_ms is None else self._window_first[window_ms]
                found = Selection.of_slices(first, self.end)
            self._selections[key] = found
        return found

    def _passes(self, window_ms: int | None, where: tuple[Condition, ...]) -> np.ndarray:
        rows = self.selection(window_ms).index
        mask = np.ones(rows.size, dtype=bool)
        for condition in where:
            mask &= self._condition(condition, rows)
        return mask

    def _condition(self, c: Condition, rows: np.ndarray) -> np.ndarray:
        if c.field in self.batch.labels:
            labels = self.batch.labels[c.field][rows]
            names = self.label_names.get(c.field, [])
            wanted = (c.value,) if c.op in ("eq", "ne") else c.value
            codes = label_codes(names, wanted)
            if len(codes) == 1:
                member = labels == codes[0]
            else:
                member = np.isin(labels, np.array(codes, dtype=np.int32))
            present = labels != NO_LABEL
            return member if c.op in ("eq", "in") else present & ~member
        x = self.batch.numeric[c.field][rows]
        with np.errstate(invalid="ignore"):
            matched = _COMPARE[c.op](x, c.value)
        return matched & ~np.isnan(x) if c.op == "ne" else matched  # NaN: the field is missing

    def values(
        self, window_ms: int | None, where: tuple[Condition, ...], field: str, present_only: bool
    ) -> FieldValues:
        """A field's values in the selection, skipping events that lack it unless the field
        is required (`present_only` False: nothing to skip)."""
        key = (window_ms, where, field)
        found = self._values.get(key)
        if found is None:
            selection = self.selection(window_ms, where)
            if field in self.batch.labels:
                column = self.batch.labels[field]
                x = column[selection.index]
                if present_only:
                    keep = x != NO_LABEL
                    selection, x = selection.keep(keep), x[keep]
            else:
                x = self.batch.numeric[field][selection.index]
                if present_only:
                    keep = ~np.isnan(x)
                    if not keep.all():
                        selection, x = selection.keep(keep), x[keep]
            found = FieldValues(x, self.batch.ts[selection.index], selection)
            self._values[key] = found
        return found


_LABEL_POSITIONS: dict[int, tuple[list[str], int, dict[str, int]]] = {}
_LABEL_POSITIONS_KEPT = 64


def label_codes(names: list[str], wanted: tuple[str, ...]) -> list[int]:
    """Labels of the wanted names (a name without a label yet matches nothing). The position
    map of a names list is kept while that list is (it holds the list, so its id is not
    reused) and its length is unchanged: labels only grow."""
    kept = _LABEL_POSITIONS.get(id(names))
    if kept is None or kept[0] is not names or kept[1] != len(names):
        if len(_LABEL_POSITIONS) >= _LABEL_POSITIONS_KEPT:
            _LABEL_POSITIONS.clear()
        kept = (names, len(names), {name: i for i, name in enumerate(names)})
        _LABEL_POSITIONS[id(names)] = kept
    position = kept[2]
    return [position[w] for w in wanted if w in position]


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
