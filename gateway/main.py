"""`featurestore-gateway` / `python -m gateway`: the Sanic HTTP gateway (GATEWAY_WORKERS)."""

from __future__ import annotations

import sys
from functools import partial

from featurestore.config import Settings
from featurestore.roles import run_role


def run(settings: Settings) -> None:
    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from gateway.app import create_app

    loader = AppLoader(factory=partial(create_app, settings))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        workers=settings.gateway_workers,
        access_log=False,
        motd=False,
        single_process=False,
    )
    Sanic.serve(primary=app, app_loader=loader)


def main(argv: list[str] | None = None) -> int:
    return run_role("featurestore-gateway", "gateway", run)


if __name__ == "__main__":
    sys.exit(main())
