"""Drift benchmarks (issue 6): vectors per second the drift process absorbs, and report
latency with 2 versions x 22 monitored features.

    python bench/drift_bench.py [--vectors 200000]

A publisher process-local PUB socket plays the workers (the real message format, from
workers.publisher) against a real drift process started by the test launcher. Absorbed =
counted in the report's `total_tracked`. Writes bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq
from common import report

from featurestore.ops.launcher import Stack, wait_for
from workers.publisher import VectorPublisher

WIDTH = 24


def absorb_rate(stack: Stack, vectors: int, per_message: int) -> tuple[float, int]:
    """Vectors/s from the first send until the report counts them all; and dropped."""
    context = zmq.Context()
    publisher = VectorPublisher(context, stack.settings.drift_features_endpoint, "bench", True)
    publisher.socket.setsockopt(zmq.SNDHWM, 0)  # measure the drift process, not the HWM
    rng = np.random.default_rng(per_message)
    block = rng.normal(50, 10, (per_message, WIDTH))
    with stack.client() as fs:
        fs.drift_baseline(action="reset")
        before = fs.drift_report()["total_tracked"]
        wait_for(lambda: _sent_one(publisher, fs, before), 10, "the drift SUB to connect")
        start_total = fs.drift_report()["total_tracked"]
        started = time.perf_counter()
        for i in range(vectors // per_message):
            publisher.publish("v1" if i % 2 else "v2", block)
        target = start_total + (vectors // per_message) * per_message
        report = wait_for(lambda: _reached(fs, target), 120, "the drift process to absorb")
        elapsed = time.perf_counter() - started
    publisher.close()
    context.term()
    return (report["total_tracked"] - start_total) / elapsed, report["dropped"]


def _sent_one(publisher: VectorPublisher, fs, before: int) -> bool:
    publisher.publish("v1", np.ones((1, WIDTH)))
    return fs.drift_report()["total_tracked"] > before


def _reached(fs, target: int) -> dict | None:
    current = fs.drift_report()
    return current if current["total_tracked"] >= target else None


def report_latency(stack: Stack, n: int = 200) -> tuple[float, float, int]:
    with stack.client() as fs:
        samples = []
        for _ in range(n):
            started = time.perf_counter()
            current = fs.drift_report()
            samples.append(time.perf_counter() - started)
    ms = np.array(samples) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), current["features_monitored"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=200_000)
    args = parser.parse_args()
    env = {
        "DRIFT_BASELINE_SIZE": "1000",
        "DRIFT_WINDOW_SIZE": "1000",
        "DRIFT_MIN_CURRENT": "500",
        "DRIFT_CHECK_INTERVAL_MS": "60000",
    }
    results: dict = {}
    with Stack(Path(tempfile.mkdtemp()), workers=1, drift=True, env=env) as stack:
        for per_message in (1, 10, 1000):
            count = args.vectors if per_message > 1 else min(args.vectors, 50_000)
            rate, dropped = absorb_rate(stack, count, per_message)
            results[f"absorb_{per_message}_per_message_vectors_per_s"] = rate
            results[f"absorb_{per_message}_per_message_dropped"] = dropped
        p50, p99, monitored = report_latency(stack)
        results.update(report_p50_ms=p50, report_p99_ms=p99, features_monitored=monitored)
    r = results
    lines = [
        "drift absorbs (vectors/s, messages of 1 / 10 / 1,000 vectors): "
        f"{r['absorb_1_per_message_vectors_per_s']:,.0f} / "
        f"{r['absorb_10_per_message_vectors_per_s']:,.0f} / "
        f"{r['absorb_1000_per_message_vectors_per_s']:,.0f} (target >= 50,000)",
        f"drift report ({r['features_monitored']} pairs = 2 versions x 22 features, scored): "
        f"P50 {r['report_p50_ms']:.2f} ms P99 {r['report_p99_ms']:.2f} ms (ZeroMQ client, "
        "through the broker)",
    ]
    report("drift", results, lines)


if __name__ == "__main__":
    main()
