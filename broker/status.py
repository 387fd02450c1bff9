"""The broker's own answers: `stats` and `health` (typed: wire.messages), from per-worker
figures, its own counters and the cache."""

from __future__ import annotations

import time

import psutil

from broker.registry import Registry
from featurestore.config import Settings
from featurestore.nearcache import listener_health, listener_pid
from featurestore.store.base import STORE_OK, STORE_UNAVAILABLE
from featurestore.wire.frames import SERVICE_DRIFT, SERVICE_FEATURES, Op
from featurestore.wire.messages import (
    Alive,
    CacheStats,
    DriftBaselineAnswer,
    DriftReport,
    Health,
    ListenerHealth,
    MessageFigures,
    Stats,
)

MESSAGE_FIGURES = ("dropped_replies", "stalled_clients", "backlogged_clients", "backlog_bytes")


def rss_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.Error, ValueError):
        return None


class BrokerStatus:
    def __init__(self, settings: Settings, registry: Registry, cache) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.started = time.monotonic()
        self.pid = psutil.Process().pid

    def stats(self, figures: dict) -> Stats:
        """`figures`: the broker's own message counters (malformed, dropped replies...)."""
        cache = self.cache.stats()
        computes, compute_ms = self.registry.totals()
        workers = sorted(
            (s.summary() for s in self.registry.alive(SERVICE_FEATURES)), key=lambda w: w.id
        )
        return Stats(
            total_computes=computes,
            cache_hits=cache["hits"],
            cache_misses=cache["misses"],
            cache_hit_rate=cache["hit_rate"],
            avg_compute_latency_ms=round(compute_ms / computes, 4) if computes else 0.0,
            cache_stats=CacheStats(**{k: cache[k] for k in CacheStats.__struct_fields__}),
            workers=workers,
            messages=self.message_figures(figures),
        )

    def message_figures(self, figures: dict) -> MessageFigures:
        """Malformed messages dropped by each receiver, and replies the front end dropped
        for clients that stopped reading (SPEC §11)."""
        workers = self.registry.retired_malformed + sum(
            int(s.figures.get("malformed", 0)) for s in self.registry.alive(SERVICE_FEATURES)
        )
        drift = sum(int(s.figures.get("malformed", 0)) for s in self.registry.alive(SERVICE_DRIFT))
        malformed = {"broker": int(figures.get("malformed", 0)), "workers": workers, "drift": drift}
        return MessageFigures(malformed, *(int(figures.get(k, 0)) for k in MESSAGE_FIGURES))

    def drift_state(self) -> str:
        if not self.settings.enable_drift_monitoring:
            return "disabled"
        return "ok" if self.registry.alive(SERVICE_DRIFT) else "down"

    def health(self) -> Health:
        workers = self.registry.alive(SERVICE_FEATURES)
        expected = self.settings.max_workers
        drift = self.drift_state()
        store = _store_state(workers)
        listener = self.listener()
        if not workers:
            status = "down"
        elif (
            len(workers) < expected
            or drift == "down"
            or store != STORE_OK
            or (listener is not None and not listener.fresh)
        ):
            status = "degraded"
        else:
            status = "ok"
        memory = {"broker": rss_of(self.pid)}
        for state in sorted(workers, key=lambda s: s.worker_id):
            memory[f"worker-{state.worker_id}"] = rss_of(state.pid)
        for state in self.registry.alive(SERVICE_DRIFT):
            memory["drift"] = rss_of(state.pid)
        if listener is not None and listener_pid(self.cache):
            memory["listener"] = rss_of(listener_pid(self.cache))
        return Health(
            status=status,
            workers=Alive(len(workers), expected),
            broker="ok",
            drift=drift,
            cache="ok",
            store=store,
            store_backend=self.settings.store_backend,
            uptime_s=round(time.monotonic() - self.started, 3),
            memory={name: rss for name, rss in memory.items() if rss is not None},
            listener=listener,
        )

    def listener(self) -> ListenerHealth | None:
        """This host's change listener (a store several hosts share), else None."""
        if not self.settings.shared_store:
            return None
        return listener_health(self.cache, self.settings.max_staleness_ms)

    def drift_disabled(self, op: Op) -> DriftReport | DriftBaselineAnswer:
        """What drift operations answer when ENABLE_DRIFT_MONITORING=false."""
        message = "drift monitoring is disabled"
        if op is Op.DRIFT_REPORT:
            return DriftReport(status="disabled", message=message, operation=op.value)
        return DriftBaselineAnswer(
            action="none", status="disabled", message=message, operation=op.value
        )


def _store_state(workers: list) -> str:
    """`unavailable` while any worker's last heartbeat says its store cannot take writes."""
    if any(w.figures.get("store") == STORE_UNAVAILABLE for w in workers):
        return STORE_UNAVAILABLE
    return STORE_OK
