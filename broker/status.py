"""The broker's own answers: `stats` and `health`, from per-worker figures and the cache."""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from broker.registry import Registry
from featurestore.config import Settings
from featurestore.protocol import SERVICE_DRIFT, SERVICE_FEATURES, Op
from featurestore.results import CACHE_STATS_FIELDS
from featurestore.store.base import STORE_OK, STORE_UNAVAILABLE


def rss_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except (psutil.Error, ValueError):
        return None


class BrokerStatus:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        cache,
        messages: Callable[[], dict] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache
        self.messages = messages or dict
        self.started = time.monotonic()
        self.pid = psutil.Process().pid

    def stats(self) -> dict:
        cache = self.cache.stats()
        computes, compute_ms = self.registry.totals()
        workers = sorted(
            (s.summary() for s in self.registry.alive(SERVICE_FEATURES)), key=lambda w: w["id"]
        )
        return {
            "total_computes": computes,
            "cache_hits": cache["hits"],
            "cache_misses": cache["misses"],
            "cache_hit_rate": cache["hit_rate"],
            "avg_compute_latency_ms": round(compute_ms / computes, 4) if computes else 0.0,
            "cache_stats": {k: cache[k] for k in CACHE_STATS_FIELDS},
            "workers": workers,
            "messages": self.message_figures(),
        }

    def message_figures(self) -> dict:
        """Malformed messages dropped by each receiver, and replies the front end dropped
        for clients that stopped reading (SPEC §11)."""
        figures = dict(self.messages())
        broker = figures.pop("malformed", 0)
        workers = self.registry.retired_malformed + sum(
            int(s.figures.get("malformed", 0)) for s in self.registry.alive(SERVICE_FEATURES)
        )
        drift = sum(int(s.figures.get("malformed", 0)) for s in self.registry.alive(SERVICE_DRIFT))
        return {"malformed": {"broker": broker, "workers": workers, "drift": drift}, **figures}

    def drift_state(self) -> str:
        if not self.settings.enable_drift_monitoring:
            return "disabled"
        return "ok" if self.registry.alive(SERVICE_DRIFT) else "down"

    def health(self) -> dict:
        workers = self.registry.alive(SERVICE_FEATURES)
        expected = self.settings.max_workers
        drift = self.drift_state()
        store = _store_state(workers)
        if not workers:
            status = "down"
        elif len(workers) < expected or drift == "down" or store != STORE_OK:
            status = "degraded"
        else:
            status = "ok"
        memory = {"broker": rss_of(self.pid)}
        for state in sorted(workers, key=lambda s: s.worker_id):
            memory[f"worker-{state.worker_id}"] = rss_of(state.pid)
        for state in self.registry.alive(SERVICE_DRIFT):
            memory["drift"] = rss_of(state.pid)
        return {
            "status": status,
            "workers": {"alive": len(workers), "expected": expected},
            "broker": "ok",
            "drift": drift,
            "cache": "ok",
            "store": store,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "memory": {name: rss for name, rss in memory.items() if rss is not None},
        }

    def drift_disabled(self, op: Op) -> dict:
        """What drift operations answer when ENABLE_DRIFT_MONITORING=false."""
        return {
            "status": "disabled",
            "message": "drift monitoring is disabled",
            "operation": op.value,
        }


def _store_state(workers: list) -> str:
    """`unavailable` while any worker's last heartbeat says its store cannot take writes."""
    if any(w.figures.get("store") == STORE_UNAVAILABLE for w in workers):
        return STORE_UNAVAILABLE
    return STORE_OK
