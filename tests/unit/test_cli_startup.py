"""The command line starts fast: building the parser (what `featurestore --help` and every
command's `--help` do) loads none of the heavy modules; each command imports them in `run`.

Not a timed test: what is measured is which modules are loaded, in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("pandas", "numpy", "pyarrow", "zmq", "sanic", "psutil", "dask", "distributed")
TIMEOUT_S = 60

PARSER_ONLY = f"""
import featurestore.cli, sys
featurestore.cli.build_parser()
print(sorted(m for m in {HEAVY!r} if m in sys.modules))
"""

# Every command's (and sub-action's) --help, parsed through the real parser in one process.
EVERY_HELP = f"""
import argparse, contextlib, io, json, sys
import featurestore.cli

def children(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()

parser = featurestore.cli.build_parser()
commands = [[]]
for name, sub in children(parser):
    commands.append([name])
    commands.extend([name, child] for child, _ in children(sub))
for args in commands:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args([*args, "--help"])
print(json.dumps({{
    "commands": [" ".join(a) for a in commands],
    "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules),
}}))
"""


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_building_the_parser_imports_no_heavy_module() -> None:
    assert _run(PARSER_ONLY) == "[]"


def test_every_command_help_imports_no_heavy_module() -> None:
    result = json.loads(_run(EVERY_HELP))
    assert {
        "",
        "generate",
        "serve",
        "bench stress",
        "keys generate",
        "cache drop",
        "export events",
    } <= set(result["commands"])
    assert result["heavy"] == []
