"""`featurestore generate ROWS --output OUT`: point-in-time correct training data, in this
process or on a Dask cluster (`--engine dask`), from the store or from an export (`--events`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING

from featurestore.cli.common import (
    CommandError,
    chosen_features,
    common_options,
    definitions_option,
    open_event_store,
    progress_bar,
)
from featurestore.config import Settings

if TYPE_CHECKING:
    from featurestore.definitions.model import FeatureSet
    from featurestore.offline.compute import EventSource, GenerateSummary

ENGINE_PROCESS = "process"
ENGINE_DASK = "dask"


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "generate",
        parents=[common_options()],
        help="one feature vector per (entity_id, timestamp) row, each as of its own timestamp",
    )
    parser.add_argument(
        "rows",
        help="a .csv, .parquet or .jsonl file of entity_id, timestamp; or a Parquet dataset "
        "(a directory, or a quoted glob such as 'rows/*.parquet')",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        help="output file (.parquet, .csv, .jsonl, or .json: an array of row objects), or a "
        "path without extension: a Parquet dataset directory",
    )
    parser.add_argument("--version", default=None, help="feature version (default FEATURE_VERSION)")
    parser.add_argument("--features", default="", help="comma-separated names (default all)")
    definitions_option(parser)
    parser.add_argument(
        "--events",
        default=None,
        metavar="DIR",
        help="read events from an export (`featurestore export events`) instead of the store",
    )
    parser.add_argument(
        "--engine",
        choices=(ENGINE_PROCESS, ENGINE_DASK),
        default=ENGINE_PROCESS,
        help="compute in this process (default) or on a Dask cluster",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="dask: an existing distributed scheduler, e.g. tcp://10.0.0.5:8786",
    )
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="dask: start a local cluster of N worker processes (default: one per core)",
    )
    parser.add_argument(
        "--buckets",
        type=int,
        default=None,
        metavar="N",
        help="dask: entity buckets, a power of two (default: from the rows and events)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.compute import select_features
    from featurestore.offline.files import FileError, output_format

    _check_engine_options(args)
    requested = [n.strip() for n in args.features.split(",") if n.strip()]
    try:
        source = _open_events(args, settings)
    except FileError as exc:
        raise CommandError(str(exc)) from None
    try:
        features = chosen_features(args, settings, source)
        try:
            names = select_features(features, requested)
        except KeyError as exc:
            raise CommandError(f"unknown feature(s) {exc.args[0]} in {features.version}") from None
        try:
            if Path(args.output).suffix:
                output_format(args.output)
            if args.engine == ENGINE_DASK:
                summary = _run_dask(args, settings, features, names, source)
            else:
                summary = _run_process(args, features, names, source)
        except (FileError, ValueError) as exc:
            raise CommandError(str(exc)) from None
    finally:
        source.close()
    rate = summary.rows / summary.seconds if summary.seconds else float("inf")
    print(
        f"generate: {summary.rows} rows ({summary.found} with data) -> {args.output} "
        f"in {summary.seconds:.2f} s ({rate:,.0f} rows/s)"
    )
    return 0


def _check_engine_options(args: argparse.Namespace) -> None:
    if args.engine != ENGINE_DASK:
        for option in ("scheduler", "workers", "buckets"):
            if getattr(args, option) is not None:
                raise CommandError(f"--{option} needs --engine dask")
    if args.workers is not None and args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if args.buckets is not None:
        from featurestore.offline.buckets import check_bucket_count

        try:
            check_bucket_count(args.buckets)
        except ValueError as exc:
            raise CommandError(f"--buckets: {exc}") from None


def _open_events(args: argparse.Namespace, settings: Settings) -> EventSource:
    """The event source: the export given by --events (whose fields must serve the served
    definitions; a --definitions file is checked by `chosen_features`), else the store."""
    if args.events is None:
        return open_event_store(settings)
    from featurestore.offline.export import ExportedEvents
    from featurestore.store.layout import check_readable

    exported = ExportedEvents(args.events)
    if not args.definitions:
        defs = settings.definitions
        check_readable(exported.layout, defs.schema, defs.source)
    return exported


def _total_rows(rows: str) -> int | None:
    from featurestore.offline.files import file_format
    from featurestore.offline.rowsource import parquet_rows, row_files

    files = row_files(rows)
    if all(f.exists() and file_format(f) == "parquet" for f in files):
        return sum(parquet_rows(f) for f in files)
    return None


def _run_process(
    args: argparse.Namespace, features: FeatureSet, names: list[str], source: EventSource
) -> GenerateSummary:
    from featurestore.offline.compute import generate_file

    total = _total_rows(args.rows)
    with progress_bar(total, "rows", "generate") as advance:
        return generate_file(
            source, args.rows, args.output, version=features, names=names, progress=advance
        )


def _run_dask(
    args: argparse.Namespace,
    settings: Settings,
    features: FeatureSet,
    names: list[str],
    source: EventSource,
) -> GenerateSummary:
    try:
        from featurestore.offline.cluster import ClusterError, dask_client
        from featurestore.offline.dask_generate import generate_dask
        from featurestore.offline.dask_tasks import ExportEvents, StoreEvents
    except ImportError as exc:
        raise CommandError(
            f"--engine dask needs Dask ({exc.name} is missing): "
            "python3 -m pip install 'featurestore[dask]'"
        ) from None
    total = _total_rows(args.rows)
    if args.events is not None:
        events = ExportEvents(str(Path(args.events).resolve()))
    else:
        events = StoreEvents(_absolute_paths(settings))
    try:
        with (
            dask_client(args.scheduler, args.workers or os.cpu_count() or 1) as client,
            progress_bar(total, "rows", "generate (dask)") as advance,
        ):
            return generate_dask(
                client,
                events,
                source.counts()["events"],
                args.rows,
                args.output,
                version=features,
                names=names,
                buckets=args.buckets,
                progress=advance,
            )
    except ClusterError as exc:
        raise CommandError(str(exc)) from None


def _absolute_paths(settings: Settings) -> Settings:
    """The settings with DATA_DIR and FEATURES_FILE absolute: workers may run elsewhere."""
    data_dir = str(Path(settings.data_dir).resolve())
    features_file = settings.features_file and str(Path(settings.features_file).resolve())
    return dataclasses.replace(settings, data_dir=data_dir, features_file=features_file)
