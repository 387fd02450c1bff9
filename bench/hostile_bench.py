"""Hostile ZeroMQ peers against a private stack (SPEC §11): what they cost the broker.

    python bench/hostile_bench.py [--requests 1800] [--work /tmp/fs-bench]

1. A client that sends batch requests of 10,000 cached ids and never reads: the broker's RSS
   at rest (the floor), at its peak during the flood, and once the client has gone.
2. One message of 3,000,000 empty frames: the longest a well-behaved client, sending cached
   gets one after another while the message arrives and until it is answered, waits for one,
   next to the same get at rest (the floor).

Both runs use the same client code; the broker runs with its defaults
(BROKER_CLIENT_MAX_BYTES = 64 MiB, ZMQ_MAX_FRAMES = 64). Writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import psutil
import zmq
from common import demo_store, report

from featurestore.ops.launcher import Stack
from featurestore.wire.envelope import request_frames
from featurestore.wire.frames import Op
from featurestore.wire.messages import BatchRequest

IDS = 10_000
FRAMES = 3_000_000
SETTLE_S = 60.0


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def flood(stack: Stack, ids: list[str], requests: int) -> dict:
    broker = stack.pid("broker")
    baseline = rss(broker)
    context = zmq.Context()
    greedy = context.socket(zmq.DEALER)
    greedy.setsockopt(zmq.LINGER, 0)
    greedy.setsockopt(zmq.RCVHWM, 1)
    greedy.setsockopt(zmq.RCVBUF, 4096)
    greedy.connect(stack.frontend)
    peak = baseline
    started = time.perf_counter()
    for i in range(requests):
        greedy.send_multipart(request_frames(i + 1, f"flood-{i}", Op.BATCH, BatchRequest(ids)))
        if i % 25 == 0:
            peak = max(peak, rss(broker))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # replies keep coming for a while: watch the peak
        peak = max(peak, rss(broker))
        time.sleep(0.1)  # sampling interval
    during = rss(broker)
    greedy.close(linger=0)
    context.term()
    deadline = time.monotonic() + SETTLE_S
    after = rss(broker)
    while time.monotonic() < deadline and after > baseline + (32 << 20):
        time.sleep(0.2)  # sampling interval
        after = rss(broker)
    return {
        "requests": requests,
        "send_s": round(time.perf_counter() - started, 3),
        "baseline_mib": baseline / 2**20,
        "peak_mib": peak / 2**20,
        "during_mib": during / 2**20,
        "after_mib": after / 2**20,
    }


def get_latency_ms(stack: Stack, entity_id: str, samples: int = 50) -> float:
    with stack.client(timeout_ms=60_000, retry_ms=60_000) as fs:
        times = []
        for _ in range(samples):
            started = time.perf_counter()
            fs.get(entity_id)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class Prober(threading.Thread):
    """Cached gets one after another until stopped; the longest one."""

    def __init__(self, stack: Stack, entity_id: str) -> None:
        super().__init__(daemon=True)
        self.stack, self.entity_id = stack, entity_id
        self.stop = threading.Event()
        self.longest_ms = 0.0
        self.count = 0

    def run(self) -> None:
        with self.stack.client(timeout_ms=60_000, retry_ms=60_000) as fs:
            while not self.stop.is_set():
                started = time.perf_counter()
                fs.get(self.entity_id)
                self.longest_ms = max(self.longest_ms, (time.perf_counter() - started) * 1000)
                self.count += 1


def many_frames(stack: Stack, entity_id: str) -> dict:
    floor = get_latency_ms(stack, entity_id)
    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    attacker.setsockopt(zmq.SNDHWM, 0)
    attacker.connect(stack.frontend)
    prober = Prober(stack, entity_id)
    prober.start()
    started = time.perf_counter()
    for _ in range(FRAMES - 1):
        attacker.send(b"", zmq.SNDMORE)
    attacker.send(b"")
    sent_s = time.perf_counter() - started
    answered = attacker.poll(60_000)
    answered_s = time.perf_counter() - started
    prober.stop.set()
    prober.join(timeout=70)
    attacker.close(linger=0)
    context.term()
    return {
        "frames": FRAMES,
        "attacker_send_s": round(sent_s, 3),
        "attacker_answered_s": round(answered_s, 3) if answered else None,
        "get_at_rest_ms": round(floor, 3),
        "longest_get_during_ms": round(prober.longest_ms, 3),
        "gets_during": prober.count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1800)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "fs-bench"))
    args = parser.parse_args()
    data = demo_store(args.work)
    ids = [f"user_{i % 10_000:05d}" for i in range(IDS)]
    with Stack(data, workers=2) as stack:
        with stack.client(timeout_ms=60_000) as fs:
            fs.batch(ids)  # every flood reply is a cache hit: the broker's own work
        flooded = flood(stack, ids, args.requests)
        frames = many_frames(stack, ids[0])
    lines = [
        f"non-reading client, {flooded['requests']} batches of {IDS:,} ids: broker RSS "
        f"{flooded['baseline_mib']:.0f} MiB at rest, peak {flooded['peak_mib']:.0f} MiB "
        f"({flooded['peak_mib'] / flooded['baseline_mib']:.2f}x), "
        f"{flooded['after_mib']:.0f} MiB after it left "
        f"({flooded['after_mib'] / flooded['baseline_mib']:.2f}x)",
        f"one message of {FRAMES:,} frames: longest cached get meanwhile "
        f"{frames['longest_get_during_ms']:.1f} ms vs {frames['get_at_rest_ms']:.3f} ms at rest "
        f"({frames['gets_during']} gets; the attacker sent for {frames['attacker_send_s']:.1f} s "
        f"and was answered after {frames['attacker_answered_s']} s)",
    ]
    report("hostile", {"flood": flooded, "frames": frames}, lines)


if __name__ == "__main__":
    main()
