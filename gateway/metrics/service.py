"""The figures of the rest of the service, as metric families: what the broker answers to
`stats` and `health` (computes, cache, workers, drift, store, dropped messages, memory), asked
at each scrape. The broker keeps them for the whole stack, so they are exported once, not per
gateway server; a broker that does not answer shows as `featurestore_broker_up 0`.

Counters are the broker's running totals (they restart from 0 with the broker); gauges are
its current values. Ratios are left to the query, over the window one wants: the hit rate
is `rate(featurestore_cache_hits_total[5m]) / (rate(featurestore_cache_hits_total[5m]) +
rate(featurestore_cache_misses_total[5m]))`.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from featurestore.store.base import STORE_OK

DRIFT_OK = "ok"  # the drift states of a health answer (broker/status.py)
DRIFT_DISABLED = "disabled"
LISTENER_CONNECTED = ("catching_up", "live")  # listener states with a live connection


def service_metrics(
    stats: dict | None, health: dict, versions: dict[str, tuple[str, int]] | None = None
) -> list[Metric]:
    """Metric families of a `stats` answer (None: the broker did not answer), a health
    answer (the broker's figures, empty when it did not answer, with the gateway's part:
    `gateway` and the gateway processes in `memory`) and the served versions ({version:
    (content hash, features served)}, from the definitions)."""
    families = [
        _gauge("featurestore_broker_up", "1 if the broker answered.", int(stats is not None))
    ]
    if versions:
        families.append(version_metrics(versions))
    if stats is not None:
        families += stats_metrics(stats)
        families += message_metrics(stats.get("messages", {}))
    if "workers" in health:
        families += worker_metrics(health)
    families += store_metrics(health)
    return families + gateway_metrics(health)


class ServiceCollector:
    """A collector of one scrape's answers, for a CollectorRegistry."""

    def __init__(
        self,
        stats: dict | None,
        health: dict,
        versions: dict[str, tuple[str, int]] | None = None,
    ) -> None:
        self.stats = stats
        self.health = health
        self.versions = versions

    def collect(self) -> Iterator[Metric]:
        yield from service_metrics(self.stats, self.health, self.versions)


def version_metrics(versions: dict[str, tuple[str, int]]) -> Metric:
    """One sample per served version of FEATURES_FILE: its features, by content hash (so a
    dashboard sees which definition every host serves)."""
    family = GaugeMetricFamily(
        "featurestore_version_features",
        "Features served by each version of the definitions, by content hash.",
        labels=["version", "hash"],
    )
    for version, (content_hash, served) in versions.items():
        family.add_metric([version, content_hash], served)
    return family


def stats_metrics(stats: dict) -> list[Metric]:
    cache = stats["cache_stats"]
    return [
        _counter(
            "featurestore_computes_total",
            "Feature vectors computed by the workers (online, as_of and historical).",
            stats["total_computes"],
        ),
        _gauge(
            "featurestore_compute_latency_seconds",
            "Average compute time per feature vector since the broker started.",
            stats["avg_compute_latency_ms"] / 1000,
        ),
        _counter(
            "featurestore_cache_hits_total",
            "Cache lookups that hit, per (version, entity).",
            stats["cache_hits"],
        ),
        _counter(
            "featurestore_cache_misses_total",
            "Cache lookups that missed, per (version, entity).",
            stats["cache_misses"],
        ),
        _counter(
            "featurestore_cache_evictions_total",
            "Cache entries evicted to make room (LRU).",
            cache["evictions"],
        ),
        _counter(
            "featurestore_cache_expirations_total",
            "Cache entries found expired (CACHE_TTL_MS).",
            cache["expirations"],
        ),
        _gauge("featurestore_cache_entries", "Feature vectors in the cache.", cache["size"]),
        _gauge(
            "featurestore_cache_max_entries",
            "Feature vectors the cache holds at most (CACHE_MAX_SIZE).",
            cache["max_size"],
        ),
        _gauge(
            "featurestore_cache_memory_bytes",
            "Size of the shared-memory cache segment.",
            cache["memory_bytes"],
        ),
    ]


def message_metrics(messages: dict) -> list[Metric]:
    """What the receivers dropped (SPEC §11): malformed messages by receiving process, and
    what the broker let go for ZeroMQ clients that stopped reading their replies."""
    malformed = CounterMetricFamily(
        "featurestore_malformed_messages_total",
        "Messages dropped as malformed, by receiving process.",
        labels=["process"],
    )
    for process, count in messages.get("malformed", {}).items():
        malformed.add_metric([process], count)
    return [
        malformed,
        _counter(
            "featurestore_dropped_replies_total",
            "Replies dropped for ZeroMQ clients that stopped reading or went away.",
            messages.get("dropped_replies", 0),
        ),
        _counter(
            "featurestore_stalled_clients_total",
            "ZeroMQ clients whose queued replies passed BROKER_CLIENT_MAX_BYTES.",
            messages.get("stalled_clients", 0),
        ),
        _gauge(
            "featurestore_backlogged_clients",
            "ZeroMQ clients whose replies wait in the broker.",
            messages.get("backlogged_clients", 0),
        ),
        _gauge(
            "featurestore_reply_backlog_bytes",
            "Reply bytes the broker holds for clients that read slowly.",
            messages.get("backlog_bytes", 0),
        ),
    ]


def worker_metrics(health: dict) -> list[Metric]:
    """Compute workers, drift and store, from the broker's health answer."""
    workers = health["workers"]
    families = [
        _gauge("featurestore_workers_alive", "Compute workers alive.", workers["alive"]),
        _gauge(
            "featurestore_workers_expected",
            "Compute workers expected (MAX_WORKERS).",
            workers["expected"],
        ),
    ]
    drift = health["drift"]
    families += [
        _gauge(
            "featurestore_drift_enabled",
            "1 if drift monitoring is on (ENABLE_DRIFT_MONITORING).",
            int(drift != DRIFT_DISABLED),
        ),
        _gauge("featurestore_drift_up", "1 if the drift process is alive.", int(drift == DRIFT_OK)),
    ]
    if "store" in health:
        families.append(
            _gauge(
                "featurestore_store_up",
                "1 if the event store takes writes, 0 if not (disk full, I/O errors).",
                int(health["store"] == STORE_OK),
            )
        )
    return families


def store_metrics(health: dict) -> list[Metric]:
    """The store's backend, and this host's change listener when the store is shared
    (SPEC §15): whether it follows the change log, whether hits are served, and its lag."""
    families: list[Metric] = []
    backend = health.get("store_backend")
    if backend:
        info = GaugeMetricFamily(
            "featurestore_store_backend_info",
            "The event store in use (1 for its backend: sqlite or postgresql).",
            labels=["backend"],
        )
        info.add_metric([backend], 1)
        families.append(info)
    listener = health.get("listener")
    if not listener:
        return families
    lag_ms = listener["lag_ms"]
    return [
        *families,
        _gauge(
            "featurestore_listener_connected",
            "1 if this host's change listener follows the store's change log.",
            int(listener["state"] in LISTENER_CONNECTED),
        ),
        _gauge(
            "featurestore_listener_fresh",
            "1 if the listener caught up within MAX_STALENESS_MS: cache hits are served.",
            int(listener["fresh"]),
        ),
        _gauge(
            "featurestore_listener_lag_seconds",
            "Time since the listener last confirmed it had applied every change (NaN: never).",
            float("nan") if lag_ms is None else lag_ms / 1000,
        ),
        _gauge(
            "featurestore_listener_max_staleness_seconds",
            "MAX_STALENESS_MS: the lag past which cache hits are not served.",
            listener["max_staleness_ms"] / 1000,
        ),
        _gauge(
            "featurestore_listener_position",
            "Sequence number of the last change the listener applied.",
            listener["position"],
        ),
        _counter(
            "featurestore_listener_reconnects_total",
            "Connections of the listener to the store lost (and made again).",
            listener["reconnects"],
        ),
        _counter(
            "featurestore_listener_cache_clears_total",
            "Whole-cache clears by the listener (change log pruned past it, or taking over).",
            listener["cache_clears"],
        ),
        _counter(
            "featurestore_listener_changes_total",
            "Change-log entries (other hosts' commits included) the listener applied.",
            listener["changes_applied"],
        ),
        _counter(
            "featurestore_listener_invalidations_total",
            "Entities the listener invalidated in this host's cache.",
            listener["entities_invalidated"],
        ),
    ]


def gateway_metrics(health: dict) -> list[Metric]:
    """The gateway's servers, and the memory of every process (the broker's and the
    gateway's)."""
    families = []
    if "gateway" in health:
        families += [
            _gauge(
                "featurestore_gateway_servers_alive",
                "HTTP server processes of the gateway that serve.",
                health["gateway"]["alive"],
            ),
            _gauge(
                "featurestore_gateway_servers_expected",
                "HTTP server processes expected (GATEWAY_WORKERS).",
                health["gateway"]["expected"],
            ),
        ]
    memory = GaugeMetricFamily(
        "featurestore_process_resident_memory_bytes",
        "Resident memory of each process of the stack.",
        labels=["process"],
    )
    for process, rss in health.get("memory", {}).items():
        memory.add_metric([process], rss)
    return [*families, memory]


def _counter(name: str, documentation: str, value: float) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> Metric:
    return GaugeMetricFamily(name, documentation, value=value)
