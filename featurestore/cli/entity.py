"""`featurestore features ENTITY_ID` and `featurestore delete ENTITY_ID`."""

from __future__ import annotations

import argparse
import sys

from featurestore.cli.common import (
    CommandError,
    chosen_features,
    common_options,
    definitions_option,
    open_event_store,
    running_cache,
)
from featurestore.config import Settings
from featurestore.exitcodes import EXIT_NOT_FOUND


def add_parser(sub: argparse._SubParsersAction) -> None:
    show = sub.add_parser(
        "features", parents=[common_options()], help="print one entity's features as JSON"
    )
    show.add_argument("entity_id")
    show.add_argument("--version", default=None, help="feature version (default FEATURE_VERSION)")
    show.add_argument("--as-of", default=None, help="epoch ms or ISO-8601 (default: now)")
    definitions_option(show)
    show.set_defaults(run=run_features)
    delete = sub.add_parser("delete", parents=[common_options()], help="delete an entity's events")
    delete.add_argument("entity_id")
    delete.set_defaults(run=run_delete)


def _check_entity(entity_id: str) -> None:
    from featurestore.validation.identifiers import identifier_problem

    if problem := identifier_problem(entity_id):
        raise CommandError(f"entity_id {problem}")


def _as_of(text: str | None) -> int:
    from featurestore.timestamps import TimestampError, now_ms, parse_timestamp

    now = now_ms()
    if text is None:
        return now
    try:
        as_of = parse_timestamp(int(text) if text.isdigit() else text)
    except TimestampError as exc:
        raise CommandError(f"--as-of: {exc}") from None
    if as_of > now:
        raise CommandError("--as-of is later than now")
    return as_of


def run_features(args: argparse.Namespace, settings: Settings) -> int:
    import numpy as np
    import orjson

    from featurestore.features.engine import compute
    from featurestore.features.vectors import VectorView

    _check_entity(args.entity_id)
    as_of = _as_of(args.as_of)
    store = open_event_store(settings)
    try:
        features = chosen_features(args, settings, store)
        batch = store.read([args.entity_id])
        matrix = compute(batch, np.zeros(1, dtype=np.int64), as_of, features, store.label_names())
    finally:
        store.close()
    if not matrix.found[0]:
        print(
            orjson.dumps(
                {
                    "error": "entity_not_found",
                    "message": f"no events for {args.entity_id!r} at or before {as_of}",
                }
            ).decode(),
            file=sys.stderr,
        )
        return EXIT_NOT_FOUND
    body = {
        "entity_id": args.entity_id,
        "features": VectorView(features).to_dict(matrix.values[0]),
        "version": features.version,
        "timestamp": as_of,
    }
    print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    return 0


def run_delete(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    _check_entity(args.entity_id)
    store = open_event_store(settings)
    try:
        deleted = store.delete(args.entity_id)
    finally:
        store.close()
    with running_cache(settings) as invalidate:
        invalidate([args.entity_id])
    print(orjson.dumps({"entity_id": args.entity_id, "deleted_events": deleted}).decode())
    return 0
