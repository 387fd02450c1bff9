"""The stress benchmark (issue 7) on a private stack: `featurestore bench stress` against the
real service (gateway, broker, 4 workers, drift) over the 10,000-entity demo store.

    python bench/stress_bench.py [--duration 30] [--concurrency 32]

Writes bench/results/stress.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
from pathlib import Path

from common import demo_store, report

from featurestore.offline.demo import ENTITY_LIST
from featurestore.ops.launcher import Stack
from featurestore.ops.stress import report_lines, run_stress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--work", default="/tmp/fs-bench")
    args = parser.parse_args()
    source = demo_store(args.work)
    data = Path(args.work) / "stress-store"  # a copy: the stress ingests into it
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(source, data)
    ids = [
        line.split(",")[0]
        for line in (data / ENTITY_LIST).read_text().splitlines()[1:]
        if not line.endswith(",0")
    ]
    with Stack(data, workers=4, gateway=True, drift=True) as stack:
        result = asyncio.run(
            run_stress(
                "127.0.0.1",
                stack.settings.port,
                ids,
                duration_s=args.duration,
                concurrency=args.concurrency,
            )
        )
    lines = report_lines(result)
    report("stress", result, lines)


if __name__ == "__main__":
    main()
