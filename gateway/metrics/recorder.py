"""What one HTTP server process records: the duration and status of every request, per
endpoint, and whether it is serving.

The values are prometheus_client metrics in multiprocess mode: each process writes its own
files in the gateway's multiprocess directory (featurestore/ops/metrics_dir.py) and `/metrics`
sums them (gateway/metrics/exposition.py), so no increment is lost across servers and a dead
server's counts stay.

`observe` runs on every request: one dict lookup, then one histogram of that (endpoint,
status), whose sum and bucket are two updates of a mapped file (~1.7 µs; each update costs
~0.6 µs, so the responses counter is not a third one: `/metrics` derives it from the
histogram's counts, and sums the histogram over statuses, one per endpoint).

Endpoints are the app's routes, by the name each route declares (`name="features_batch"`);
a request that matched no route (a 404 or 405) counts as `unmatched`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from prometheus_client import Gauge, Histogram
from sanic import Sanic

from featurestore.ops.metrics_dir import MULTIPROC_DIR_VARIABLE

REQUEST_DURATION = "featurestore_http_request_duration_seconds"
REQUEST_DURATION_HELP = "Time from a request's arrival at its route to its response."
SERVER_UP = "featurestore_gateway_server_up"  # per pid, read by live_servers, not exported
UNMATCHED = "unmatched"
BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)


def endpoints(app: Sanic) -> dict[str, str]:
    """Every route of `app` (blueprints registered): its full name -> its endpoint label, the
    name the route declares ("featurestore.system.health" -> "health")."""
    labels = {route.name: route.name.rsplit(".", 1)[-1] for route in app.router.routes}
    if len(set(labels.values())) < len(labels) or UNMATCHED in labels.values():
        raise ValueError(f"route names must be unique and not {UNMATCHED!r}: {sorted(labels)}")
    return labels


class ServerMetrics:
    """This process's request metrics (one instance per process: two would write the same
    values)."""

    def __init__(self, routes: dict[str, str]) -> None:
        directory = os.environ.get(MULTIPROC_DIR_VARIABLE)
        if not directory or not os.path.isdir(directory):
            raise RuntimeError(
                f"{MULTIPROC_DIR_VARIABLE} must name the gateway's metrics directory before "
                "prometheus_client is imported (gateway.manager sets it for each server)"
            )
        self.directory = Path(directory)
        self.routes = routes
        self.duration = Histogram(
            REQUEST_DURATION,
            REQUEST_DURATION_HELP,
            ["endpoint", "status"],
            buckets=BUCKETS_S,
            registry=None,
        )
        self.up = Gauge(
            SERVER_UP,
            "1 while this HTTP server process serves.",
            multiprocess_mode="liveall",
            registry=None,
        )
        self.recorders: dict[tuple[str, int], Callable[[float], None]] = {}

    def endpoints(self) -> list[str]:
        """Every endpoint label, `unmatched` last."""
        return [*dict.fromkeys(self.routes.values()), UNMATCHED]

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one response of the route named `route` ("" if none matched)."""
        try:
            observe = self.recorders[route, status]
        except KeyError:
            observe = self._recorder(route, status)
        observe(seconds)

    def _recorder(self, route: str, status: int) -> Callable[[float], None]:
        endpoint = self.routes.get(route, UNMATCHED)
        observe = self.duration.labels(endpoint, str(status)).observe
        self.recorders[route, status] = observe
        return observe

    def serving(self, up: bool) -> None:
        """Tell `live_servers` that this process serves (after its resources are open), or no
        longer does (it is stopping)."""
        self.up.set(1 if up else 0)
