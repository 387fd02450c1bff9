"""Baselines and current windows per (version, feature), and the drift report (SPEC §7).

Observations arrive as whole vectors (rows of a float64 matrix, NaN = null); each monitored
column feeds its pair. A pair's baseline is its first DRIFT_BASELINE_SIZE non-null
observations (or one set explicitly); its window is a ring of the last DRIFT_WINDOW_SIZE
non-null observations after the baseline completed. Every observation remembers how many
nulls arrived just before it, so the null fraction of a baseline or window is exact.

How a pair is scored comes from the statistics registry (`drift.statistics`): the statistic of
its kind decides `is_drifting` against that statistic's threshold (`statistic_thresholds`),
the statistics of `REPORTED_STATISTICS` are reported beside it, and what they need from the
baseline is computed once when it completes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from drift.statistics import STATISTICS, Result, Statistic, drift_statistic, moments, statistic
from featurestore.config import ConfigError, Settings, parse_thresholds
from featurestore.features.registry import MONITORED_KINDS
from featurestore.timestamps import format_iso, now_ms

MIN_EXPLICIT_BASELINE = 2
# The report's fields beside drift_score (SPEC §7): the score of a registered statistic where it
# applies to the pair's kind, else null.
REPORTED_STATISTICS = {"ks_statistic": "ks"}
# SPEC §7: is_drifting = PSI > DRIFT_THRESHOLD.
DRIFT_THRESHOLD_STATISTICS = ("psi_numeric", "psi_categorical")


def statistic_thresholds(settings: Settings) -> dict[str, float]:
    """Every registered statistic's threshold: its entry in DRIFT_STATISTIC_THRESHOLDS, else
    DRIFT_THRESHOLD for the PSI statistics, else the statistic's default."""
    chosen = {name: s.default_threshold for name, s in STATISTICS.items()}
    chosen.update(dict.fromkeys(DRIFT_THRESHOLD_STATISTICS, settings.drift_threshold))
    for name, threshold in parse_thresholds(settings.drift_statistic_thresholds).items():
        if name not in STATISTICS:
            raise ConfigError(
                f"DRIFT_STATISTIC_THRESHOLDS: no drift statistic {name!r}: expected one of "
                f"{', '.join(sorted(STATISTICS))}"
            )
        chosen[name] = threshold
    return chosen


@dataclass(frozen=True)
class Scoring:
    """How one pair is scored: the statistic that decides `is_drifting` (its score is the
    `drift_score`) against its threshold, and the statistics reported beside it, by field."""

    decides: Statistic[Any]
    threshold: float
    reported: tuple[tuple[str, Statistic[Any]], ...]

    @classmethod
    def of_kind(cls, kind: str, thresholds: dict[str, float]) -> Scoring:
        decides = drift_statistic(kind)
        reported = tuple(
            (name, found)
            for name, registered in REPORTED_STATISTICS.items()
            if (found := statistic(registered)).applies_to(kind)
        )
        return cls(decides, thresholds[decides.name], reported)

    def references(self, baseline: np.ndarray) -> dict[Callable, Any]:
        """What the statistics need from a baseline, each computed once (by function)."""
        out: dict[Callable, Any] = {}
        for used in (self.decides, *(s for _, s in self.reported)):
            if used.reference not in out:
                out[used.reference] = used.reference(baseline)
        return out

    def score(
        self, references: dict[Callable, Any], current: np.ndarray
    ) -> tuple[Result, dict[str, float]]:
        """The deciding statistic's result and the reported scores of one window."""
        decides = self.decides
        result = decides.apply(references[decides.reference], current, self.threshold)
        return result, {
            name: reported.score(references[reported.reference], current)
            for name, reported in self.reported
        }


def null_gaps(column: np.ndarray, carry: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(non-null values, nulls just before each of them, nulls left after the last one)."""
    present = ~np.isnan(column)
    positions = np.flatnonzero(present)
    if positions.size == 0:
        return column[:0], positions, carry + column.size
    gaps = np.diff(positions, prepend=-1) - 1
    gaps[0] += carry
    return column[positions], gaps, int(column.size - 1 - positions[-1])


@dataclass
class Pair:
    version: str
    feature: str
    column: int
    scoring: Scoring
    baseline_size: int
    window_size: int
    baseline_parts: list = field(default_factory=list)
    baseline_count: int = 0
    baseline_nulls: int = 0
    baseline: np.ndarray | None = None  # set when complete
    references: dict[Callable, Any] = field(default_factory=dict)  # from the complete baseline
    ring: np.ndarray | None = None
    ring_gaps: np.ndarray | None = None
    head: int = 0
    filled: int = 0
    carry: int = 0  # nulls since the last non-null observation

    def __post_init__(self) -> None:
        self.ring = np.empty(self.window_size)
        self.ring_gaps = np.zeros(self.window_size, dtype=np.int64)

    @property
    def complete(self) -> bool:
        return self.baseline is not None

    def absorb(self, column: np.ndarray) -> None:
        values, gaps, self.carry = null_gaps(column, self.carry)
        if values.size == 0:
            return
        if not self.complete:
            take = min(self.baseline_size - self.baseline_count, values.size)
            self.baseline_parts.append(values[:take])
            self.baseline_count += take
            self.baseline_nulls += int(gaps[:take].sum())
            values, gaps = values[take:], gaps[take:]
            if self.baseline_count >= self.baseline_size:
                carry = self.carry  # nulls after the last baseline value: the window's
                self.set_baseline(np.concatenate(self.baseline_parts), self.baseline_nulls)
                self.carry = carry
        if values.size:
            self.push(values, gaps)

    def push(self, values: np.ndarray, gaps: np.ndarray) -> None:
        if values.size > self.window_size:
            values, gaps = values[-self.window_size :], gaps[-self.window_size :]
        index = (self.head + np.arange(values.size)) % self.window_size
        self.ring[index] = values
        self.ring_gaps[index] = gaps
        self.head = int((self.head + values.size) % self.window_size)
        self.filled = min(self.window_size, self.filled + values.size)

    def set_baseline(self, values: np.ndarray, nulls: int) -> None:
        self.baseline = np.asarray(values, dtype=np.float64)
        self.baseline_parts = []
        self.baseline_count = self.baseline.size
        self.baseline_nulls = nulls
        self.references = self.scoring.references(self.baseline)
        self.clear_window()

    def reset(self) -> None:
        self.baseline = None
        self.references = {}
        self.baseline_parts = []
        self.baseline_count = self.baseline_nulls = 0
        self.clear_window()

    def clear_window(self) -> None:
        self.head = self.filled = self.carry = 0

    def window(self) -> tuple[np.ndarray, int]:
        if self.filled < self.window_size:
            start = (self.head - self.filled) % self.window_size
            index = (start + np.arange(self.filled)) % self.window_size
            return self.ring[index], int(self.ring_gaps[index].sum())
        return self.ring.copy(), int(self.ring_gaps.sum())

    def detail(self, min_current: int) -> dict:
        current, current_nulls = self.window()
        # nulls after the last non-null observation belong to whatever is filling now
        baseline_nulls = self.baseline_nulls if self.complete else self.baseline_nulls + self.carry
        if self.complete:
            current_nulls += self.carry
        score, drifting = None, False
        reported: dict[str, float | None] = dict.fromkeys(REPORTED_STATISTICS)
        if self.complete and current.size >= min_current:
            result, scores = self.scoring.score(self.references, current)
            score, drifting = result.score, result.is_drifting
            reported.update(scores)
        baseline = (
            self.baseline
            if self.complete
            else (np.concatenate(self.baseline_parts) if self.baseline_parts else np.empty(0))
        )
        return {
            "feature": self.feature,
            "version": self.version,
            "drift_score": score,
            **reported,
            "is_drifting": drifting,
            "statistic": self.scoring.decides.name,
            "threshold": self.scoring.threshold,
            "baseline": moments(baseline, baseline_nulls),
            "current": moments(current, current_nulls),
        }


class DriftMonitor:
    """Every monitored pair, the counters of the report, and the alert state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pairs: dict[str, list[Pair]] = {}
        self.since_ms: dict[str, int] = {}
        self.tracked: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}
        self.dropped = 0
        self.drifting: dict[tuple[str, str], bool] = {}
        thresholds = statistic_thresholds(settings)
        for version in settings.versions:
            self.pairs[version] = [
                Pair(
                    version,
                    f.name,
                    column,
                    Scoring.of_kind(f.kind, thresholds),
                    settings.drift_baseline_size,
                    settings.drift_window_size,
                )
                for column, f in enumerate(settings.definitions.versions[version].features)
                if f.kind in MONITORED_KINDS
            ]
            self.since_ms[version] = now_ms()
            self.tracked[version] = 0

    def count_sequence(self, worker_id: str, seq: int) -> None:
        """Count the messages a worker sent that never arrived (gaps in its sequence)."""
        last = self.last_seq.get(worker_id)  # unknown: this drift process just started
        if last is not None and seq > last + 1:
            self.dropped += seq - last - 1
        self.last_seq[worker_id] = seq  # a restarted worker starts again at 1

    def absorb(self, version: str, values: np.ndarray) -> None:
        pairs = self.pairs.get(version)
        if pairs is None or values.shape[0] == 0:
            return
        self.tracked[version] += values.shape[0]
        for pair in pairs:
            pair.absorb(values[:, pair.column])

    def reset(self, versions: list[str]) -> None:
        for version in versions:
            for pair in self.pairs[version]:
                pair.reset()
            self.since_ms[version] = now_ms()
            self.tracked[version] = 0

    def set_baseline(self, version: str, columns: dict[str, np.ndarray]) -> list[str]:
        """Baselines from explicit vectors (feature name -> column); the features set."""
        done = []
        for pair in self.pairs[version]:
            column = columns.get(pair.feature)
            if column is None:
                continue
            values, gaps, rest = null_gaps(np.asarray(column, dtype=np.float64), 0)
            if values.size >= MIN_EXPLICIT_BASELINE:
                pair.set_baseline(values, int(gaps.sum()) + rest)
                done.append(pair.feature)
        self.since_ms[version] = now_ms()
        self.tracked[version] = 0
        return done

    def report(self) -> dict:
        details = [
            pair.detail(self.settings.drift_min_current)
            for pairs in self.pairs.values()
            for pair in pairs
        ]
        scored = [d for d in details if d["drift_score"] is not None]
        drifting = [d for d in details if d["is_drifting"]]
        if not scored:
            status = "insufficient_data"
        elif drifting:
            status = "drift_detected"
        else:
            status = "ok"
        return {
            "monitoring_since": format_iso(min(self.since_ms.values())),
            "total_tracked": sum(self.tracked.values()),
            "drift_threshold": self.settings.drift_threshold,
            "features_monitored": len(details),
            "drifting_features": len(drifting),
            "dropped": self.dropped,
            "status": status,
            "drift_details": details,
        }

    def alerts(self, report: dict) -> list[dict]:
        """One alert per pair that started or stopped drifting since the last call."""
        out = []
        for detail in report["drift_details"]:
            key = (detail["version"], detail["feature"])
            now = detail["is_drifting"]
            if self.drifting.get(key, False) != now:
                out.append(
                    {
                        "feature": detail["feature"],
                        "version": detail["version"],
                        "is_drifting": now,
                        "drift_score": detail["drift_score"],
                        "at": format_iso(now_ms()),
                    }
                )
            self.drifting[key] = now
        return out
