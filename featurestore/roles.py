"""What every role's entry point does first: read the settings, stop with EXIT_CONFIG naming
a bad variable (or key or token file), set up logging; then run the role."""

from __future__ import annotations

import sys
from collections.abc import Callable

from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_OK
from featurestore.logs import setup_logging


def run_role(program: str, label: str, run: Callable[[Settings], None]) -> int:
    """Start role `label` (its log name) of `program` (its command name); an exit code.

    A ConfigError raised while the role starts (a key or token file it loads) ends it the
    same way as a bad variable: one line, EXIT_CONFIG."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        return _config_error(program, exc)
    log = setup_logging(label, settings.log_level)
    for exposed in settings.exposed_binds():  # allowed by ALLOW_INSECURE_BIND
        log.warning("ALLOW_INSECURE_BIND: %s", exposed)
    try:
        run(settings)
    except ConfigError as exc:
        return _config_error(program, exc)
    return EXIT_OK


def _config_error(program: str, exc: ConfigError) -> int:
    print(f"{program}: configuration error: {exc}", file=sys.stderr, flush=True)
    return EXIT_CONFIG
