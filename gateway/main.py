"""`featurestore-gateway` / `python -m gateway`: the Sanic HTTP gateway (GATEWAY_WORKERS)."""

from __future__ import annotations

import sys
from functools import partial

from featurestore.config import EXIT_CONFIG, ConfigError, Settings
from featurestore.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"featurestore-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging("gateway", settings.log_level)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
