"""Process identity from /proc: a pid with its start time names one process, never a later
one that reused the pid (counter slots of dead cache users, stack records, orphans)."""

from __future__ import annotations


def process_start_ticks(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot, None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
