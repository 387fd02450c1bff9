"""`featurestore-gateway` / `python -m gateway`: the HTTP gateway, GATEWAY_WORKERS server
processes under one main process (gateway/manager.py)."""

from __future__ import annotations

import sys

from featurestore.config import Settings
from featurestore.ops.roles import run_role


def main(argv: list[str] | None = None) -> int:
    code = 0

    def run(settings: Settings) -> None:
        nonlocal code
        from gateway.manager import GatewayManager

        code = GatewayManager(settings).run()

    return run_role("featurestore-gateway", "gateway", run) or code


if __name__ == "__main__":
    sys.exit(main())
