"""Feature definitions as data (SPEC §14): the event schema, and per version its features.

`load_definitions(path)` / `parse_definitions(text)` read and validate a file (one
`DefinitionsError` naming the place at fault); `shipped_definitions()` is the file shipped in
the package (v1 and v2 of §4). Format: DEFINITIONS.md.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from featurestore.definitions.loader import DefinitionsError, load_definitions, parse_definitions
from featurestore.definitions.model import FeatureDefinitions, FeatureSet

SHIPPED_FILE = Path(__file__).with_name("shipped.toml")

__all__ = [
    "SHIPPED_FILE",
    "DefinitionsError",
    "FeatureDefinitions",
    "FeatureSet",
    "definitions_of",
    "load_definitions",
    "parse_definitions",
    "shipped_definitions",
]


@lru_cache(maxsize=1)
def shipped_definitions() -> FeatureDefinitions:
    return load_definitions(SHIPPED_FILE)


@lru_cache(maxsize=8)
def _load_once(path: str) -> FeatureDefinitions:
    return load_definitions(path)


def definitions_of(settings) -> FeatureDefinitions:
    """The definitions a process with these settings serves: FEATURES_FILE (the shipped file
    when empty), read and validated once per process; `DefinitionsError` (a ConfigError, so
    entry points exit with EXIT_CONFIG) for an invalid file or a FEATURE_VERSION it lacks."""
    if not settings.features_file:
        defs = shipped_definitions()
    else:
        try:
            defs = _load_once(settings.features_file)
        except DefinitionsError as exc:
            raise DefinitionsError(f"FEATURES_FILE: {exc}") from None
    if settings.feature_version and settings.feature_version not in defs.versions:
        raise DefinitionsError(
            f"FEATURE_VERSION: {settings.feature_version!r} is not a version of {defs.source} "
            f"(versions: {', '.join(defs.versions)})"
        )
    return defs
