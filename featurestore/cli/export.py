"""`featurestore export events --output DIR`: the store's events as a Parquet dataset
partitioned by entity bucket, for `generate --events DIR` where the store is out of reach."""

from __future__ import annotations

import argparse

from featurestore.cli.common import CommandError, common_options, open_event_store, progress_bar
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="copy data out of the store")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    events = actions.add_parser(
        "events",
        parents=[common_options()],
        help="every event, as a Parquet dataset partitioned by entity bucket",
    )
    events.add_argument("--output", "-o", required=True, metavar="DIR", help="output directory")
    events.add_argument(
        "--buckets",
        type=int,
        default=None,
        metavar="N",
        help="partitions, a power of two (default: one per million events)",
    )
    events.set_defaults(run=run_events)


def run_events(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.offline.export import write_export
    from featurestore.offline.files import FileError

    store = open_event_store(settings)
    try:
        total = store.counts()["events"]
        with progress_bar(total, "events", "export") as advance:
            summary = write_export(store, args.output, buckets=args.buckets, progress=advance)
    except (FileError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.close()
    print(
        f"export: {summary.events} events of {summary.entities} entities -> {args.output} "
        f"({summary.buckets} buckets) in {summary.seconds:.2f} s"
    )
    return 0
