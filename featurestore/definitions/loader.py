"""Reading a definitions file: TOML -> validated, normalised `FeatureDefinitions`.

Every fault is one `DefinitionsError` naming the file, the version, the feature and the key
(`x.toml: version 'pay1', feature 'food_7d', window: expected ...`); nothing else escapes,
whatever the input. The format: DEFINITIONS.md; the ops it accepts: featurestore/features/ops.py.
"""

from __future__ import annotations

import math
import re
import tomllib
from pathlib import Path
from typing import Any

from featurestore.config import ConfigError
from featurestore.definitions.canonical import content_hash
from featurestore.definitions.durations import (
    format_duration,
    parse_duration,
    parse_unit,
    parse_window,
)
from featurestore.definitions.expressions import ExpressionError, parse_expression, references
from featurestore.definitions.model import (
    CATEGORICAL,
    FIELD_KINDS,
    KINDS,
    NUMERIC,
    TYPES,
    Condition,
    Definition,
    EventSchema,
    Feature,
    FeatureDefinitions,
    FeatureSet,
    FieldSpec,
)
from featurestore.validation.identifiers import identifier_problem

NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
RESERVED_FIELDS = frozenset({"entity_id", "timestamp", "event_id", "ts", "seq", "ingested_at"})
MAX_FEATURES = 1024  # per version
MAX_VERSIONS = 255  # the cache's version codes are one byte
MAX_FIELDS = 64
MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_IN_VALUES = 1024
FEATURE_KEYS = {"name", "description", "serve", "kind", "type", "op", "expr"}
OP_KEYS = {"field", "window", "where"}
PARAMS = {"q", "half_life", "unit", "hours", "buckets"}
CATEGORICAL_TESTS = {"eq", "ne", "in", "not_in"}
NUMERIC_TESTS = {"eq", "ne", "gt", "ge", "lt", "le"}
SYMBOLS = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class DefinitionsError(ConfigError):
    """A definitions file is invalid; the message names the file and the place at fault.
    A ConfigError: a process given such a file stops with EXIT_CONFIG."""


def load_definitions(path: str | Path) -> FeatureDefinitions:
    source = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE_BYTES:
            raise DefinitionsError(f"{source}: larger than {MAX_FILE_BYTES} bytes")
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DefinitionsError(f"{source}: cannot read it ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DefinitionsError(f"{source}: not UTF-8 text") from None
    return parse_definitions(text, source)


def parse_definitions(text: str, source: str = "<definitions>") -> FeatureDefinitions:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionsError(f"{source}: not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise DefinitionsError(f"{source}: not valid TOML: nested too deeply") from None
    return _Loader(source).document(document)


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, reason: str) -> DefinitionsError:
        return DefinitionsError(f"{self.source}: {where}{reason}")

    # -- the document ---------------------------------------------------------------------
    def document(self, document: dict) -> FeatureDefinitions:
        unknown = sorted(set(document) - {"fields", "versions"})
        if unknown:
            raise self.fail("", f"unknown top-level key {unknown[0]!r} (expected fields, versions)")
        schema = self.schema(document.get("fields"))
        versions_table = document.get("versions")
        if not isinstance(versions_table, dict) or not versions_table:
            raise self.fail("", "no versions: declare at least one [versions.NAME] with features")
        if len(versions_table) > MAX_VERSIONS:
            raise self.fail("", f"more than {MAX_VERSIONS} versions")
        versions = {}
        for name, table in versions_table.items():
            versions[name] = self.version(name, table, schema)
        return FeatureDefinitions(self.source, schema, versions)

    def schema(self, fields: Any) -> EventSchema:
        if fields is None:
            raise self.fail("", "no [fields]: declare the event fields (see DEFINITIONS.md)")
        if not isinstance(fields, dict):
            raise self.fail("fields: ", "expected a table of fields")
        if len(fields) > MAX_FIELDS:
            raise self.fail("fields: ", f"more than {MAX_FIELDS} fields")
        specs = [self.field_spec(name, table) for name, table in fields.items()]
        if not specs:
            raise self.fail("fields: ", "declare at least one field")
        return EventSchema(tuple(specs))

    def field_spec(self, name: str, table: Any) -> FieldSpec:
        where = f"field {name!r}, "
        if not NAME.fullmatch(name):
            raise self.fail(where, "name: expected 1-64 of [a-z0-9_] starting with a letter")
        if name in RESERVED_FIELDS:
            raise self.fail(where, f"name: {name!r} is reserved")
        if not isinstance(table, dict):
            raise self.fail(where, 'expected a table such as { kind = "numeric" }')
        unknown = sorted(set(table) - {"kind", "required", "description"})
        if unknown:
            raise self.fail(where, f"{unknown[0]}: unknown key (expected kind, required)")
        kind = table.get("kind")
        if kind not in FIELD_KINDS:
            raise self.fail(where, f"kind: expected one of {', '.join(FIELD_KINDS)}")
        required = table.get("required", False)
        if not isinstance(required, bool):
            raise self.fail(where, "required: expected true or false")
        if required and kind == CATEGORICAL:
            raise self.fail(where, "required: a categorical field is always optional")
        if "description" in table and not isinstance(table["description"], str):
            raise self.fail(where, "description: expected a string")
        return FieldSpec(name, kind, required)

    # -- one version ------------------------------------------------------------------------
    def version(self, name: str, table: Any, schema: EventSchema) -> FeatureSet:
        where = f"version {name!r}, "
        if not NAME.fullmatch(name):
            raise self.fail(where, "name: expected 1-64 of [a-z0-9_] starting with a letter")
        if not isinstance(table, dict):
            raise self.fail(where, "expected a table with a features array")
        unknown = sorted(set(table) - {"description", "features"})
        if unknown:
            raise self.fail(where, f"{unknown[0]}: unknown key (expected description, features)")
        description = table.get("description", "")
        if not isinstance(description, str):
            raise self.fail(where, "description: expected a string")
        features = table.get("features")
        if not isinstance(features, list) or not features:
            raise self.fail(where, f"features: declare at least one [[versions.{name}.features]]")
        if len(features) > MAX_FEATURES:
            raise self.fail(where, f"features: more than {MAX_FEATURES}")
        built: list[Feature] = []
        for index, feature in enumerate(features):
            built.append(self.feature(name, index, feature, schema, built))
        if not any(f.serve for f in built):
            raise self.fail(where, "features: every feature has serve = false")
        return FeatureSet(name, tuple(built), description, content_hash(built, schema))

    def feature(
        self, version: str, index: int, table: Any, schema: EventSchema, earlier: list[Feature]
    ) -> Feature:
        if not isinstance(table, dict):
            raise self.fail(f"version {version!r}, feature #{index + 1}: ", "expected a table")
        name = table.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name):
            shown = f"#{index + 1}" if not isinstance(name, str) else repr(name)[:70]
            raise self.fail(
                f"version {version!r}, feature {shown}, ",
                "name: expected 1-64 of [a-z0-9_] starting with a letter",
            )
        where = f"version {version!r}, feature {name!r}, "
        if any(f.name == name for f in earlier):
            raise self.fail(where, "name: declared twice in this version")
        has_op, has_expr = "op" in table, "expr" in table
        if has_op == has_expr:
            raise self.fail(where, "op: give exactly one of op or expr")
        meta = self.meta(where, table)
        if has_expr:
            return self.expression(where, name, table, meta, earlier)
        return self.op_feature(where, name, table, meta, schema)

    def meta(self, where: str, table: dict) -> dict:
        out = {}
        for key in ("description", "kind", "type"):
            if key in table and not isinstance(table[key], str):
                raise self.fail(where, f"{key}: expected a string")
        if "kind" in table and table["kind"] not in KINDS:
            raise self.fail(where, f"kind: expected one of {', '.join(KINDS)}")
        if "type" in table and table["type"] not in TYPES:
            raise self.fail(where, f"type: expected one of {', '.join(TYPES)}")
        serve = table.get("serve", True)
        if not isinstance(serve, bool):
            raise self.fail(where, "serve: expected true or false")
        out["serve"] = serve
        for key in ("description", "kind", "type"):
            out[key] = table.get(key)
        return out

    def expression(
        self, where: str, name: str, table: dict, meta: dict, earlier: list[Feature]
    ) -> Feature:
        unknown = sorted(set(table) - FEATURE_KEYS - {"op"})
        if unknown:
            raise self.fail(where, f"{unknown[0]}: not a key of an expression feature")
        try:
            node = parse_expression(table["expr"])
        except ExpressionError as exc:
            raise self.fail(where, f"expr: {exc}") from None
        known = {f.name for f in earlier}
        for ref in references(node):
            if ref == name:
                raise self.fail(where, f"expr: {ref!r} refers to itself")
            if ref not in known:
                raise self.fail(where, f"expr: {ref!r} is not an earlier feature of this version")
        kind = meta["kind"] or NUMERIC
        type_ = meta["type"] or "float"
        description = meta["description"] or f"= {table['expr'].strip()}"
        return Feature(
            name,
            kind,
            type_,
            description,
            Definition("expr", expr=node),
            meta["serve"],
            {"expr": table["expr"].strip()},
        )

    def op_feature(
        self, where: str, name: str, table: dict, meta: dict, schema: EventSchema
    ) -> Feature:
        from featurestore.features.ops import AGGREGATION, NO_FIELD, OPS

        op_name = table["op"]
        op = OPS.get(op_name) if isinstance(op_name, str) else None
        if op is None:
            raise self.fail(
                where, f"op: unknown op {str(op_name)[:40]!r} (known: {', '.join(OPS)})"
            )
        allowed = FEATURE_KEYS | set(op.required) | set(op.optional)
        if op.field != NO_FIELD:
            allowed.add("field")
        if op.family == AGGREGATION:
            allowed |= {"window", "where"}
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(where, f"{unknown[0]}: not a key of op {op_name!r}")
        for key in op.required:
            if key not in table:
                raise self.fail(where, f"{key}: op {op_name!r} needs it")

        field = table.get("field")
        spec = self.op_field(where, op, field, schema)
        window_ms = None
        if "window" in table:
            try:
                window_ms = parse_window(table["window"])
            except ValueError as exc:
                raise self.fail(where, f"window: {exc}") from None
        conditions = self.where(where, table.get("where"), schema) if "where" in table else ()
        params, shown = self.params(where, op_name, table)
        source = {
            k: v
            for k, v in table.items()
            if k not in ("name", "description", "kind", "type", "serve")
        }
        if window_ms is not None:
            source["window"] = format_duration(window_ms)
        kind, type_ = op.kind_type(spec.kind if spec else None)
        description = meta["description"] or _describe(
            op.summary, field, window_ms, conditions, shown
        )
        definition = Definition(
            op_name,
            field,
            window_ms,
            conditions,
            tuple(sorted(params.items())),
            skip_missing=not (spec is not None and spec.required),
        )
        return Feature(
            name,
            meta["kind"] or kind,
            meta["type"] or type_,
            description,
            definition,
            meta["serve"],
            source,
        )

    def op_field(self, where: str, op: Any, field: Any, schema: EventSchema) -> FieldSpec | None:
        """The schema entry of an op's `field`, checked against what the op takes."""
        from featurestore.features.ops import (
            ANY_FIELD,
            CATEGORICAL_FIELD,
            CATEGORICAL_FIELD_OPTIONAL,
            NUMERIC_FIELD,
        )

        spec = None
        if field is not None:
            if not isinstance(field, str):
                raise self.fail(where, "field: expected a field name")
            spec = schema.by_name.get(field)
            if spec is None:
                declared = ", ".join(schema.names)
                raise self.fail(
                    where, f"field: unknown field {field[:70]!r} (declared: {declared})"
                )
        if op.field in (NUMERIC_FIELD, CATEGORICAL_FIELD, ANY_FIELD) and spec is None:
            raise self.fail(where, f"field: op {op.name!r} needs a field")
        needs = {NUMERIC_FIELD: NUMERIC, CATEGORICAL_FIELD: CATEGORICAL}.get(op.field)
        if op.field == CATEGORICAL_FIELD_OPTIONAL and spec is not None:
            needs = CATEGORICAL
        if needs is not None and spec.kind != needs:
            raise self.fail(
                where, f"field: op {op.name!r} needs a {needs} field, {field!r} is {spec.kind}"
            )
        return spec

    def params(self, where: str, op: str, table: dict) -> tuple[dict, dict]:
        params: dict[str, Any] = {}
        shown: dict[str, str] = {}
        if "q" in table:
            q = table["q"]
            if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1:
                raise self.fail(where, "q: expected a number in [0, 1]")
            params["q"] = float(q)
            shown["q"] = f"{float(q):g}"
        if "half_life" in table:
            try:
                params["half_life_ms"] = parse_duration(table["half_life"])
            except ValueError as exc:
                raise self.fail(where, f"half_life: {exc}") from None
            shown["half_life"] = format_duration(params["half_life_ms"])
        if op in ("time_since_last", "time_since_first"):
            unit = table.get("unit", "d")
            try:
                params["unit_ms"] = parse_unit(unit)
            except ValueError as exc:
                raise self.fail(where, f"unit: {exc}") from None
            shown["unit"] = {
                "ms": "milliseconds",
                "s": "seconds",
                "m": "minutes",
                "h": "hours",
                "d": "days",
                "w": "weeks",
            }[unit]
        if "hours" in table:
            hours = table["hours"]
            if (
                not isinstance(hours, list)
                or len(hours) != 2
                or any(isinstance(h, bool) or not isinstance(h, int) for h in hours)
                or not 0 <= hours[0] < hours[1] <= 24
            ):
                raise self.fail(where, "hours: expected [start, end] with 0 <= start < end <= 24")
            params["hours"] = (hours[0], hours[1])
        if "buckets" in table:
            buckets = table["buckets"]
            if (
                isinstance(buckets, bool)
                or not isinstance(buckets, int)
                or not 1 <= buckets <= 2**53
            ):
                raise self.fail(where, "buckets: expected an integer from 1 to 2^53")
            params["buckets"] = buckets
        if op == "hash":
            shown["buckets"] = str(params.setdefault("buckets", 2**20))
        return params, shown

    def where(self, where: str, table: Any, schema: EventSchema) -> tuple[Condition, ...]:
        if not isinstance(table, dict) or not table:
            raise self.fail(where, 'where: expected a table such as { merchant = "food" }')
        conditions = []
        for field, test in table.items():
            spec = schema.by_name.get(field)
            if spec is None:
                raise self.fail(where, f"where: unknown field {field[:70]!r}")
            tests = test if isinstance(test, dict) else {"eq": test}
            if not tests:
                raise self.fail(where, f"where: no test on {field!r}")
            allowed = CATEGORICAL_TESTS if spec.kind == CATEGORICAL else NUMERIC_TESTS
            for op, value in tests.items():
                if op not in allowed:
                    tests_known = ", ".join(sorted(allowed))
                    raise self.fail(
                        where, f"where: {op!r} is not a test of a {spec.kind} field ({tests_known})"
                    )
                conditions.append(Condition(field, op, self.test_value(where, spec, op, value)))
        return tuple(sorted(conditions, key=lambda c: (c.field, c.op, repr(c.value))))

    def test_value(self, where: str, spec: FieldSpec, op: str, value: Any) -> Any:
        if spec.kind == NUMERIC:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                raise self.fail(where, f"where: {spec.name} {op}: expected a finite number")
            return float(value)
        values = value if op in ("in", "not_in") else [value]
        if op in ("in", "not_in") and (not isinstance(value, list) or not value):
            raise self.fail(where, f"where: {spec.name} {op}: expected a non-empty list of strings")
        if len(values) > MAX_IN_VALUES:
            raise self.fail(where, f"where: {spec.name} {op}: more than {MAX_IN_VALUES} values")
        for v in values:
            problem = identifier_problem(v)
            if problem:
                raise self.fail(where, f"where: {spec.name} {op}: {problem}")
        if op in ("in", "not_in"):
            return tuple(sorted(set(values)))
        return value


def _describe(summary, field, window_ms, conditions, shown) -> str:
    with_field = f" with {field}" if field else ""
    text = summary.format(field=field or "", with_field=with_field, **shown)
    if window_ms is not None:
        text += f" over the last {format_duration(window_ms)}"
    if conditions:
        text += " where " + " and ".join(_condition_text(c) for c in conditions)
    return text[0].upper() + text[1:]


def _condition_text(c: Condition) -> str:
    if c.op in ("in", "not_in"):
        return f"{c.field} {'in' if c.op == 'in' else 'not in'} {list(c.value)}"
    value = repr(c.value) if isinstance(c.value, str) else f"{c.value:g}"
    return f"{c.field} {SYMBOLS[c.op]} {value}"
