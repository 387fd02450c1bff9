"""`featurestore-broker` / `python -m broker`: the broker process."""

from __future__ import annotations

import sys

from featurestore.config import Settings
from featurestore.roles import run_role
from featurestore.runtime import return_large_blocks


def run(settings: Settings) -> None:
    from broker.broker import Broker

    return_large_blocks()
    Broker(settings).run()


def main(argv: list[str] | None = None) -> int:
    return run_role("featurestore-broker", "broker", run, root_when_alone=True)


if __name__ == "__main__":
    sys.exit(main())
