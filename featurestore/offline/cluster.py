"""A Dask cluster for one run: an existing `distributed` scheduler, or a LocalCluster of N
worker processes started for the run and stopped after it. Every wait has a deadline; a
scheduler that cannot be reached is one `ClusterError`, never a traceback.

Imported only by the commands that use Dask (`featurestore --help` must not load it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import dask
from distributed import Client, LocalCluster

CONNECT_TIMEOUT_S = 10.0  # reaching a scheduler
CLUSTER_START_TIMEOUT_S = 120.0  # a LocalCluster's workers up (spawned processes import NumPy)
WORKERS_TIMEOUT_S = 30.0  # an existing scheduler has at least one worker
CLOSE_TIMEOUT_S = 30.0
LOCAL_HOST = "127.0.0.1"
# Dask's own log records stay quiet: failures are ours to report, one line each. Its ERROR
# records include races of a normal close (a worker's heartbeat to a scheduler that just
# closed, with a traceback), so only CRITICAL ones are shown.
DASK_LOG_LEVEL = logging.CRITICAL
# glibc malloc of the LocalCluster's worker processes. Dask sets MALLOC_TRIM_THRESHOLD_ to
# 64 KiB, which also turns off glibc's dynamic mmap threshold: every array over 128 KiB is a
# fresh mmap and every page of it a fault (measured: 8x the minor faults, +2 s of system time
# per bucket task of 250,000 rows). These are the values the dynamic threshold settles at
# (mmap above the 32 MiB maximum, trim at twice that); a task's memory stays bounded by its
# bucket. Set before the workers are spawned (a variable set later would be read too late).
WORKER_MALLOC_MMAP_THRESHOLD_BYTES = 32 * 2**20
WORKER_MALLOC_TRIM_THRESHOLD_BYTES = 2 * WORKER_MALLOC_MMAP_THRESHOLD_BYTES


class ClusterError(Exception):
    """The cluster cannot be had: unreachable scheduler, no workers, workers that fail."""


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client of the scheduler at `scheduler`, else of a new LocalCluster of `workers`
    single-threaded processes on this host (closed when the block ends)."""
    logging.getLogger("distributed").setLevel(DASK_LOG_LEVEL)
    with dask.config.set({"distributed.comm.timeouts.connect": f"{CONNECT_TIMEOUT_S}s"}):
        if scheduler is not None:
            with _remote(scheduler) as client:
                yield client
        else:
            with _local(workers or 1) as client:
                yield client


@contextlib.contextmanager
def _remote(address: str) -> Iterator[Client]:
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} within {CONNECT_TIMEOUT_S:g} s "
            f"({reason})"
        ) from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(
                f"the Dask scheduler at {address} has no worker (waited {WORKERS_TIMEOUT_S:g} s)"
            ) from None
        yield client
    finally:
        client.close(timeout=CLOSE_TIMEOUT_S)


def worker_malloc_config() -> dict[str, str]:
    """The `distributed.nanny.pre-spawn-environ` settings of our LocalCluster's workers."""
    prefix = "distributed.nanny.pre-spawn-environ"
    return {
        f"{prefix}.MALLOC_MMAP_THRESHOLD_": str(WORKER_MALLOC_MMAP_THRESHOLD_BYTES),
        f"{prefix}.MALLOC_TRIM_THRESHOLD_": str(WORKER_MALLOC_TRIM_THRESHOLD_BYTES),
    }


@contextlib.contextmanager
def _local(workers: int) -> Iterator[Client]:
    try:
        with dask.config.set(worker_malloc_config()):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host=LOCAL_HOST,
                # the scheduler's HTTP routes always start: a free loopback port, no dashboard
                dashboard_address=f"{LOCAL_HOST}:0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=DASK_LOG_LEVEL,  # the workers' log level
            )
    except (OSError, TimeoutError, RuntimeError) as exc:
        raise ClusterError(
            f"cannot start a local Dask cluster of {workers} workers: {exc}"
        ) from exc
    try:
        client = Client(cluster, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        try:
            client.wait_for_workers(workers, timeout=CLUSTER_START_TIMEOUT_S)
        except TimeoutError:
            raise ClusterError(
                f"the local Dask cluster's {workers} workers did not start within "
                f"{CLUSTER_START_TIMEOUT_S:g} s"
            ) from None
        try:
            yield client
        finally:
            client.close(timeout=CLOSE_TIMEOUT_S)
    finally:
        cluster.close(timeout=CLOSE_TIMEOUT_S)


def worker_count(client: Client) -> int:
    return len(client.scheduler_info(n_workers=-1)["workers"])
