"""`featurestore generate ROWS --output OUT`: point-in-time correct training data."""

from __future__ import annotations

import argparse

from featurestore.cli.common import CommandError, common_options, open_event_store, progress_bar
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        parents=[common_options()],
        help="one feature vector per (entity_id, timestamp) row, each as of its own timestamp",
    )
    parser.add_argument("rows", help="a .csv, .parquet or .jsonl file of entity_id, timestamp")
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        help="output file; .parquet, .csv, .jsonl or .json (an array of row objects)",
    )
    parser.add_argument("--version", default=None, help="feature version (default FEATURE_VERSION)")
    parser.add_argument("--features", default="", help="comma-separated names (default all)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.compute import generate_file, select_features
    from featurestore.offline.files import FileError, count_rows, output_format

    version = args.version or settings.feature_version
    if version not in settings.versions:
        raise CommandError(f"unknown version {version!r}; valid: {', '.join(settings.versions)}")
    requested = [n.strip() for n in args.features.split(",") if n.strip()]
    try:
        names = select_features(version, requested)
    except KeyError as exc:
        raise CommandError(f"unknown feature(s) {exc.args[0]} in {version}") from None
    try:
        output_format(args.output)
        total = count_rows(args.rows)
        store = open_event_store(settings)
        try:
            with progress_bar(total, "rows", "generate") as advance:
                summary = generate_file(
                    store, args.rows, args.output, version=version, names=names, progress=advance
                )
        finally:
            store.close()
    except (FileError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    rate = summary.rows / summary.seconds if summary.seconds else float("inf")
    print(
        f"generate: {summary.rows} rows ({summary.found} with data) -> {args.output} "
        f"in {summary.seconds:.2f} s ({rate:,.0f} rows/s)"
    )
    return 0
