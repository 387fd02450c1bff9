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
    from featurestore.definitions.model import FeatureSet
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
    """The store of the settings (featurestore/store/factory.py). StoreCorrupt, StoreUnavailable
    and SchemaMismatch reach `main`, which prints them as one line."""
    from featurestore.store import factory

    return factory.open_event_store(settings)


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


def definitions_option(parser: argparse.ArgumentParser) -> None:
    """`--definitions FILE`: compute from this definitions file instead of FEATURES_FILE (to
    try a version on real data before serving it)."""
    parser.add_argument(
        "--definitions",
        default=None,
        metavar="FILE",
        help="feature definitions to compute with (default FEATURES_FILE)",
    )


def chosen_features(args: argparse.Namespace, settings: Settings, store: EventStore) -> FeatureSet:
    """The version a computing command uses: `--version` (default FEATURE_VERSION, or the
    first of the file) of `--definitions FILE` or of the served definitions. A trial file's
    fields must be readable from the store (`layout.check_readable`)."""
    from featurestore.definitions import load_definitions
    from featurestore.store.layout import check_readable

    if args.definitions:
        defs = load_definitions(args.definitions)  # DefinitionsError: EXIT_CONFIG
        check_readable(store.layout, defs.schema, defs.source)
        versions = defs.names
        default = versions[0]
    else:
        defs, versions, default = settings.definitions, settings.versions, settings.default_version
    version = args.version or default
    if version not in versions:
        raise CommandError(f"unknown version {version!r}; valid: {', '.join(versions)}")
    return defs.versions[version]
