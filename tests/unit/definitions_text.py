"""Writing definitions files (DEFINITIONS.md's TOML) from plain data, for the tests.

A tiny TOML writer for exactly the shapes a definitions file has: a `[fields.NAME]` table per
field and an array of `[[versions.NAME.features]]` tables per version, whose values are
strings, integers, floats, booleans, arrays and inline tables (`where`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _number(value: int | float) -> str:
    if isinstance(value, int) or math.isfinite(value):
        return repr(value)
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def toml_key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else json.dumps(key, ensure_ascii=False)


def render(
    fields: Mapping[str, Mapping[str, object]],
    versions: Mapping[str, list[Mapping[str, object]]],
    version_descriptions: Mapping[str, str] | None = None,
) -> str:
    """A definitions file: `fields` maps a name to its table (kind, required); `versions` maps a
    version name to its features, each a table of keys."""
    lines: list[str] = []
    for name, spec in fields.items():
        lines.append(f"[fields.{toml_key(name)}]")
        lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in spec.items())
        lines.append("")
    for version, features in versions.items():
        if version_descriptions and version in version_descriptions:
            lines.append(f"[versions.{toml_key(version)}]")
            lines.append(f"description = {toml_value(version_descriptions[version])}")
            lines.append("")
        for feature in features:
            lines.append(f"[[versions.{toml_key(version)}.features]]")
            lines.extend(f"{toml_key(k)} = {toml_value(v)}" for k, v in feature.items())
            lines.append("")
    return "\n".join(lines)
