"""Bodies and payloads decoded once into their request type, every failure as the §5 error.

The fast path is one msgspec decode that parses and checks the structure at once. Only when
it fails is the body looked at again, to say precisely what is wrong: JSON that is not JSON
is `invalid_json`; JSON that holds something no field accepts is `invalid_request`, naming
the field (`'entity_ids[3]' must be a string`, `unknown field(s): x; allowed: ...`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, get_args, get_origin, get_type_hints

import msgspec
import orjson

from featurestore.errors import Code, ServiceError
from featurestore.wire.frames import Op
from featurestore.wire.messages import PAYLOAD_TYPES, Message, decode_json, decode_msgpack

# Phrases for lists, by field name: "'features' must be a list of feature names".
LIST_OF = {
    "features": "a list of feature names",
    "entity_ids": "a list of entity ids",
    "rows": "a list of {entity_id, timestamp} objects",
    "events": "a list of event objects",
    "timestamps": "a list of timestamps",
}
TYPE_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "array": "a list",
    "object": "an object",
}
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_EXPECTED = re.compile(r"^Expected `(?P<want>[^`]*)`, got `(?P<got>[^`]*)`")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]*)`")


def invalid(message: str, **extra: Any) -> ServiceError:
    return ServiceError(Code.INVALID_REQUEST, message, **extra)


def decoded_http(op: Op, body: bytes) -> Message:
    """The JSON body of an HTTP request of `op`; `invalid_json` or `invalid_request`."""
    if not body or not body.strip():
        raise ServiceError(Code.INVALID_JSON, "the request body is empty; expected JSON")
    try:
        return decode_json(op, body)
    except msgspec.ValidationError as exc:  # (a DecodeError too: this one first)
        try:
            orjson.loads(body)
        except orjson.JSONDecodeError:  # e.g. nested deeper than any parser takes
            raise refused_json(body) from None
        raise translated(exc, PAYLOAD_TYPES[op], "the request body must be a JSON object") from None
    except msgspec.DecodeError:
        raise refused_json(body) from None


def decoded_payload(op: Op, payload: bytes | memoryview) -> Message:
    """The msgpack payload of a ZeroMQ request (or job) of `op`; `invalid_request`."""
    try:
        return decode_msgpack(op, payload)
    except msgspec.ValidationError as exc:  # (a DecodeError too: this one first)
        raise translated(exc, PAYLOAD_TYPES[op], "the payload must be a map") from None
    except msgspec.DecodeError:
        raise invalid("the payload is not msgpack") from None


# --------------------------------------------------------------------- structure errors
def translated(exc: msgspec.ValidationError, root: type, not_an_object: str) -> ServiceError:
    """A msgspec ValidationError as the §5 `invalid_request`, in the API's words;
    `not_an_object`: what to say when the whole body or payload is not an object."""
    text = str(exc)
    at = _AT.search(text)
    path = at["path"] if at else ""
    text = text[: at.start()] if at else text
    where = _where(path)
    if match := _UNKNOWN.match(text):
        return _unknown_field(root, path, where, match["field"])
    if match := _MISSING.match(text):
        return _missing_field(root, path, where, match["field"])
    if match := _EXPECTED.match(text):
        if not where:
            return invalid(not_an_object)
        return _wrong_type(root, path, where, match["want"], match["got"])
    return invalid(f"{where or 'the request body'}: {text}")


def _where(path: str) -> str:
    """`$.rows[0].timestamp` -> rows[0].timestamp (the API's name for a place)."""
    return path.lstrip(".")


def _struct_at(root: type, path: str) -> type | None:
    """The Struct type found at `path` from `root` (through lists and optionals)."""
    current: Any = root
    for part in re.findall(r"\.([^.\[]+)|\[\d+\]", path):
        current = _unwrap(current)
        if part:  # a field
            hints = get_type_hints(current, include_extras=True)
            current = hints.get(part)
        else:  # a list item
            current = _item_of(_unwrap(current))
        if current is None:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, msgspec.Struct) else None


def _unwrap(kind: Any) -> Any:
    """The type inside Annotated[...] and X | None."""
    while True:
        origin = get_origin(kind)
        args = [a for a in get_args(kind) if a is not type(None)]
        if origin is None or not args:
            return kind
        if origin is list:
            return kind
        kind = args[0]


def _item_of(kind: Any) -> Any:
    args = get_args(kind)
    return args[0] if get_origin(kind) is list and args else None


def _unknown_field(root: type, path: str, where: str, field: str) -> ServiceError:
    struct = _struct_at(root, path)
    allowed = ", ".join(struct.__struct_fields__) if struct else ""
    if not where:
        return invalid(f"unknown field(s): {_printable(field)}; allowed: {allowed}")
    return invalid(f"'{where}' has unknown fields ({_printable(field)}); allowed: {allowed}")


def _missing_field(root: type, path: str, where: str, field: str) -> ServiceError:
    if not where:
        return invalid(f"'{field}' is required")
    return invalid(
        f"'{where}' must be an object with {_required(root, path, field)} ({field} is missing)"
    )


def _required(root: type, path: str, field: str) -> str:
    """The required fields of the object at `path` ("entity_id and timestamp")."""
    struct = _struct_at(root, path)
    if struct is None:
        return field
    return " and ".join(f.name for f in msgspec.structs.fields(struct) if f.required)


def _wrong_type(root: type, path: str, where: str, want: str, got: str) -> ServiceError:
    field = re.sub(r"\[\d+\]$", "", where)
    if got == "null" and "null" not in want:
        return invalid(f"'{where}' is required")
    if want.startswith("object") and where != field:  # an item of a list of objects
        fields = _required(root, path, "")
        return invalid(f"'{where}' must be an object with {fields}")
    if where != field and field in LIST_OF and field != "entity_ids":  # an item of a list
        return invalid(f"'{field}' must be {LIST_OF[field]}")
    if want.startswith("array") and where in LIST_OF:
        return invalid(f"'{where}' must be {LIST_OF[where]}")
    if want.startswith("object"):
        return invalid(f"'{where}' must be an object")
    name = want.split(" | ", maxsplit=1)[0]
    return invalid(f"'{where}' must be {TYPE_NAMES.get(name, name)}")


# ------------------------------------------------------------------------ JSON refused
_ORJSON_ONLY = ("surrogate", "infinity")  # in orjson's messages for what only it refuses
_SURROGATE = re.compile("[\ud800-\udfff]")


def refused_json(raw: bytes) -> ServiceError:
    """Why a body was refused as JSON. Some JSON that RFC 8259 allows, the fast parsers do
    not: a lone surrogate escape ("\\ud800") or a number beyond float range (1e999). Such a
    body IS JSON, holding a value no field accepts (SPEC §3), so it is `invalid_request`, not
    `invalid_json`. The standard parser (slower, on this error path only) tells them apart."""
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        reason = str(exc)
    else:
        reason = "unsupported JSON"
    not_json = ServiceError(Code.INVALID_JSON, f"the request body is not valid JSON: {reason}")
    if not any(word in reason.lower() for word in _ORJSON_ONLY):
        return not_json  # plain garbage is not parsed twice
    try:
        value = json.loads(raw, parse_constant=_no_constant)
        found = _unrepresentable(value, [])
    except (ValueError, RecursionError):
        return not_json
    if found is None:
        return not_json
    path, reason = found
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{_printable(p)}" for p in path)
    where = where.lstrip(".") or "the body"
    extra = {}
    if len(path) >= 3 and path[0] == "events" and isinstance(path[1], int):
        field = path[2] if isinstance(path[2], str) else "event"
        extra["errors"] = [{"index": path[1], "field": _printable(field), "reason": reason}]
    return ServiceError(Code.INVALID_REQUEST, f"'{where}' {reason}", **extra)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unrepresentable(value: Any, path: list) -> tuple[list, str] | None:
    """The first string with a lone surrogate or non-finite number in `value`, and why."""
    if isinstance(value, str):
        return (path, "contains a lone surrogate") if _SURROGATE.search(value) else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be finite")
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(key, str) and _SURROGATE.search(key):
            return [*path, key], "is a field name with a lone surrogate"
        found = _unrepresentable(item, [*path, key])
        if found is not None:
            return found
    return None
