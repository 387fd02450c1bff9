"""Vectorised statistics over many slices of one flat array ("segments").

Every reduction here depends only on the elements of its own segment, in their own order:
sums use `np.add.reduceat` (one fixed summation order per segment, independent of neighbours
and of alignment), sorts are exact. So a segment gives bit-identical results whether it is computed
alone, in a batch, or as one historical row among thousands.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

# |sum| below this fraction of n * sum(|x|) is "heavy cancellation": the float sum's error bound
# (n * 2**-53 * sum|x|) could then exceed 1e-10 of the result, so the exact `math.fsum` is used.
CANCELLATION_RATIO = 2.0**-20
MIN_SORT_WIDTH = 8
OVERFLOW_SCALE = 2.0**-64  # exact scaling for sums of values near the float64 maximum
MS_PER_DAY = 86_400_000


def exact_fsum(values: list[float]) -> float:
    """math.fsum, or +-inf (not OverflowError) when the exact sum exceeds float64."""
    try:
        return math.fsum(values)
    except OverflowError:
        return math.fsum(v * OVERFLOW_SCALE for v in values) / OVERFLOW_SCALE


def gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices that concatenate the slices `[starts[i], starts[i] + lengths[i])`."""
    total = int(lengths.sum())
    out_starts = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - out_starts, lengths)


def segment_sum(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Sum of each segment of `flat` (sequential order); 0 for an empty segment."""
    out = np.zeros(lengths.size, dtype=np.float64 if flat.dtype.kind == "f" else flat.dtype)
    nonempty = lengths > 0
    if flat.size and nonempty.any():
        out[nonempty] = np.add.reduceat(flat, starts[nonempty])
    return out


def segment_extreme(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray, ufunc) -> np.ndarray:
    out = np.full(lengths.size, np.nan)
    nonempty = lengths > 0
    if flat.size and nonempty.any():
        out[nonempty] = ufunc.reduceat(flat, starts[nonempty])
    return out


def lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """NumPy's own linear interpolation of `np.quantile` (monotone, exact at t = 0 and 1)."""
    diff = b - a
    out = a + diff * t
    return np.where(np.asarray(t) >= 0.5, b - diff * (1 - np.asarray(t)), out)


def slope(ts: np.ndarray, x: np.ndarray, starts: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Least-squares slope of x against time in days per segment, time centred; NaN when a
    segment has fewer than 2 values or all at one time."""
    if ts.size == 0:
        return np.full(n.size, np.nan)
    first_ts = ts[np.minimum(starts, ts.size - 1)]  # garbage where n == 0
    last_ts = ts[np.clip(starts + n - 1, 0, ts.size - 1)]
    offset = ts - np.repeat(first_ts, n)  # int64 ms since the segment's first event
    mean_offset = segment_sum(offset, starts, n) / np.maximum(n, 1)
    t_days = (offset - np.repeat(mean_offset, n)) / MS_PER_DAY
    mean_x = segment_sum(x, starts, n) / np.maximum(n, 1)
    x_centred = x - np.repeat(mean_x, n)
    sxy = segment_sum(t_days * x_centred, starts, n)
    sxx = segment_sum(t_days * t_days, starts, n)
    defined = (n >= 2) & (last_ts != first_ts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, sxy / np.where(defined, sxx, 1.0), np.nan)


@dataclass
class SortedRows:
    """The segments sorted, as padded matrices bucketed by width (padding is +inf)."""

    buckets: list[tuple[np.ndarray, np.ndarray]]  # (segment indices, sorted matrix)
    lengths: np.ndarray

    @classmethod
    def build(cls, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> SortedRows:
        if lengths.size == 1:  # one query (a single entity): one exact-width row, same values
            n = int(lengths[0])
            if n == 0:
                return cls([], lengths)
            start = int(starts[0])
            row = np.sort(flat[start : start + n]).astype(np.float64, copy=False)
            return cls([(np.zeros(1, dtype=np.int64), row.reshape(1, n))], lengths)
        widths = np.maximum(MIN_SORT_WIDTH, _next_pow2(lengths))
        buckets = []
        for width in np.unique(widths[lengths > 0]):
            rows = np.flatnonzero((widths == width) & (lengths > 0))
            cols = np.arange(width, dtype=np.int64)
            valid = cols[None, :] < lengths[rows, None]
            index = np.where(valid, starts[rows, None] + cols[None, :], 0)
            matrix = np.where(valid, flat[index], np.inf)
            matrix.sort(axis=1)
            buckets.append((rows, matrix))
        return cls(buckets, lengths)

    def quantile(self, q: float) -> np.ndarray:
        """The q-quantile of each segment (linear interpolation); NaN for empty segments."""
        out = np.full(self.lengths.size, np.nan)
        for rows, matrix in self.buckets:
            n = self.lengths[rows]
            position = (n - 1) * q
            low = np.floor(position).astype(np.int64)
            high = np.minimum(low + 1, n - 1)
            r = np.arange(rows.size)
            out[rows] = lerp(matrix[r, low], matrix[r, high], position - low)
        return out

    def deviations_from(self, centre: np.ndarray) -> SortedRows:
        """|x - centre| of each segment, sorted the same way (for the MAD)."""
        buckets = []
        for rows, matrix in self.buckets:
            dev = np.abs(matrix - centre[rows, None])  # padding stays +inf
            dev.sort(axis=1)
            buckets.append((rows, dev))
        return SortedRows(buckets, self.lengths)

    def distinct(self) -> np.ndarray:
        """The number of distinct values of each segment (0 for an empty one)."""
        out = np.zeros(self.lengths.size, dtype=np.float64)
        for rows, matrix in self.buckets:
            n = self.lengths[rows]
            changes = matrix[:, 1:] != matrix[:, :-1]
            inside = np.arange(1, matrix.shape[1])[None, :] < n[:, None]
            out[rows] = 1 + (changes & inside).sum(axis=1)
        return out

    def upper_middle_is_zero(self) -> np.ndarray:
        """True where the element at index n // 2 of the sorted segment is exactly 0."""
        out = np.zeros(self.lengths.size, dtype=bool)
        for rows, matrix in self.buckets:
            out[rows] = matrix[np.arange(rows.size), self.lengths[rows] // 2] == 0
        return out


def _next_pow2(n: np.ndarray) -> np.ndarray:
    n = np.maximum(n, 1)
    return (1 << np.ceil(np.log2(n)).astype(np.int64)).astype(np.int64)


class SegmentStats:
    """Lazy statistics of the value segments `flat[starts[i]:starts[i]+lengths[i]]`."""

    def __init__(self, flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        self.flat = flat
        self.starts = starts
        self.lengths = lengths

    @cached_property
    def n(self) -> np.ndarray:
        return self.lengths.astype(np.float64)

    @cached_property
    def min(self) -> np.ndarray:
        return segment_extreme(self.flat, self.starts, self.lengths, np.minimum)

    @cached_property
    def max(self) -> np.ndarray:
        return segment_extreme(self.flat, self.starts, self.lengths, np.maximum)

    @cached_property
    def constant(self) -> np.ndarray:
        """All values of the segment are equal (decided exactly)."""
        return (self.lengths > 0) & (self.min == self.max)

    @cached_property
    def exact_sum(self) -> np.ndarray:
        """Sum of each segment; correctly rounded (`math.fsum`) where cancellation is heavy."""
        total = segment_sum(self.flat, self.starts, self.lengths)
        magnitude = segment_sum(np.abs(self.flat), self.starts, self.lengths)
        doubtful = np.flatnonzero(
            (self.lengths > 0) & (np.abs(total) <= self.n * magnitude * CANCELLATION_RATIO)
        )
        for i in doubtful:  # rare: only segments whose values nearly cancel (or overflow)
            total[i] = exact_fsum(self._values(i))
        return total

    def _values(self, i: int) -> list[float]:
        start = self.starts[i]
        return self.flat[start : start + self.lengths[i]].tolist()

    @cached_property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.exact_sum / self.n
        for i in np.flatnonzero(np.isinf(mean)):  # the sum overflows, the mean may not
            mean[i] = exact_fsum([v * OVERFLOW_SCALE for v in self._values(i)]) / (
                self.n[i] * OVERFLOW_SCALE
            )
        mean = np.where(self.constant, self.min, mean)
        return np.where(self.lengths > 0, mean, np.nan)

    @cached_property
    def mean_is_zero(self) -> np.ndarray:
        return (self.lengths > 0) & (self.exact_sum == 0)

    @cached_property
    def _variance(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sum of squared deviations / (n - 1) of the rescaled values, the power-of-two
        exponent each segment was scaled by, whether any was)."""
        centred = self.flat - np.repeat(self.mean, self.lengths)
        # Squares of tiny deviations underflow to 0 (e.g. [1e-200, 2e-200] would get std 0):
        # a segment whose spread is tiny (or huge) is scaled by a power of two first (exact;
        # every other segment by 2**0, so a row never depends on its neighbours).
        spread = self.max - self.min
        rescale = (spread > 0) & ((spread < 2.0**-400) | (spread > 2.0**400))
        exponent = np.where(rescale, np.frexp(spread)[1], 0)
        if rescale.any():
            centred = np.ldexp(centred, -np.repeat(exponent, self.lengths))
        # Corrected two-pass sum of squares: subtracting (sum of deviations)^2 / n removes the
        # error of the rounded mean, which matters when the spread is a few ulps of the mean.
        deviation_sum = segment_sum(centred, self.starts, self.lengths)
        squares = segment_sum(centred * centred, self.starts, self.lengths)
        with np.errstate(invalid="ignore", divide="ignore"):
            squares = np.maximum(squares - deviation_sum * deviation_sum / self.n, 0.0)
            return squares / (self.n - 1), exponent, rescale.any()

    @cached_property
    def std(self) -> np.ndarray:
        """Sample standard deviation (ddof=1); exactly 0 iff all values are equal; NaN if n < 2."""
        variance, exponent, rescaled = self._variance
        std = np.sqrt(variance)
        if rescaled:
            std = np.ldexp(std, exponent)
        std = np.where(self.constant, 0.0, std)
        return np.where(self.lengths >= 2, std, np.nan)

    @cached_property
    def var(self) -> np.ndarray:
        """Sample variance (ddof=1); exactly 0 iff all values are equal; NaN if n < 2."""
        variance, exponent, rescaled = self._variance
        if rescaled:
            with np.errstate(over="ignore"):
                variance = np.ldexp(variance, 2 * exponent)
        variance = np.where(self.constant, 0.0, variance)
        return np.where(self.lengths >= 2, variance, np.nan)

    @cached_property
    def sorted(self) -> SortedRows:
        return SortedRows.build(self.flat, self.starts, self.lengths)

    def quantile(self, q: float) -> np.ndarray:
        """The q-quantile of each segment (NumPy's linear interpolation), kept per q."""
        found = self._quantiles.get(q)
        if found is None:
            found = self._quantiles[q] = self.sorted.quantile(q)
        return found

    @cached_property
    def _quantiles(self) -> dict[float, np.ndarray]:
        return {}

    @property
    def median(self) -> np.ndarray:
        return self.quantile(0.5)

    @property
    def q25(self) -> np.ndarray:
        return self.quantile(0.25)

    @property
    def q75(self) -> np.ndarray:
        return self.quantile(0.75)

    @cached_property
    def distinct(self) -> np.ndarray:
        return self.sorted.distinct()

    @cached_property
    def mad(self) -> np.ndarray:
        """Median absolute deviation; exactly 0 iff more than half the values equal the median."""
        deviations = self.sorted.deviations_from(self.median)
        mad = deviations.quantile(0.5)
        return np.where(deviations.upper_middle_is_zero(), 0.0, mad)

    def distance_from_mean(self, point: np.ndarray) -> np.ndarray:
        """Per segment, point[i] - mean, as the mean of (point[i] - x): when the values are close
        together those differences are exact, so no cancellation against a rounded mean."""
        differences = np.repeat(point, self.lengths) - self.flat
        with np.errstate(invalid="ignore", divide="ignore"):
            return segment_sum(differences, self.starts, self.lengths) / self.n

    def count_at_most(self, bound: np.ndarray) -> np.ndarray:
        """Per segment, how many values are <= bound[i]."""
        hits = (self.flat <= np.repeat(bound, self.lengths)).astype(np.float64)
        return segment_sum(hits, self.starts, self.lengths)
