"""`featurestore-drift` / `python -m drift`: the drift process."""

from __future__ import annotations

import sys

from featurestore.config import Settings
from featurestore.ops.roles import run_role


def run(settings: Settings) -> None:
    from drift.service import DriftService

    DriftService(settings).run()


def main(argv: list[str] | None = None) -> int:
    return run_role("featurestore-drift", "drift", run)


if __name__ == "__main__":
    sys.exit(main())
