"""Reading the multiprocess directory: the `/metrics` text, and the HTTP servers that serve.

`/metrics` (whichever server answers) sums every server's files, the live ones and those of
servers that died (their counts stay), and adds the broker's figures of this scrape
(gateway/metrics/service.py). The text is the Prometheus format 0.0.4.

A server counts as serving from the moment its resources are open (its `serving` gauge is 1)
until it stops or dies: the main process removes a dead server's live gauge when it
replaces it, and a pid is only taken while it is alive and a child of this gateway's main
process, so a server killed a moment ago or a reused pid is never counted.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.metrics.recorder import SERVER_UP
from gateway.metrics.service import ServiceCollector

# generate_latest writes the 0.0.4 text format for names like ours (prometheus_client 0.26
# labels its own content type 1.0.0, which older Prometheus servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The files of prometheus_client's `liveall` gauges, one per pid (those mark_process_dead
# removes): only the `serving` gauge is one.
LIVE_GAUGE_FILES = "gauge_liveall_*.db"


class ServerFiles:
    """The metrics of every server's files, but the per-pid `serving` gauge (the count of
    servers is exported with the health figures instead)."""

    def __init__(self, directory: Path) -> None:
        self.files = MultiProcessCollector(None, str(directory))

    def collect(self) -> Iterator[Metric]:
        return (metric for metric in self.files.collect() if metric.name != SERVER_UP)


def render(directory: Path, stats: dict | None, health: dict) -> bytes:
    """The exposition of the servers' request metrics and of the broker's answers."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerFiles(directory))
    registry.register(ServiceCollector(stats, health))
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
