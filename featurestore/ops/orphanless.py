"""`python -m featurestore.ops.orphanless [--signal NAME] [--user NAME] COMMAND [ARGS...]`:
run COMMAND so that it dies with the process that started it (the parent-death signal
survives execve). How `featurestore serve` starts supervisord, and the test PostgreSQL server
its `postgres` (`featurestore/ops/pgserver.py`): programs that cannot ask for the signal
themselves.

`--signal` is the signal COMMAND gets (default TERM; PostgreSQL's fast shutdown is INT).
`--user` (as root) runs COMMAND as that user: the privileges are dropped BEFORE the signal is
asked for, because the kernel clears the parent-death signal when the credentials change.
"""

from __future__ import annotations

import os
import pwd
import signal
import sys

from featurestore.exitcodes import EXIT_USAGE
from featurestore.ops.processes import PARENT_PID_VARIABLE, die_with_parent

USAGE = "usage: python -m featurestore.ops.orphanless [--signal NAME] [--user NAME] COMMAND ..."


def _options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The leading `--signal X` / `--user X` options, then the command."""
    options: dict[str, str] = {}
    rest = list(argv)
    while len(rest) >= 2 and rest[0] in ("--signal", "--user"):
        options[rest[0][2:]] = rest[1]
        rest = rest[2:]
    if rest[:1] == ["--"]:
        rest = rest[1:]
    return options, rest


def become(user: str) -> None:
    """Run as `user` from now on (its uid, its group, no supplementary groups)."""
    entry = pwd.getpwnam(user)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = os.environ["LOGNAME"] = user


def main(argv: list[str] | None = None) -> int:
    options, command = _options(sys.argv[1:] if argv is None else argv)
    if not command:
        print(USAGE, file=sys.stderr)
        return EXIT_USAGE
    try:
        sig = signal.Signals[f"SIG{options.get('signal', 'TERM').upper()}"]
    except KeyError:
        print(f"{USAGE}\nunknown signal {options['signal']!r}", file=sys.stderr)
        return EXIT_USAGE
    if "user" in options:
        become(options["user"])
    die_with_parent(sig)
    os.environ.pop(PARENT_PID_VARIABLE, None)  # COMMAND's own children have COMMAND as parent
    os.execvp(command[0], command)
    return EXIT_USAGE  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
