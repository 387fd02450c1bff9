"""`featurestore-broker` / `python -m broker`: the broker process."""

from __future__ import annotations

import sys

from featurestore.config import Settings
from featurestore.ops.roles import run_role


def run(settings: Settings) -> None:
    from broker.broker import Broker

    Broker(settings).run()


def main(argv: list[str] | None = None) -> int:
    return run_role("featurestore-broker", "broker", run, root_when_alone=True)


if __name__ == "__main__":
    sys.exit(main())
