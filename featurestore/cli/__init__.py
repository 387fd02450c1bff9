"""`featurestore`: the command line. One module per command, each with `add_parser` and `run`.

Every failure a user can act on is one line `featurestore <command>: ...` and an exit code
(featurestore/exitcodes.py), never a traceback: a bad setting (EXIT_CONFIG), a corrupt or
foreign store file (EXIT_DATA), a store that cannot be written now (EXIT_IOERR)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from featurestore.cli import bench, cache, definitions, demo, entity, generate, ingest, keys, serve
from featurestore.cli.common import CommandError, load_settings
from featurestore.config import ConfigError
from featurestore.errors import ServiceError
from featurestore.exitcodes import EXIT_CONFIG, EXIT_DATA, EXIT_FAILURE, EXIT_IOERR, EXIT_USAGE
from featurestore.ops.permissions import restrict_new_files
from featurestore.store.errors import StoreCorrupt, StoreUnavailable

COMMANDS = (demo, ingest, generate, entity, definitions, serve, cache, keys, bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurestore",
        description="Feature store: events in, point-in-time correct features out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    restrict_new_files()  # what a command creates (the store, its outputs) is 0600 / 0700
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
        return int(args.run(args, settings) or 0)
    except (ConfigError, CommandError, StoreCorrupt, StoreUnavailable, ServiceError) as exc:
        message, code = failure(args.command, exc)
        print(message, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print("featurestore: interrupted", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `featurestore ... | head`: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush cannot fail
        return EXIT_FAILURE


def failure(command: str, exc: Exception) -> tuple[str, int]:
    """The one line and the exit code of a failure the user can act on."""
    if isinstance(exc, ConfigError):
        return f"featurestore: configuration error: {exc}", EXIT_CONFIG
    if isinstance(exc, CommandError):
        return f"featurestore {command}: {exc}", exc.exit_code
    if isinstance(exc, StoreCorrupt):
        return f"featurestore {command}: data error: {exc}", EXIT_DATA
    if isinstance(exc, StoreUnavailable):
        return f"featurestore {command}: {exc}", EXIT_IOERR
    if isinstance(exc, ServiceError):  # e.g. request_id_conflict from the store
        return f"featurestore {command}: {exc.code.value}: {exc.message}", EXIT_FAILURE
    raise TypeError(f"not a user-facing failure: {exc!r}")


if __name__ == "__main__":
    sys.exit(main())
