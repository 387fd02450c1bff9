"""Reading the multiprocess directory: the `/metrics` text, and the HTTP servers that serve.

`/metrics` (whichever server answers) sums every server's files, the live ones and those of
servers that died (their counts stay), and adds the broker's figures of this scrape
(gateway/metrics/service.py). The text is the Prometheus format 0.0.4. The servers record
one histogram per (endpoint, status); it is exported as one histogram per endpoint (every
endpoint, from 0) and `featurestore_http_responses_total{endpoint, status}`, its counts.

A server counts as serving from the moment its resources are open (its `serving` gauge is 1)
until it stops or dies: the main process removes a dead server's live gauge when it
replaces it, and a pid is only taken while it is alive and a child of this gateway's main
process, so a server killed a moment ago or a reused pid is never counted.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from gateway.metrics.recorder import (
    BUCKETS_S,
    REQUEST_DURATION,
    REQUEST_DURATION_HELP,
    SERVER_UP,
)
from gateway.metrics.service import ServiceCollector

RESPONSES = "featurestore_http_responses_total"
BUCKET_LABELS = [floatToGoString(bound) for bound in BUCKETS_S]

# generate_latest writes the 0.0.4 text format for names like ours (prometheus_client 0.26
# labels its own content type 1.0.0, which older Prometheus servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The files of prometheus_client's `liveall` gauges, one per pid (those mark_process_dead
# removes): only the `serving` gauge is one.
LIVE_GAUGE_FILES = "gauge_liveall_*.db"


class ServerFiles:
    """The metrics of every server's files, the request histogram as exported (one per
    endpoint, and the responses counter), without the per-pid `serving` gauge (the count of
    servers is exported with the health figures instead)."""

    def __init__(self, directory: Path, endpoints: list[str]) -> None:
        self.files = MultiProcessCollector(None, str(directory))
        self.endpoints = endpoints

    def collect(self) -> Iterator[Metric]:
        recorded = list(self.files.collect())
        by_status = [m for m in recorded if m.name == REQUEST_DURATION]
        yield from request_families(by_status[0].samples if by_status else [], self.endpoints)
        yield from (m for m in recorded if m.name not in (REQUEST_DURATION, SERVER_UP))


def request_families(samples: Iterable, endpoints: list[str]) -> list[Metric]:
    """The samples of the (endpoint, status) histogram, summed (cumulative buckets, counts,
    sums) over statuses, with every endpoint of `endpoints`; and the counts by status."""
    buckets = {endpoint: dict.fromkeys(BUCKET_LABELS, 0.0) for endpoint in endpoints}
    sums = dict.fromkeys(endpoints, 0.0)
    responses = CounterMetricFamily(
        RESPONSES, "Responses by endpoint and HTTP status code.", labels=["endpoint", "status"]
    )
    counts: dict[tuple[str, str], float] = {}
    for sample in samples:
        endpoint = sample.labels["endpoint"]
        if endpoint not in sums:  # not a route of this server: still counted
            buckets[endpoint], sums[endpoint] = dict.fromkeys(BUCKET_LABELS, 0.0), 0.0
        if sample.name.endswith("_bucket"):
            buckets[endpoint][sample.labels["le"]] += sample.value
        elif sample.name.endswith("_sum"):
            sums[endpoint] += sample.value
        elif sample.name.endswith("_count"):
            counts[endpoint, sample.labels["status"]] = sample.value
    duration = HistogramMetricFamily(REQUEST_DURATION, REQUEST_DURATION_HELP, labels=["endpoint"])
    for endpoint, cumulative in buckets.items():
        duration.add_metric([endpoint], list(cumulative.items()), sums[endpoint])
    for (endpoint, status), count in sorted(counts.items()):
        responses.add_metric([endpoint, status], count)
    return [duration, responses]


def render(
    directory: Path,
    endpoints: list[str],
    stats: dict | None,
    health: dict,
    versions: dict[str, tuple[str, int]] | None = None,
) -> bytes:
    """The exposition of the servers' request metrics (every endpoint of `endpoints`), of
    the broker's answers and of the served versions ({version: (hash, features served)})."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerFiles(directory, endpoints))
    registry.register(ServiceCollector(stats, health, versions))
    return generate_latest(registry)


def live_servers(directory: Path, manager_pid: int | None = None) -> list[int]:
    """Pids of the HTTP servers of the gateway whose main process is `manager_pid` (default:
    this process's parent) that serve, in increasing order."""
    manager_pid = os.getppid() if manager_pid is None else manager_pid
    files = glob.glob(os.path.join(directory, LIVE_GAUGE_FILES))
    pids = {
        int(sample.labels["pid"])
        for metric in MultiProcessCollector.merge(files)
        if metric.name == SERVER_UP
        for sample in metric.samples
        if sample.value == 1
    }
    return sorted(pid for pid in pids if _is_child(pid, manager_pid))


def _is_child(pid: int, parent: int) -> bool:
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return process.ppid() == parent and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
