"""The content hash of a version: SHA-256 of its canonical form.

The canonical form is what the features compute and serve — names, order, kinds, types,
`serve`, each definition with its durations in ms, its conditions sorted, its expressions
fully parenthesised, and the kind of every field it reads — and nothing else: formatting,
comments, key order and descriptions do not count.
"""

from __future__ import annotations

import hashlib
import json

from featurestore.definitions.expressions import canonical
from featurestore.definitions.model import EventSchema, Feature


def canonical_form(features: list[Feature], schema: EventSchema) -> list:
    out = []
    for f in features:
        d = f.definition
        body: dict = {"name": f.name, "kind": f.kind, "type": f.type, "serve": f.serve, "op": d.op}
        if d.op == "expr":
            body["expr"] = canonical(d.expr)
        else:
            if d.field is not None:
                body["field"] = [d.field, schema.by_name[d.field].kind]
            body["window_ms"] = d.window_ms
            body["where"] = [
                [
                    c.field,
                    schema.by_name[c.field].kind,
                    c.op,
                    list(c.value) if isinstance(c.value, tuple) else c.value,
                ]
                for c in d.where
            ]
            body["params"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in d.params]
        out.append(body)
    return out


def content_hash(features: list[Feature], schema: EventSchema) -> str:
    text = json.dumps(canonical_form(features, schema), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
