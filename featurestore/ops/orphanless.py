"""`python -m featurestore.ops.orphanless COMMAND [ARGS...]`: run COMMAND so that it dies with
the process that started it (the parent-death signal survives execve). How `featurestore
serve` starts supervisord, a program that cannot ask for the signal itself."""

from __future__ import annotations

import os
import sys

from featurestore.exitcodes import EXIT_USAGE
from featurestore.ops.processes import PARENT_PID_VARIABLE, die_with_parent


def main(argv: list[str] | None = None) -> int:
    command = sys.argv[1:] if argv is None else argv
    if not command:
        print("usage: python -m featurestore.ops.orphanless COMMAND [ARGS...]", file=sys.stderr)
        return EXIT_USAGE
    die_with_parent()
    os.environ.pop(PARENT_PID_VARIABLE, None)  # COMMAND's own children have COMMAND as parent
    os.execvp(command[0], command)
    return EXIT_USAGE  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(main())
