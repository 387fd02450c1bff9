"""What every role's entry point does first: read the settings (stop with EXIT_CONFIG naming
a bad variable), die with its parent, set up logging, check its stack's claim on DATA_DIR
(stop with EXIT_UNAVAILABLE naming the other stack); then run the role."""

from __future__ import annotations

import sys
from collections.abc import Callable

from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_OK, EXIT_UNAVAILABLE
from featurestore.logs import setup_logging
from featurestore.processes import die_with_parent
from featurestore.stacklock import StackBusy, claimed_stack


def run_role(
    program: str,
    label: str,
    run: Callable[[Settings], None],
    *,
    root_when_alone: bool = False,
) -> int:
    """Start role `label` (its log name) of `program` (its command name); an exit code.

    `root_when_alone`: this role holds the DATA_DIR lock when no stack root started it."""
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"{program}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    die_with_parent()
    setup_logging(label, settings.log_level)
    try:
        with claimed_stack(settings.data_dir, label, root_when_alone=root_when_alone):
            run(settings)
    except StackBusy as exc:
        print(f"{program}: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK
