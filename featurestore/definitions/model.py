"""Feature definitions as data: the event schema, and per version its features in order.

These are the validated, normalised values the loader (`loader.py`) builds from a file; the
engine (`featurestore/features/`) compiles each `FeatureSet` into a plan once. Nothing here
computes: an op's meaning is `featurestore/features/ops.py`, its documentation DEFINITIONS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import cached_property
from typing import Any

import numpy as np

# Feature kinds and types.
NUMERIC = "numeric"
CATEGORICAL = "categorical"
IDENTIFIER = "identifier"
KINDS = (NUMERIC, CATEGORICAL, IDENTIFIER)
MONITORED_KINDS = (NUMERIC, CATEGORICAL)
INT = "int"
FLOAT = "float"
TYPES = (INT, FLOAT)

# Field kinds: a numeric field is a finite float (NaN inside = missing), a categorical one an
# optional string stored as a label (NO_LABEL = missing).
FIELD_KINDS = (NUMERIC, CATEGORICAL)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # NUMERIC or CATEGORICAL
    required: bool = False


@dataclass(frozen=True)
class EventSchema:
    """The fields every event may carry besides entity_id, timestamp and event_id."""

    fields: tuple[FieldSpec, ...]

    @cached_property
    def by_name(self) -> dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == NUMERIC]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == CATEGORICAL]

    @property
    def required(self) -> list[str]:
        return [f.name for f in self.fields if f.required]


def schema_or_shipped(schema: EventSchema | None) -> EventSchema:
    """`schema`, or when None the shipped file's (`value`, `category`): the default of every
    reader, store and check of events."""
    if schema is not None:
        return schema
    from featurestore.definitions import shipped_definitions  # the package imports this module

    return shipped_definitions().schema


@dataclass(frozen=True)
class Condition:
    """One `where` test on a field: `op` is eq, ne, in, not_in (categorical; `value` a tuple
    of names for in/not_in) or eq, ne, gt, ge, lt, le (numeric)."""

    field: str
    op: str
    value: Any


@dataclass(frozen=True)
class Definition:
    """What a feature computes. `op` names an entry of the op table, or "expr" with `expr`.

    `window_ms` None is the whole history ("all"); `where` is a conjunction; `params` holds
    the op's own keys (q, half_life_ms, unit_ms, hours, buckets) in canonical form."""

    op: str
    field: str | None = None
    window_ms: int | None = None
    where: tuple[Condition, ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    expr: Any = None  # an expressions.Node for op == "expr"
    # False when `field` is required: no event lacks it, so there is nothing to skip. Follows
    # from the schema, not from the feature: not part of the content hash.
    skip_missing: bool = dc_field(default=True, compare=False)

    def param(self, name: str, default: Any = None) -> Any:
        return dict(self.params).get(name, default)


@dataclass(frozen=True)
class Feature:
    name: str
    kind: str
    type: str
    description: str
    definition: Definition
    serve: bool = True
    source: dict = dc_field(default_factory=dict, compare=False)  # the file's table, normalised


@dataclass(frozen=True, eq=False)  # identity: a loaded version is one object (cache keys)
class FeatureSet:
    """One version: every feature in file order (`all_features`, served or not) and the
    served ones (`features`: the vector, the cache row, the API's order)."""

    version: str
    all_features: tuple[Feature, ...]
    description: str = ""
    content_hash: str = ""

    @cached_property
    def features(self) -> tuple[Feature, ...]:
        return tuple(f for f in self.all_features if f.serve)

    @cached_property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def _positions(self) -> dict[str, int]:
        return {f.name: i for i, f in enumerate(self.features)}

    def index_of(self, names: list[str]) -> np.ndarray:
        return np.array([self._positions[n] for n in names], dtype=np.int64)

    @cached_property
    def int_mask(self) -> np.ndarray:
        return np.array([f.type == INT for f in self.features], dtype=bool)

    def unknown(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self._positions]

    @cached_property
    def plan(self) -> Any:
        """The compiled plan of the engine (built once, on first use)."""
        from featurestore.features.plan import compile_plan

        return compile_plan(self)


@dataclass(frozen=True, eq=False)
class FeatureDefinitions:
    """A whole definitions file: where it came from, the event schema, the versions in order."""

    source: str
    schema: EventSchema
    versions: dict[str, FeatureSet]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.versions)

    @cached_property
    def width(self) -> int:
        """The widest served vector: the cache's row width."""
        return max(len(fs.features) for fs in self.versions.values())
