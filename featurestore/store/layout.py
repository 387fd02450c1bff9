"""The record layout of a store: its event fields, in the order it first saw them.

A store records its fields (name, kind, required) when it is first opened with a schema and
appends a field the definitions add later (SPEC §14: adding an optional field is allowed,
older events lack it). A stored segment says how many of the fields it was written with, so
an older segment is widened on read (NaN / NO_LABEL for the fields it predates) and rewritten
in the current layout by compaction. `reconcile` decides what a schema may change.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from featurestore.definitions.model import NUMERIC, EventSchema
from featurestore.store.batch import NO_LABEL, record_dtype
from featurestore.store.errors import SchemaMismatch


@dataclass(frozen=True)
class StoredField:
    name: str
    kind: str
    required: bool


@dataclass(frozen=True)
class RecordLayout:
    fields: tuple[StoredField, ...]

    @cached_property
    def dtype(self) -> np.dtype:
        return self.dtype_of(len(self.fields))

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    def dtype_of(self, n_fields: int) -> np.dtype:
        return record_dtype([(f.name, f.kind) for f in self.fields[:n_fields]])

    @property
    def numeric(self) -> list[str]:
        return [f.name for f in self.fields if f.kind == NUMERIC]

    @property
    def categorical(self) -> list[str]:
        return [f.name for f in self.fields if f.kind != NUMERIC]

    def records(self, blob: bytes, n_fields: int) -> np.ndarray:
        """A segment's records in the current layout (widened if written with fewer fields)."""
        if n_fields == self.n_fields:
            return np.frombuffer(blob, dtype=self.dtype)
        old = np.frombuffer(blob, dtype=self.dtype_of(n_fields))
        out = np.empty(old.size, dtype=self.dtype)
        for f in self.fields[n_fields:]:
            out[f.name] = np.nan if f.kind == NUMERIC else NO_LABEL
        for name in old.dtype.names:
            out[name] = old[name]
        return out


def reconcile(stored: tuple[StoredField, ...], schema: EventSchema, source: str) -> RecordLayout:
    """The layout for serving `schema` on a store holding `stored` fields; SchemaMismatch
    naming the field when the schema would make stored events unreadable or wrong."""
    if not stored:
        return RecordLayout(tuple(StoredField(f.name, f.kind, f.required) for f in schema.fields))
    declared = schema.by_name
    fields = []
    for old in stored:
        new = declared.get(old.name)
        if new is None:
            raise SchemaMismatch(
                f"{source}: field {old.name!r} is in the store but not declared: removing a "
                "field is refused (declare it again, optional if you like)"
            )
        if new.kind != old.kind:
            raise SchemaMismatch(
                f"{source}: field {old.name!r} is {old.kind} in the store, declared {new.kind}: "
                "changing a field's kind is refused (declare a new field)"
            )
        if new.required and not old.required:
            raise SchemaMismatch(
                f"{source}: field {old.name!r} is optional in the store, declared required: "
                "stored events may lack it"
            )
        fields.append(StoredField(old.name, old.kind, new.required))
    known = {f.name for f in stored}
    for new in schema.fields:
        if new.name in known:
            continue
        if new.required:
            raise SchemaMismatch(
                f"{source}: field {new.name!r} is new and declared required: stored events "
                "lack it; declare it optional"
            )
        fields.append(StoredField(new.name, new.kind, False))
    return RecordLayout(tuple(fields))


def check_readable(layout: RecordLayout, schema: EventSchema, source: str) -> None:
    """A schema tried on a store without serving it (`--definitions FILE`): every field it
    shares with the store has the store's kind, and a field it declares required is required
    in the store (events lacking it would otherwise be read as values). Fields the store
    lacks are missing in every event; the store is not changed."""
    stored = {f.name: f for f in layout.fields}
    for new in schema.fields:
        old = stored.get(new.name)
        if old is not None and old.kind != new.kind:
            raise SchemaMismatch(
                f"{source}: field {new.name!r} is {new.kind}, the store holds it as {old.kind}"
            )
        if new.required and (old is None or not old.required):
            raise SchemaMismatch(
                f"{source}: field {new.name!r} is declared required, but stored events may lack "
                "it; declare it optional"
            )
