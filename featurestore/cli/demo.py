"""`featurestore demo [--entities N] [--seed S] [--end T]`: fill the store with demo data."""

from __future__ import annotations

import argparse

from featurestore.cli.common import (
    CommandError,
    common_options,
    open_event_store,
    progress_bar,
    running_cache,
)
from featurestore.config import Settings
from featurestore.ops.permissions import private_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "demo",
        parents=[common_options()],
        help="write a realistic synthetic data set into the store",
    )
    parser.add_argument("--entities", type=int, default=10_000, help="number of entities")
    parser.add_argument("--seed", type=int, default=42, help="random seed (deterministic)")
    parser.add_argument(
        "--end",
        default=None,
        help="last event time, epoch ms or ISO-8601 (default: now, floored to the hour)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.demo import ENTITY_LIST, MEAN_EVENTS, default_end_ms, write_demo
    from featurestore.timestamps import TimestampError, format_iso, now_ms, parse_timestamp

    if args.entities < 1:
        raise CommandError("--entities must be at least 1")
    try:
        end_ms = (
            default_end_ms(now_ms())
            if args.end is None
            else parse_timestamp(int(args.end) if args.end.isdigit() else args.end)
        )
    except TimestampError as exc:
        raise CommandError(f"--end: {exc}") from None
    data_dir = private_dir(settings.data_dir)  # for the entity list (a PostgreSQL store too)
    store = open_event_store(settings)
    try:
        with (
            running_cache(settings) as invalidate,
            progress_bar(args.entities * MEAN_EVENTS, "events", "demo") as advance,
        ):
            summary = write_demo(
                store,
                data_dir,
                entities=args.entities,
                seed=args.seed,
                end_ms=end_ms,
                progress=advance,
                on_commit=invalidate,
            )
    finally:
        store.close()
    print(
        f"demo: {summary.entities} entities, {summary.accepted} new events "
        f"({summary.events} generated) up to {format_iso(summary.end_ms)}, "
        f"{summary.categories} categories; ids in {data_dir / ENTITY_LIST}"
    )
    return 0
