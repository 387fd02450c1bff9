"""What the CLI commands share: exit codes, the --data-dir option, settings, the event store,
progress bars.

Import-light, like every command module's `add_parser`: `featurestore --help` must not load
NumPy, pandas, Arrow or ZeroMQ, so what needs them is imported inside the function that uses it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from featurestore.config import Settings
from featurestore.exitcodes import EXIT_FAILURE

if TYPE_CHECKING:
    from featurestore.store.base import EventStore


class CommandError(Exception):
    """A command failed for a reason the user can act on; printed without a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def common_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--data-dir",
        default=None,
        help="data directory (default: $DATA_DIR, else ./data)",
    )
    return parent


def load_settings(args: argparse.Namespace) -> Settings:
    """The settings from the environment, with --data-dir taking the place of DATA_DIR."""
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["DATA_DIR"] = args.data_dir
    return Settings.from_env(env)


def open_event_store(settings: Settings) -> EventStore:
    """The store of the settings (SQLite under DATA_DIR, or STORE_URL's PostgreSQL) with the
    service's retentions. StoreCorrupt and StoreUnavailable reach `main`, which prints them
    as one line."""
    from featurestore.store.factory import open_store

    return open_store(settings, role="cli")


@contextmanager
def running_cache(settings: Settings) -> Iterator[Callable[[list[str]], None]]:
    """`invalidate(entity_ids)` on the cache of a running service of this DATA_DIR (a no-op
    when none runs), so CLI writes are read by the service at once (read your writes)."""
    from shm import FeatureCache
    from shm.segment import exists

    if not exists(settings.cache_name):
        yield lambda _ids: None
        return
    cache = FeatureCache.attach(settings.cache_name)
    try:
        yield cache.invalidate_many
    finally:
        cache.close()


@contextmanager
def progress_bar(total: int | None, unit: str, label: str) -> Iterator[Callable[[int], None]]:
    """A tqdm bar on stderr (silent when stderr is not a terminal); yields `advance(n)`."""
    from tqdm import tqdm

    with tqdm(
        total=total,
        unit=unit,
        unit_scale=True,
        desc=label,
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
    ) as bar:
        yield bar.update
