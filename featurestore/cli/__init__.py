"""`featurestore`: the command line. One module per command, each with `add_parser` and `run`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from featurestore.cli import bench, cache, demo, entity, generate, ingest, keys, serve
from featurestore.cli.common import CommandError, load_settings
from featurestore.config import ConfigError
from featurestore.exitcodes import EXIT_CONFIG, EXIT_USAGE

COMMANDS = (demo, ingest, generate, entity, serve, cache, keys, bench)


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
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args)
        return int(args.run(args, settings) or 0)
    except ConfigError as exc:
        print(f"featurestore: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CommandError as exc:
        print(f"featurestore {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("featurestore: interrupted", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
