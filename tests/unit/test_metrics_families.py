"""The gateway's metrics without processes: the broker's `stats` and `health` answers as
metric families (names, types, values, a valid exposition), the endpoint labels derived from
an app's routes, and the multiprocess directory's life (prepare, drop)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sanic import Blueprint, HTTPResponse, Sanic

from featurestore.ops.metrics_dir import drop, metrics_dir, prepare
from gateway.metrics.exposition import RESPONSES, request_families
from gateway.metrics.recorder import (
    BUCKETS_S,
    REQUEST_DURATION,
    REQUEST_DURATION_HELP,
    UNMATCHED,
    endpoints,
)
from gateway.metrics.service import ServiceCollector, service_metrics

STATS = {
    "total_computes": 120,
    "cache_hits": 300,
    "cache_misses": 100,
    "cache_hit_rate": 0.75,
    "avg_compute_latency_ms": 0.25,
    "cache_stats": {
        "size": 90,
        "max_size": 10_000,
        "hit_rate": 0.75,
        "utilization": 0.009,
        "evictions": 3,
        "expirations": 4,
        "memory_bytes": 8_974_336,
    },
    "workers": [{"id": 0, "computes": 120, "avg_compute_latency_ms": 0.25}],
    "messages": {
        "malformed": {"broker": 1, "workers": 2, "drift": 0},
        "dropped_replies": 5,
        "stalled_clients": 1,
        "backlogged_clients": 2,
        "backlog_bytes": 4096,
    },
}
HEALTH = {
    "status": "degraded",
    "workers": {"alive": 1, "expected": 2},
    "broker": "ok",
    "drift": "down",
    "cache": "ok",
    "store": "unavailable",
    "uptime_s": 12.5,
    "memory": {"broker": 1000, "worker-0": 2000, "gateway": 300, "gateway-0": 400},
    "gateway": {"alive": 1, "expected": 2},
}


def families(stats: dict | None, health: dict) -> dict[str, tuple[str, list]]:
    """name of each sample's family -> (type, [(sample name, labels, value)])."""
    return {
        f.name: (f.type, [(s.name, s.labels, s.value) for s in f.samples])
        for f in service_metrics(stats, health)
    }


def value(found: dict, family: str, **labels: str) -> float:
    (got,) = [v for _, sample_labels, v in found[family][1] if sample_labels == labels]
    return got


def test_every_figure_of_stats_and_health_is_a_typed_family() -> None:
    # Given the broker's answers
    # When they become families
    found = families(STATS, HEALTH)
    # Then counters are counters (their samples named _total), the rest gauges
    counters = {name for name, (kind, _) in found.items() if kind == "counter"}
    assert counters == {
        "featurestore_computes",
        "featurestore_cache_hits",
        "featurestore_cache_misses",
        "featurestore_cache_evictions",
        "featurestore_cache_expirations",
        "featurestore_malformed_messages",
        "featurestore_dropped_replies",
        "featurestore_stalled_clients",
    }
    assert all(name.endswith("_total") for c in counters for name, _, _ in found[c][1])
    assert set(found) - counters == {
        "featurestore_broker_up",
        "featurestore_compute_latency_seconds",
        "featurestore_cache_entries",
        "featurestore_cache_max_entries",
        "featurestore_cache_memory_bytes",
        "featurestore_backlogged_clients",
        "featurestore_reply_backlog_bytes",
        "featurestore_workers_alive",
        "featurestore_workers_expected",
        "featurestore_gateway_servers_alive",
        "featurestore_gateway_servers_expected",
        "featurestore_drift_enabled",
        "featurestore_drift_up",
        "featurestore_store_up",
        "featurestore_process_resident_memory_bytes",
    }
    assert {found[name][0] for name in set(found) - counters} == {"gauge"}
    # with the answers' values, in base units
    assert value(found, "featurestore_broker_up") == 1
    assert value(found, "featurestore_computes") == 120
    assert value(found, "featurestore_compute_latency_seconds") == 0.25 / 1000
    assert value(found, "featurestore_cache_hits") == 300
    assert value(found, "featurestore_cache_misses") == 100
    assert value(found, "featurestore_cache_evictions") == 3
    assert value(found, "featurestore_cache_expirations") == 4
    assert value(found, "featurestore_cache_entries") == 90
    assert value(found, "featurestore_cache_max_entries") == 10_000
    assert value(found, "featurestore_cache_memory_bytes") == 8_974_336
    assert value(found, "featurestore_malformed_messages", process="workers") == 2
    assert value(found, "featurestore_dropped_replies") == 5
    assert value(found, "featurestore_stalled_clients") == 1
    assert value(found, "featurestore_backlogged_clients") == 2
    assert value(found, "featurestore_reply_backlog_bytes") == 4096
    assert value(found, "featurestore_workers_alive") == 1
    assert value(found, "featurestore_workers_expected") == 2
    assert value(found, "featurestore_gateway_servers_alive") == 1
    assert value(found, "featurestore_gateway_servers_expected") == 2
    assert value(found, "featurestore_store_up") == 0
    memory = "featurestore_process_resident_memory_bytes"
    assert {labels["process"]: v for _, labels, v in found[memory][1]} == HEALTH["memory"]


@pytest.mark.parametrize(
    ("drift", "enabled", "up"), [("ok", 1, 1), ("down", 1, 0), ("disabled", 0, 0)]
)
def test_drift_state_is_two_gauges(drift: str, enabled: int, up: int) -> None:
    found = families(STATS, {**HEALTH, "drift": drift})
    assert value(found, "featurestore_drift_enabled") == enabled
    assert value(found, "featurestore_drift_up") == up


def test_without_the_broker_only_the_gateway_is_reported() -> None:
    # Given no answer from the broker, only the gateway's own part of health
    gateway_only = {"gateway": {"alive": 2, "expected": 2}, "memory": {"gateway-0": 400}}
    found = families(None, gateway_only)
    assert value(found, "featurestore_broker_up") == 0
    assert set(found) == {
        "featurestore_broker_up",
        "featurestore_gateway_servers_alive",
        "featurestore_gateway_servers_expected",
        "featurestore_process_resident_memory_bytes",
    }


def test_an_older_answer_without_optional_parts_still_renders() -> None:
    stats = {k: v for k, v in STATS.items() if k != "messages"}
    health = {k: v for k, v in HEALTH.items() if k not in ("store", "gateway", "memory")}
    found = families(stats, health)
    assert "featurestore_store_up" not in found
    assert value(found, "featurestore_dropped_replies") == 0
    assert found["featurestore_malformed_messages"][1] == []


def test_the_exposition_is_valid_prometheus_text() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector(STATS, HEALTH))
    text = generate_latest(registry).decode()
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed.keys() == families(STATS, HEALTH).keys()
    assert "# TYPE featurestore_cache_hits_total counter" in text.splitlines()
    assert "featurestore_cache_hits_total 300.0" in text.splitlines()
    assert not [line for line in text.splitlines() if "_created" in line]


# ------------------------------------------------------------------ request metrics
def test_the_histogram_by_status_is_exported_per_endpoint_with_the_responses() -> None:
    # Given what servers recorded: one histogram per (endpoint, status)
    recorded = Histogram(
        REQUEST_DURATION,
        REQUEST_DURATION_HELP,
        ["endpoint", "status"],
        buckets=BUCKETS_S,
        registry=CollectorRegistry(),
    )
    for seconds in (0.00005, 0.0003, 0.002):
        recorded.labels("features", "200").observe(seconds)
    recorded.labels("features", "404").observe(0.0004)
    recorded.labels(UNMATCHED, "405").observe(0.00002)
    (metric,) = recorded.collect()
    # When exported for the endpoints of the routes
    duration, responses = request_families(metric.samples, ["features", "health", UNMATCHED])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in duration.samples}

    def bucket(endpoint: str, le: str) -> float:
        return samples[f"{REQUEST_DURATION}_bucket", (("endpoint", endpoint), ("le", le))]

    # Then one histogram per endpoint, summed over statuses, cumulative; idle ones at 0
    assert duration.type == "histogram"
    edges = ("0.0001", "0.0005", "0.001", "0.0025", "+Inf")
    assert [bucket("features", le) for le in edges] == [1, 3, 3, 4, 4]
    assert samples[f"{REQUEST_DURATION}_count", (("endpoint", "features"),)] == 4
    assert samples[f"{REQUEST_DURATION}_sum", (("endpoint", "features"),)] == pytest.approx(0.00275)
    assert samples[f"{REQUEST_DURATION}_count", (("endpoint", "health"),)] == 0
    assert bucket("health", "+Inf") == 0
    assert bucket(UNMATCHED, "0.0001") == 1
    # and the responses counter is its counts by status
    assert responses.type == "counter"
    assert {(s.labels["endpoint"], s.labels["status"]): s.value for s in responses.samples} == {
        ("features", "200"): 3,
        ("features", "404"): 1,
        (UNMATCHED, "405"): 1,
    }
    assert {s.name for s in responses.samples} == {RESPONSES}


# --------------------------------------------------------------------------- endpoints
def _ok(request: object) -> HTTPResponse:
    return HTTPResponse("")


def test_endpoints_are_the_routes_of_the_app() -> None:
    # Given an app whose routes come from two blueprints
    app = Sanic(f"endpoints_{uuid.uuid4().hex[:8]}")
    first, second = Blueprint("first"), Blueprint("second")
    first.add_route(_ok, "/a", name="alpha")
    second.add_route(_ok, "/b/<x:path>", methods=["DELETE"], name="beta")
    app.blueprint([first, second])
    # Then each route is one endpoint, labelled by the name it declares
    assert endpoints(app) == {f"{app.name}.first.alpha": "alpha", f"{app.name}.second.beta": "beta"}


def test_two_routes_of_one_name_or_a_route_named_unmatched_are_refused() -> None:
    app = Sanic(f"endpoints_{uuid.uuid4().hex[:8]}")
    first, second = Blueprint("first"), Blueprint("second")
    first.add_route(_ok, "/a", name="same")
    second.add_route(_ok, "/b", name="same")
    second.add_route(_ok, "/c", name=UNMATCHED)
    app.blueprint([first, second])
    with pytest.raises(ValueError, match="unique"):
        endpoints(app)


# ------------------------------------------------------------------- the directory
@pytest.fixture
def cache_name() -> Iterator[str]:
    name = f"fs-test-metrics-{uuid.uuid4().hex[:12]}"
    yield name
    drop(name)


def test_prepare_empties_what_a_killed_gateway_left(cache_name: str) -> None:
    # Given the directory of an earlier gateway, with its servers' files
    stale = metrics_dir(cache_name)
    stale.mkdir(mode=0o755)
    (stale / "counter_123.db").write_bytes(b"x" * 64)
    # When a gateway prepares it
    path = prepare(cache_name)
    # Then it is empty and private
    assert path == stale
    assert list(path.iterdir()) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert drop(cache_name) is True
    assert not path.exists()
    assert drop(cache_name) is False


def test_drop_removes_a_link_in_its_place_without_following_it(
    cache_name: str, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep").write_text("kept")
    os.symlink(target, metrics_dir(cache_name))
    assert drop(cache_name) is True
    assert not os.path.lexists(metrics_dir(cache_name))
    assert (target / "keep").read_text() == "kept"
    assert prepare(cache_name).is_dir()
