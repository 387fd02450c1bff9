"""`featurestore definitions check [FILE] | show | shipped | forget VERSION`.

- `check` validates a definitions file (default FEATURES_FILE, else the shipped one) and
  prints each version: its content hash, and per feature its kind, type and compiled plan;
  an invalid file is one line naming the file, version, feature and key, and EXIT_CONFIG.
- `show` prints what the running service of these settings serves (GET /features/definitions
  over ZeroMQ).
- `shipped` prints the shipped file (v1 and v2 over `value` and `category`).
- `forget` drops a recorded (served) version from the store, so that it can be served again
  with another definition; its cached vectors go with it (the cache segment is dropped) and
  its drift baselines are not restored. The service must be stopped — on a store several
  hosts share (STORE_URL), every host's: their caches are cleared by their listeners when
  they start again (the forgetting is a change of every entity in the change log).
"""

from __future__ import annotations

import argparse
import sys

from featurestore.cli.common import CommandError, common_options, open_event_store
from featurestore.config import Settings


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("definitions", help="check, show or forget feature definitions")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", parents=[common_options()], help="validate a file and print its plan"
    )
    check.add_argument("file", nargs="?", help="definitions file (default FEATURES_FILE)")
    check.set_defaults(run=run_check)
    show = actions.add_parser(
        "show", parents=[common_options()], help="what the running service serves"
    )
    show.set_defaults(run=run_show)
    shipped = actions.add_parser(
        "shipped", help="print the shipped file (v1, v2): a start for your own"
    )
    shipped.set_defaults(run=run_shipped)
    forget = actions.add_parser(
        "forget", parents=[common_options()], help="drop a served version (service stopped)"
    )
    forget.add_argument("version")
    forget.set_defaults(run=run_forget)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.definitions import load_definitions

    defs = load_definitions(args.file) if args.file else settings.definitions
    print(describe(defs))
    return 0


def describe(defs) -> str:
    """The text of `check`: the schema, then per version its hash and plan."""
    from featurestore.definitions.durations import format_duration
    from featurestore.definitions.expressions import canonical
    from featurestore.features.ops import AGGREGATION, OPS

    lines = [f"{defs.source}: valid", "fields:"]
    for f in defs.schema.fields:
        lines.append(f"  {f.name}: {f.kind}{' (required)' if f.required else ''}")
    for version, features in defs.versions.items():
        served = len(features.features)
        lines.append(
            f"version {version}: {served} features served, {len(features.all_features)} "
            f"computed, hash {features.content_hash[:16]}, windows "
            f"{', '.join(format_duration(w) for w in features.plan.windows) or 'all only'}"
        )
        for f in features.all_features:
            d = f.definition
            if d.op == "expr":
                plan = f"expr {canonical(d.expr)}"
            else:
                parts = [d.op]
                if d.field:
                    parts.append(f"field={d.field}")
                if OPS[d.op].family == AGGREGATION:
                    parts.append(f"window={format_duration(d.window_ms)}")
                parts += [f"where {c.field} {c.op} {c.value!r}" for c in d.where]
                parts += [f"{k}={v}" for k, v in d.params]
                plan = " ".join(parts)
            hidden = "" if f.serve else " [not served]"
            lines.append(f"  {f.name}: {f.kind} {f.type}{hidden} = {plan}")
    return "\n".join(lines)


def run_shipped(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.definitions import SHIPPED_FILE

    sys.stdout.write(SHIPPED_FILE.read_text(encoding="utf-8"))
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    import orjson

    from featurestore.errors import ServiceError
    from featurestore.security.curve import internal_keys
    from featurestore.wire.client import Client

    endpoint = settings.broker_frontend.split(",")[0].strip()
    try:
        with Client(endpoint, timeout_ms=2000, curve=internal_keys(settings)) as client:
            answer = client.definitions()
    except ServiceError as exc:
        raise CommandError(f"no service answers at {endpoint} ({exc})") from None
    print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
    return 0


def run_forget(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.ops import metrics_dir
    from featurestore.ops.stacklock import holder
    from featurestore.store.factory import store_name
    from shm import drop

    running = holder(settings.data_dir)
    if running is not None:
        raise CommandError(
            f"the service of {settings.data_dir} is running ({running.describe()}): stop it "
            "first, then forget, then start it again"
        )
    store = open_event_store(settings)
    try:
        connected = store.service_connections()
        if connected:
            listed = ", ".join(connected[:4]) + (", ..." if len(connected) > 4 else "")
            raise CommandError(
                f"a service is using {store_name(settings)} ({listed}): stop every host's "
                "service first, then forget, then start them again"
            )
        forgotten = store.forget_version(args.version)
    finally:
        store.close()
    if not forgotten:
        raise CommandError(f"version {args.version!r} was never served from {store_name(settings)}")
    drop(settings.cache_name)  # every cached vector goes: none is of the old definition
    metrics_dir.drop(settings.cache_name)
    print(
        f"definitions: version {args.version!r} forgotten; its cached vectors are dropped and "
        "its drift baselines will not be restored; it may now be served with a new definition"
    )
    return 0
