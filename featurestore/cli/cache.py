"""`featurestore cache drop`: unlink the shared-memory cache segment of a DATA_DIR."""

from __future__ import annotations

import argparse

from featurestore.cli.common import common_options
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cache", help="manage the shared-memory feature cache")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    drop = actions.add_parser(
        "drop",
        parents=[common_options()],
        help="unlink the cache segment (CACHE_NAME) of this DATA_DIR",
    )
    drop.set_defaults(run=run_drop)


def run_drop(args: argparse.Namespace, settings: Settings) -> int:
    from shm import drop

    existed = drop(settings.cache_name)
    print(f"cache {settings.cache_name}: {'dropped' if existed else 'did not exist'}")
    return 0
