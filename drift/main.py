"""`featurestore-drift` / `python -m drift`: the drift process."""

from __future__ import annotations

import sys

from featurestore.config import EXIT_CONFIG, ConfigError, Settings
from featurestore.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"featurestore-drift: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("drift", settings.log_level)
    from drift.service import DriftService

    DriftService(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
