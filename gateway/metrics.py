"""Request metrics of every gateway worker process, in one shared-memory board.

Sanic runs several worker processes; Prometheus must see one set of numbers. Each worker owns
one slot of a fixed int64 matrix in /dev/shm (claimed by pid under an OFD lock, taken over
from a dead owner with its counts intact) and is its only writer, so no increment is lost and
counters never go down. `/metrics` sums the slots. The board is named after the cache
(`<CACHE_NAME>.gateway`) and dropped with it.
"""

from __future__ import annotations

import mmap
import os
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np

from featurestore.processes import process_start_ticks
from shm import counters
from shm.lock import OFDLock

SLOTS = 64
ENDPOINTS = (
    "features",
    "features_batch",
    "features_historical",
    "events",
    "entities_delete",
    "features_stats",
    "features_definitions",
    "drift_report",
    "drift_baseline",
    "health",
    "cache_clear",
    "metrics",
    "openapi",
    "other",
)
BUCKETS_MS = (
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    float("inf"),
)
STATUS_CLASSES = ("2xx", "3xx", "4xx", "5xx")
# per endpoint: bucket counts, sum (µs), count, per status class
PER_ENDPOINT = len(BUCKETS_MS) + 2 + len(STATUS_CLASSES)
OWNER_WORDS = 2  # pid, process start ticks
SLOT_WORDS = OWNER_WORDS + len(ENDPOINTS) * PER_ENDPOINT
BOARD_BYTES = SLOTS * SLOT_WORDS * 8
SHM_DIR = "/dev/shm"
_BUCKET_EDGES = list(BUCKETS_MS[:-1])


def board_path(cache_name: str) -> str:
    return os.path.join(SHM_DIR, f"{cache_name}.gateway")


def drop(cache_name: str) -> bool:
    try:
        os.unlink(board_path(cache_name))
    except FileNotFoundError:
        return False
    return True


@dataclass
class Totals:
    buckets: np.ndarray  # (endpoints, buckets) cumulative counts per bucket (not cumulated)
    sum_us: np.ndarray
    count: np.ndarray
    status: np.ndarray  # (endpoints, status classes)


class MetricsBoard:
    def __init__(self, cache_name: str) -> None:
        path = board_path(cache_name)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        lock = OFDLock(self.fd, 0)
        lock.acquire()
        try:
            if os.fstat(self.fd).st_size < BOARD_BYTES:
                os.ftruncate(self.fd, BOARD_BYTES)
            self.mm = mmap.mmap(self.fd, BOARD_BYTES)
            self.board = np.ndarray((SLOTS, SLOT_WORDS), dtype=np.int64, buffer=self.mm)
            self.row = counters.claim(self.board)  # the cache's slot rule: pid + start
        finally:
            lock.release()
        # This process's row as a flat memoryview: item updates without NumPy scalar costs.
        self.mine = memoryview(self.board[self.row, OWNER_WORDS:]).cast("B").cast("q")
        self.base: dict[str, int] = {}

    def observe(self, route: str, status: int, elapsed_ms: float) -> None:
        """Count one request of a route ("app.name" or just the name); only this process
        writes its row."""
        base = self.base.get(route)
        if base is None:
            name = route.rsplit(".", 1)[-1]
            index = ENDPOINTS.index(name) if name in ENDPOINTS else len(ENDPOINTS) - 1
            base = self.base[route] = index * PER_ENDPOINT
        mine = self.mine
        mine[base + bisect_left(_BUCKET_EDGES, elapsed_ms)] += 1
        totals = base + len(BUCKETS_MS)
        mine[totals] += int(elapsed_ms * 1000)
        mine[totals + 1] += 1
        mine[totals + 2 + min(max(status // 100 - 2, 0), len(STATUS_CLASSES) - 1)] += 1

    def live_pids(self) -> list[int]:
        """Pids of the gateway worker processes that own a slot and are alive."""
        return [
            int(pid)
            for pid, start in self.board[:, :OWNER_WORDS].tolist()
            if pid and process_start_ticks(int(pid)) == start
        ]

    def totals(self) -> Totals:
        data = self.board[:, OWNER_WORDS:].reshape(SLOTS, len(ENDPOINTS), PER_ENDPOINT).sum(0)
        base = len(BUCKETS_MS)
        return Totals(data[:, :base], data[:, base], data[:, base + 1], data[:, base + 2 :])

    def close(self) -> None:
        self.mine.release()
        del self.mine, self.board
        self.mm.close()
        os.close(self.fd)


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def render(totals: Totals, stats: dict | None, health: dict | None) -> str:
    """Prometheus text exposition (version 0.0.4)."""
    out = [
        "# HELP featurestore_http_request_duration_ms Gateway request latency in milliseconds.",
        "# TYPE featurestore_http_request_duration_ms histogram",
    ]
    for i, endpoint in enumerate(ENDPOINTS):
        cumulative = np.cumsum(totals.buckets[i])
        for edge, count in zip(BUCKETS_MS, cumulative.tolist(), strict=True):
            le = "+Inf" if edge == float("inf") else repr(edge)
            out.append(
                f"featurestore_http_request_duration_ms_bucket"
                f"{_labels(endpoint=endpoint, le=le)} {count}"
            )
        out.append(
            f"featurestore_http_request_duration_ms_sum{_labels(endpoint=endpoint)} "
            f"{totals.sum_us[i] / 1000:.3f}"
        )
        out.append(
            f"featurestore_http_request_duration_ms_count{_labels(endpoint=endpoint)} "
            f"{totals.count[i]}"
        )
    out += [
        "# HELP featurestore_http_responses_total Responses by endpoint and status class.",
        "# TYPE featurestore_http_responses_total counter",
    ]
    for i, endpoint in enumerate(ENDPOINTS):
        for j, status in enumerate(STATUS_CLASSES):
            out.append(
                f"featurestore_http_responses_total"
                f"{_labels(endpoint=endpoint, status=status)} {totals.status[i, j]}"
            )
    if stats is not None:
        out += _stats_lines(stats)
    if health is not None:
        out += _health_lines(health)
    return "\n".join(out) + "\n"


def _gauge(name: str, help_text: str, value: float, kind: str = "gauge") -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]


def _stats_lines(stats: dict) -> list[str]:
    cache = stats["cache_stats"]
    lines = []
    lines += _gauge(
        "featurestore_computes_total",
        "Feature vectors computed by workers.",
        stats["total_computes"],
        "counter",
    )
    lines += _gauge(
        "featurestore_cache_hits_total", "Cache lookups that hit.", stats["cache_hits"], "counter"
    )
    lines += _gauge(
        "featurestore_cache_misses_total",
        "Cache lookups that missed.",
        stats["cache_misses"],
        "counter",
    )
    lines += _gauge(
        "featurestore_cache_evictions_total",
        "Entries evicted (LRU).",
        cache["evictions"],
        "counter",
    )
    lines += _gauge(
        "featurestore_cache_expirations_total",
        "Entries found expired (TTL).",
        cache["expirations"],
        "counter",
    )
    lines += _gauge("featurestore_cache_entries", "Vectors in the cache.", cache["size"])
    lines += _gauge("featurestore_cache_capacity", "CACHE_MAX_SIZE.", cache["max_size"])
    lines += _gauge("featurestore_cache_hit_rate", "hits / (hits + misses).", cache["hit_rate"])
    lines += _gauge("featurestore_cache_memory_bytes", "Cache segment size.", cache["memory_bytes"])
    lines += _gauge(
        "featurestore_compute_latency_ms_avg",
        "Average compute time per vector.",
        stats["avg_compute_latency_ms"],
    )
    return lines + _message_lines(stats.get("messages", {}))


def _message_lines(messages: dict) -> list[str]:
    """What the receivers dropped (SPEC §11): malformed messages by process, and replies the
    broker dropped for clients that stopped reading."""
    if not messages:
        return []
    lines = [
        "# HELP featurestore_malformed_messages_total Messages dropped as malformed, by receiver.",
        "# TYPE featurestore_malformed_messages_total counter",
    ]
    for process, count in messages.get("malformed", {}).items():
        lines.append(f"featurestore_malformed_messages_total{_labels(process=process)} {count}")
    lines += _gauge(
        "featurestore_dropped_replies_total",
        "Replies dropped for ZeroMQ clients that stopped reading or went away.",
        messages.get("dropped_replies", 0),
        "counter",
    )
    lines += _gauge(
        "featurestore_stalled_clients_total",
        "ZeroMQ clients whose queued replies passed BROKER_CLIENT_MAX_BYTES.",
        messages.get("stalled_clients", 0),
        "counter",
    )
    lines += _gauge(
        "featurestore_reply_backlog_bytes",
        "Reply bytes the broker holds for clients that read slowly.",
        messages.get("backlog_bytes", 0),
    )
    return lines


def _health_lines(health: dict) -> list[str]:
    lines = _gauge(
        "featurestore_workers_alive", "Compute workers alive.", health["workers"]["alive"]
    )
    lines += _gauge("featurestore_workers_expected", "MAX_WORKERS.", health["workers"]["expected"])
    lines += [
        "# HELP featurestore_drift_up Drift process state (1 ok, 0 down, -1 disabled).",
        "# TYPE featurestore_drift_up gauge",
        f"featurestore_drift_up {dict(ok=1, down=0, disabled=-1)[health['drift']]}",
    ]
    if "store" in health:
        lines += _gauge(
            "featurestore_store_up",
            "Event store takes writes (1), or not (0: disk full, I/O errors).",
            int(health["store"] == "ok"),
        )
    lines += [
        "# HELP featurestore_process_rss_bytes Resident memory per process.",
        "# TYPE featurestore_process_rss_bytes gauge",
    ]
    for name, rss in health.get("memory", {}).items():
        lines.append(f"featurestore_process_rss_bytes{_labels(process=name)} {rss}")
    return lines
