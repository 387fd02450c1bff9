"""The feature registry: the versions a process serves and what `GET /features/definitions`
says of them.

Features are data (`featurestore/definitions/`): a process loads its definitions file once at
start. `REGISTRY` and `feature_set` are the versions of the shipped file (v1 and v2 of SPEC §4),
for tools and tests that need no file of their own.
"""

from __future__ import annotations

from featurestore.definitions import shipped_definitions
from featurestore.definitions.model import (
    CATEGORICAL,
    FLOAT,
    IDENTIFIER,
    INT,
    MONITORED_KINDS,
    NUMERIC,
    Feature,
    FeatureDefinitions,
    FeatureSet,
)
from featurestore.wire.messages import Definitions, FeatureDefinition

__all__ = [
    "CATEGORICAL",
    "FLOAT",
    "IDENTIFIER",
    "INT",
    "MONITORED_KINDS",
    "NUMERIC",
    "REGISTRY",
    "Feature",
    "FeatureSet",
    "definitions",
    "feature_set",
]

REGISTRY: dict[str, FeatureSet] = shipped_definitions().versions


def feature_set(version: str) -> FeatureSet:
    """A version of the shipped file; KeyError for an unknown one."""
    return REGISTRY[version]


def definitions(defs: FeatureDefinitions, versions: tuple[str, ...]) -> Definitions:
    """The answer of GET /features/definitions: each served version's hash and features."""
    return Definitions(
        list(versions),
        {
            v: [
                FeatureDefinition(f.name, f.kind, f.type, f.description, f.source)
                for f in defs.versions[v].features
            ]
            for v in versions
        },
        {v: defs.versions[v].content_hash for v in versions},
    )
