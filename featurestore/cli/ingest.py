"""`featurestore ingest FILE`: load a CSV, Parquet or JSON Lines event file."""

from __future__ import annotations

import argparse
import time

from featurestore.cli.common import (
    CommandError,
    common_options,
    open_event_store,
    progress_bar,
    running_cache,
)
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ingest",
        parents=[common_options()],
        help="load events from a file: entity_id, timestamp, value[, category][, event_id]",
    )
    parser.add_argument("file", help="a .csv, .parquet or .jsonl file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.files import FileError, count_rows
    from featurestore.offline.ingest_file import ingest_file

    started = time.perf_counter()
    store = open_event_store(settings)
    try:
        total = count_rows(args.file)
        with (
            running_cache(settings) as invalidate,
            progress_bar(total, "events", "ingest") as advance,
        ):
            summary = ingest_file(
                store,
                args.file,
                settings.max_event_future_ms,
                progress=advance,
                on_commit=invalidate,
                schema=settings.definitions.schema,
            )
    except FileError as exc:
        raise CommandError(f"{exc} (nothing was stored)") from None
    finally:
        store.close()
    seconds = time.perf_counter() - started
    print(
        f"ingest: {summary.rows} rows, {summary.accepted} stored, "
        f"{summary.duplicates} duplicates, {summary.entities} entities "
        f"in {seconds:.2f} s ({summary.rows / seconds:,.0f} events/s)"
    )
    return 0
