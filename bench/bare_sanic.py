"""The floor of the HTTP benchmarks: a bare Sanic app answering every POST with fixed bytes.

    python bench/bare_sanic.py PORT WORKERS BODY_FILE

Same Sanic version, same worker count, same response bytes as the gateway's answer, and no
work at all: what is left of the gateway's latency above this is ours.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

from sanic import HTTPResponse, Request, Sanic
from sanic.worker.loader import AppLoader


def create_app(body: bytes) -> Sanic:
    app = Sanic("bare")
    app.config.ACCESS_LOG = False
    app.config.MOTD = False

    @app.post("/<path:path>")
    async def answer(request: Request, path: str) -> HTTPResponse:
        return HTTPResponse(body, content_type="application/json")

    return app


def main() -> None:
    port, workers, body_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    body = Path(body_file).read_bytes()
    loader = AppLoader(factory=partial(create_app, body))
    app = loader.load()
    app.prepare(host="127.0.0.1", port=port, workers=workers, access_log=False, motd=False)
    Sanic.serve(primary=app, app_loader=loader)


if __name__ == "__main__":
    main()
