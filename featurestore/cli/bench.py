"""`featurestore bench stress`: 30 s of mixed load against the running service."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from urllib.parse import urlparse

from featurestore.cli.common import CommandError, common_options
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="benchmarks against a running service")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    stress = kinds.add_parser(
        "stress",
        parents=[common_options()],
        help="mixed load: gets, batches, historical, ingest, stats, drift",
    )
    stress.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    stress.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    stress.add_argument("--url", default=None, help="gateway URL (default http://HOST:PORT)")
    stress.add_argument("--output", default=None, help="also write the result as JSON here")
    stress.add_argument(
        "--token", default=None, help="a write bearer token, when API_TOKENS_FILE is set"
    )
    stress.set_defaults(run=run_stress_command)


def entity_ids(settings: Settings) -> list[str]:
    import pandas as pd

    from featurestore.offline.demo import ENTITY_LIST

    listing = Path(settings.data_dir) / ENTITY_LIST
    if not listing.exists():
        raise CommandError(f"{listing} not found: run `featurestore serve --demo` first")
    frame = pd.read_csv(listing)
    ids = frame.loc[frame["n_events"] > 0, "entity_id"].astype(str).tolist()
    if not ids:
        raise CommandError(f"{listing} lists no entity with events")
    return ids


def run_stress_command(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from featurestore.ops.stress import report_lines, run_stress

    url = urlparse(args.url or f"http://{settings.host}:{settings.port}")
    host = url.hostname or "127.0.0.1"
    host = "127.0.0.1" if host == "0.0.0.0" else host
    result = asyncio.run(
        run_stress(
            host,
            url.port or 80,
            entity_ids(settings),
            duration_s=args.duration,
            concurrency=args.concurrency,
            token=args.token,
        )
    )
    print("\n".join(report_lines(result)))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["errors"] == 0 else 1
