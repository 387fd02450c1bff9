"""`featurestore-worker` / `python -m workers --id N`: one compute worker process."""

from __future__ import annotations

import argparse
import sys

from featurestore.config import Settings
from featurestore.ops.roles import run_role
from featurestore.ops.runtime import keep_large_arrays_in_heap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="featurestore-worker")
    parser.add_argument("--id", default="0", help="worker id (supervisord: %%(process_num)s)")
    worker_id = str(parser.parse_args(argv).id)

    def run(settings: Settings) -> None:
        from workers.worker import Worker

        keep_large_arrays_in_heap()
        Worker(settings, worker_id).run()

    return run_role("featurestore-worker", f"worker-{worker_id}", run)


if __name__ == "__main__":
    sys.exit(main())
