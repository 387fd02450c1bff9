"""The one rule for identifiers (entity ids, categories, event ids) and event values (SPEC §3):
1-256 UTF-8 bytes, no control character U+0000-U+001F, no lone surrogate; a value is a finite
number and never a boolean."""

from __future__ import annotations

import math
import re
from typing import Any

MAX_ID_BYTES = 256
CONTROL_PATTERN = "[\x00-\x1f]"
_CONTROL = re.compile(CONTROL_PATTERN)


def identifier_problem(value: Any, *, min_bytes: int = 1) -> str | None:
    """Why `value` is not a valid identifier string (entity id, category, event id), or None."""
    if not isinstance(value, str):
        return "must be a string"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "contains a lone surrogate"
    if not min_bytes <= size <= MAX_ID_BYTES:
        return f"must be {min_bytes}-{MAX_ID_BYTES} UTF-8 bytes"
    if _CONTROL.search(value):
        return "contains a control character (U+0000-U+001F)"
    return None


def value_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be finite"
    if isinstance(value, int) and abs(value) > 2**1023:
        return "must be finite"
    return None
