"""`featurestore-listener` / `python -m listener`: the change listener of a host.

With STORE_URL empty (SQLite: one host, whose writers invalidate its cache themselves) there
is nothing to follow: it says so and waits to be stopped (so that supervisord runs the same
programs whatever the store; it costs one idle interpreter, ~15 MB).
"""

from __future__ import annotations

import logging
import signal
import sys

from featurestore.config import Settings
from featurestore.ops.roles import run_role


def idle() -> None:
    """Until SIGTERM or SIGINT."""
    stopped: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda number, _frame: stopped.append(number))
    while not stopped:
        signal.pause()


def run(settings: Settings) -> None:
    if not settings.shared_store:
        logging.getLogger("listener").info(
            "STORE_URL is empty (SQLite, one host): no change log to follow; idle"
        )
        idle()
        return
    from listener.follower import ChangeListener

    ChangeListener.start(settings).stop_on_signals().run()


def main(argv: list[str] | None = None) -> int:
    return run_role("featurestore-listener", "listener", run)


if __name__ == "__main__":
    sys.exit(main())
