"""One HTTP server process of the gateway: Sanic on the listening socket the gateway's main
process (gateway/manager.py) opened and handed down, until SIGTERM (graceful) or the main
process's death (the kernel's parent-death signal: no orphan keeps the port).

    python -m gateway.server   # started by gateway.manager only: FS_GATEWAY_FD names the socket
"""

from __future__ import annotations

import os
import socket
import sys

from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_OK
from featurestore.ops.processes import die_with_parent

SOCKET_FD_VARIABLE = "FS_GATEWAY_FD"
INDEX_VARIABLE = "FS_GATEWAY_INDEX"


def main() -> int:
    die_with_parent()
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"featurestore-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from gateway.app import create_app

    listener = socket.socket(fileno=int(os.environ[SOCKET_FD_VARIABLE]))
    try:
        app = create_app(settings)
    except ConfigError as exc:  # a key or tokens file changed since the main process read it
        print(f"featurestore-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    app.run(sock=listener, single_process=True, access_log=False, motd=False)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
