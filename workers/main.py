"""`featurestore-worker` / `python -m workers`: one compute worker process."""

from __future__ import annotations

import argparse
import sys

from featurestore.config import EXIT_CONFIG, ConfigError, Settings
from featurestore.logs import setup_logging
from featurestore.runtime import keep_large_arrays_in_heap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="featurestore-worker")
    parser.add_argument("--id", default="0", help="worker id (supervisord: %%(process_num)s)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"featurestore-worker: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(f"worker-{args.id}", settings.log_level)
    keep_large_arrays_in_heap()
    from workers.worker import Worker

    Worker(settings, str(args.id)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
