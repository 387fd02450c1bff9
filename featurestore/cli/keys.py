"""`featurestore keys generate` (ZeroMQ CURVE keys) and `featurestore keys token` (HTTP tokens).

    featurestore keys generate [--dir DIR] [--force]      # server, internal, clients/client
    featurestore keys generate --client NAME [--dir DIR]  # one more authorised client
    featurestore keys token --scope read|write --name NAME [--file FILE]

`generate` writes into DIR (default $ZMQ_CURVE_KEYS_DIR) the layout of
featurestore/security/curve.py:
directories 0700, secret files 0600; existing keys are kept unless --force. `token` prints a
new random token once on stdout and appends only its SHA-256 to FILE (default
$API_TOKENS_FILE).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featurestore.cli.common import CommandError
from featurestore.config import Settings
from featurestore.exitcodes import EXIT_CONFIG
from featurestore.security.tokens import Scope, TokenFileError, add_token

PLACEMENT = """\
Where the files go (copy them keeping the layout, e.g. with rsync -a):
  every host that runs the stack: the whole directory, ZMQ_CURVE_KEYS_DIR set to it
  a ZeroMQ client's (or report subscriber's) host: server.key and clients/NAME.key_secret,
    passed explicitly: Client(endpoint, curve=load_client_keys(DIR, NAME));
    then delete clients/NAME.key_secret here: the stack needs only clients/NAME.key"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("keys", help="make CURVE keys and HTTP bearer tokens")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    generate = actions.add_parser(
        "generate", help="make the stack's ZeroMQ CURVE keys (or one more client's)"
    )
    generate.add_argument("--dir", default=None, help="key directory (default ZMQ_CURVE_KEYS_DIR)")
    generate.add_argument("--client", default=None, metavar="NAME", help="only a client pair")
    generate.add_argument("--force", action="store_true", help="replace existing keys")
    generate.set_defaults(run=run_generate)
    token = actions.add_parser("token", help="make an HTTP bearer token; prints it once")
    token.add_argument("--scope", required=True, choices=[s.value for s in Scope])
    token.add_argument("--name", required=True, help="who holds it (unique in the file)")
    token.add_argument("--file", default=None, help="tokens file (default API_TOKENS_FILE)")
    token.set_defaults(run=run_token)


def _target(given: str | None, setting: str, variable: str, option: str) -> Path:
    chosen = given or setting
    if not chosen:
        raise CommandError(f"give {option} or set {variable}", EXIT_CONFIG)
    return Path(chosen).expanduser()


def run_generate(args: argparse.Namespace, settings: Settings) -> int:
    from featurestore.security import curve  # ZeroMQ: only for this action

    directory = _target(args.dir, settings.zmq_curve_keys_dir, "ZMQ_CURVE_KEYS_DIR", "--dir")
    try:
        if args.client is None:
            written = curve.generate_keys(directory, force=args.force)
        else:
            written = curve.add_client(directory, args.client, force=args.force)
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {directory}: {exc.strerror or exc}") from None
    for path in written:
        print(path)
    if args.client is None:
        print(PLACEMENT)
    else:
        print(
            f"client {args.client!r} is authorised (the broker reads clients/ again by itself); "
            f"give it server.key and clients/{args.client}.key_secret"
        )
    return 0


def run_token(args: argparse.Namespace, settings: Settings) -> int:
    path = _target(args.file, settings.api_tokens_file, "API_TOKENS_FILE", "--file")
    try:
        token = add_token(path, args.name, Scope(args.scope))
    except TokenFileError:
        raise  # the file is malformed: a configuration error (EXIT_CONFIG)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(token)
    print(
        f"{args.scope} token {args.name!r} added to {path} (only its SHA-256 is kept: "
        "store the token now). Restart the gateway to use it.",
        file=sys.stderr,
    )
    return 0
