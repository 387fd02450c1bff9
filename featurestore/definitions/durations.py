"""Durations of the definitions file: windows, half-lives and time units ("90m", "12h", "7d")."""

from __future__ import annotations

import re

UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
MAX_DURATION_MS = 100 * 366 * UNIT_MS["d"]  # a century: beyond any history, far from overflow
ALL = "all"
_DURATION = re.compile(r"([0-9]{1,15})(ms|s|m|h|d|w)")


def parse_duration(text: object) -> int:
    """Milliseconds of a positive duration `<integer><unit>`; ValueError with the reason."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as 90m, 12h, 7d, got {_shown(text)}")
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a duration such as 90m, 12h, 7d (units {', '.join(UNIT_MS)})")
    ms = int(match.group(1)) * UNIT_MS[match.group(2)]
    if not 1 <= ms <= MAX_DURATION_MS:
        raise ValueError("a duration must be positive and at most 100 years")
    return ms


def parse_window(text: object) -> int | None:
    """None for "all", else the window's length in ms."""
    if text == ALL:
        return None
    try:
        return parse_duration(text)
    except ValueError:
        raise ValueError('expected "all" or a duration such as 90m, 12h, 7d') from None


def format_duration(ms: int | None) -> str:
    """The canonical spelling: the largest unit up to days that divides it ("all" for None)."""
    if ms is None:
        return ALL
    for unit in ("d", "h", "m", "s"):
        if ms % UNIT_MS[unit] == 0:
            return f"{ms // UNIT_MS[unit]}{unit}"
    return f"{ms}ms"


def parse_unit(text: object) -> int:
    """Milliseconds of one unit name (ms, s, m, h, d, w)."""
    if not isinstance(text, str) or text not in UNIT_MS:
        raise ValueError(f"expected one of {', '.join(UNIT_MS)}, got {_shown(text)}")
    return UNIT_MS[text]


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
