"""What every role's entry point does first: keep its files private, read the settings (stop
with EXIT_CONFIG naming a bad variable, key or token file), die with its parent, set up
logging, check its stack's claim on DATA_DIR (stop with EXIT_UNAVAILABLE naming the other
stack); then run the role. A store that is corrupt or not ours stops the role with one line
and EXIT_DATA (supervisord does not restart it); one that cannot be opened now, with one line
and EXIT_IOERR (it does)."""

from __future__ import annotations

import sys
from collections.abc import Callable

from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_DATA, EXIT_IOERR, EXIT_OK, EXIT_UNAVAILABLE
from featurestore.ops.logs import setup_logging
from featurestore.ops.permissions import restrict_new_files
from featurestore.ops.processes import die_with_parent
from featurestore.ops.stacklock import StackBusy, claimed_stack
from featurestore.store.errors import StoreCorrupt, StoreUnavailable


def run_role(
    program: str,
    label: str,
    run: Callable[[Settings], None],
    *,
    root_when_alone: bool = False,
) -> int:
    """Start role `label` (its log name) of `program` (its command name); an exit code.

    `root_when_alone`: this role holds the DATA_DIR lock when no stack root started it. A
    ConfigError raised while the role starts (a key or token file it loads) ends it the same
    way as a bad variable: one line, EXIT_CONFIG."""
    restrict_new_files()
    try:
        settings = Settings.from_env()
        settings.definitions  # noqa: B018 -- read and validated once, at start (FEATURES_FILE)
    except ConfigError as exc:
        return _fail(program, f"configuration error: {exc}", EXIT_CONFIG)
    die_with_parent()
    log = setup_logging(label, settings.log_level)
    for exposed in settings.exposed_binds():  # allowed by ALLOW_INSECURE_BIND
        log.warning("ALLOW_INSECURE_BIND: %s", exposed)
    try:
        with claimed_stack(settings.data_dir, label, root_when_alone=root_when_alone):
            run(settings)
    except ConfigError as exc:
        return _fail(program, f"configuration error: {exc}", EXIT_CONFIG)
    except StackBusy as exc:
        return _fail(program, str(exc), EXIT_UNAVAILABLE)
    except StoreCorrupt as exc:
        return _fail(program, f"data error: {exc}", EXIT_DATA)
    except StoreUnavailable as exc:
        return _fail(program, str(exc), EXIT_IOERR)
    return EXIT_OK


def _fail(program: str, message: str, code: int) -> int:
    print(f"{program}: {message}", file=sys.stderr, flush=True)
    return code
