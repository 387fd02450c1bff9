"""`featurestore generate ROWS --output OUT`: point-in-time correct training data."""

from __future__ import annotations

import argparse

from featurestore.cli.common import (
    CommandError,
    chosen_features,
    common_options,
    definitions_option,
    open_event_store,
    progress_bar,
)
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
    definitions_option(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.compute import generate_file, select_features
    from featurestore.offline.files import FileError, count_rows, output_format

    requested = [n.strip() for n in args.features.split(",") if n.strip()]
    store = open_event_store(settings)
    try:
        features = chosen_features(args, settings, store)
        try:
            names = select_features(features, requested)
        except KeyError as exc:
            raise CommandError(f"unknown feature(s) {exc.args[0]} in {features.version}") from None
        try:
            output_format(args.output)
            total = count_rows(args.rows)
            with progress_bar(total, "rows", "generate") as advance:
                summary = generate_file(
                    store, args.rows, args.output, version=features, names=names, progress=advance
                )
        except (FileError, ValueError) as exc:
            raise CommandError(str(exc)) from None
    finally:
        store.close()
    rate = summary.rows / summary.seconds if summary.seconds else float("inf")
    print(
        f"generate: {summary.rows} rows ({summary.found} with data) -> {args.output} "
        f"in {summary.seconds:.2f} s ({rate:,.0f} rows/s)"
    )
    return 0
