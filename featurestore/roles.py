"""What every role's entry point does first: read the settings, stop with EXIT_CONFIG naming
a bad variable, set up logging; then run the role."""

from __future__ import annotations

import sys
from collections.abc import Callable

from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_OK
from featurestore.logs import setup_logging


def run_role(program: str, label: str, run: Callable[[Settings], None]) -> int:
    """Start role `label` (its log name) of `program` (its command name); an exit code."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(label, settings.log_level)
    run(settings)
    return EXIT_OK
