"""Loading definitions files (DEFINITIONS.md, SPEC §14): one clear `DefinitionsError` per
fault, never any other exception, and a content hash of what is computed and nothing else.

- every class of bad definitions: the message names the file, the version, the feature and
  the key at fault, and says what is wrong (the bad value, or what was expected);
- a hypothesis fuzz of random documents, of random changes to the shipped file's data and of
  random edits of its text: the loader returns definitions or raises `DefinitionsError`;
- the canonical content hash ignores formatting, comments, key order and descriptions, and
  changes with anything a version computes or serves.
"""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import pytest
from definitions_text import render, toml_key, toml_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.definitions import DefinitionsError, load_definitions, parse_definitions

SHIPPED = Path(__file__).resolve().parents[2] / "featurestore" / "definitions" / "shipped.toml"
SHIPPED_TEXT = SHIPPED.read_text(encoding="utf-8")
SHIPPED_DOCUMENT = tomllib.loads(SHIPPED_TEXT)

FIELDS = {
    "amount": {"kind": "numeric", "required": True},
    "tip": {"kind": "numeric"},
    "merchant": {"kind": "categorical"},
}
GOOD = {"name": "n", "op": "count"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def text_of(*features: dict, version: str = "pay1", fields: dict | None = None) -> str:
    return render(FIELDS if fields is None else fields, {version: list(features)})


def _named(message: str, name: str) -> bool:
    """`name` occurs in `message` as a whole word (not inside a longer name)."""
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def fault(text: str, *names: str, source: str = "bad.toml") -> str:
    """The DefinitionsError message for `text`; it names `source` and each of `names`."""
    with pytest.raises(DefinitionsError) as caught:
        parse_definitions(text, source=source)
    message = str(caught.value)
    assert source in message, message
    missing = [n for n in names if not _named(message, n)]
    assert not missing, f"{message!r} does not name {missing}"
    assert "Traceback" not in message and len(message) < 2000
    return message


def feature_fault(feature: dict, key: str, *more: str, before: tuple = ()) -> str:
    """A bad feature `f` (after the features `before`) of version `pay1`: the message names the
    version, the feature and the key, and `more` (the bad value, or what is expected)."""
    text = text_of(*before, {"name": "f", **feature})
    return fault(text, "pay1", "f", key, *more)


# --- the shipped file ----------------------------------------------------------------------------


def test_the_shipped_file_loads():
    defs = load_definitions(SHIPPED)
    assert [(f.name, f.kind, f.required) for f in defs.schema.fields] == [
        ("value", "numeric", True),
        ("category", "categorical", False),
    ]
    assert list(defs.versions) == ["v1", "v2"]
    for version, fs in defs.versions.items():
        served = [
            f["name"]
            for f in SHIPPED_DOCUMENT["versions"][version]["features"]
            if f.get("serve", True)
        ]
        assert list(fs.names) == served
        assert [f.name for f in fs.features] == served
        assert len(served) == 24
        assert re.fullmatch(r"[0-9a-f]{16,}", fs.content_hash)
    assert defs.versions["v1"].content_hash != defs.versions["v2"].content_hash
    again = parse_definitions(SHIPPED_TEXT, source="shipped.toml")
    assert {v: fs.content_hash for v, fs in again.versions.items()} == {
        v: fs.content_hash for v, fs in defs.versions.items()
    }


def test_a_small_file_with_every_kind_of_feature_loads():
    text = text_of(
        {"name": "food_count_7d", "op": "count", "window": "7d", "where": {"merchant": "food"}},
        {"name": "tip_q90", "op": "quantile", "field": "tip", "q": 0.9, "window": "90m"},
        {"name": "decayed", "op": "decayed_mean", "field": "amount", "half_life": "12h"},
        {"name": "last_amount", "op": "last_value", "field": "amount", "serve": False},
        {"name": "merchant_label", "op": "last_label", "field": "merchant"},
        {"name": "hours", "op": "is_business_hours", "hours": [8, 18]},
        {"name": "since", "op": "time_since_first", "unit": "h"},
        {"name": "pair", "op": "hash", "field": "merchant", "buckets": 1000},
        {"name": "ratio", "expr": "last_amount / max(decayed, 1)"},
    )
    fs = parse_definitions(text, source="ok.toml").versions["pay1"]
    assert list(fs.names) == [
        "food_count_7d",
        "tip_q90",
        "decayed",
        "merchant_label",
        "hours",
        "since",
        "pair",
        "ratio",
    ]
    kinds = {f.name: (f.kind, f.type) for f in fs.features}
    assert kinds == {
        "food_count_7d": ("numeric", "int"),
        "tip_q90": ("numeric", "float"),
        "decayed": ("numeric", "float"),
        "merchant_label": ("categorical", "int"),
        "hours": ("numeric", "int"),
        "since": ("numeric", "float"),
        "pair": ("identifier", "int"),
        "ratio": ("numeric", "float"),
    }


def test_declared_kind_and_type_are_kept():
    text = text_of(
        {"name": "n", "op": "count", "kind": "categorical"},
        {"name": "m", "op": "max", "field": "amount", "type": "int"},
        {"name": "h", "op": "hash", "kind": "numeric", "type": "float"},
    )
    fs = parse_definitions(text).versions["pay1"]
    assert [(f.kind, f.type) for f in fs.features] == [
        ("categorical", "int"),
        ("numeric", "int"),
        ("numeric", "float"),
    ]


def test_a_categorical_field_is_always_optional():
    fields = {**FIELDS, "merchant": {"kind": "categorical", "required": True}}
    fault(text_of(GOOD, fields=fields), "merchant", "required")
    fields = {**FIELDS, "merchant": {"kind": "categorical", "required": False}}
    assert parse_definitions(text_of(GOOD, fields=fields)).schema.fields[2].required is False


def test_load_definitions_names_the_path(tmp_path):
    path = tmp_path / "payments.toml"
    path.write_text(text_of({"name": "f", "op": "count", "window": "7 days"}), encoding="utf-8")
    with pytest.raises(DefinitionsError) as caught:
        load_definitions(path)
    assert "payments.toml" in str(caught.value)
    assert _named(str(caught.value), "window")
    with pytest.raises(DefinitionsError) as caught:
        load_definitions(tmp_path / "missing.toml")
    assert "missing.toml" in str(caught.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DefinitionsError) as caught:
        load_definitions(binary)
    assert "binary.toml" in str(caught.value)


# --- one error per class of fault ----------------------------------------------------------------


@pytest.mark.parametrize("op", ["medain", "COUNT", "avg", "", "eval", "__import__"])
def test_unknown_op(op):
    message = feature_fault({"op": op, "field": "amount"}, "op")
    if op:
        assert op in message


@pytest.mark.parametrize(
    "window", ["7 days", "7D", "-7d", "7", "d", "1.5h", "7y", "", "7dd", "+7d", "7d7d", "d7"]
)
def test_bad_window_syntax(window):
    message = feature_fault({"op": "sum", "field": "amount", "window": window}, "window")
    assert "all" in message or "duration" in message  # what is expected


@pytest.mark.parametrize(
    "feature",
    [
        {"op": "sum", "field": "amnt"},
        {"op": "count", "field": "amnt"},
        {"op": "last_value", "field": "amnt"},
        {"op": "hash", "field": "amnt"},
        {"op": "frequency", "field": "amnt"},
        {"op": "sum", "field": "entity_id"},
        {"op": "sum", "field": "timestamp"},
    ],
)
def test_unknown_field(feature):
    feature_fault(feature, "field", feature["field"])


@pytest.mark.parametrize(
    ("op", "field"),
    [
        ("sum", "merchant"),
        ("mean", "merchant"),
        ("std", "merchant"),
        ("median", "merchant"),
        ("slope", "merchant"),
        ("percentile_rank", "merchant"),
        ("zscore", "merchant"),
        ("mad", "merchant"),
        ("iqr", "merchant"),
        ("frequency", "amount"),
        ("last_value", "merchant"),
        ("last_label", "amount"),
        ("hash", "amount"),
    ],
)
def test_wrong_field_kind_for_the_op(op, field):
    feature_fault({"op": op, "field": field}, "field", field)


def test_wrong_field_kind_for_a_parameterised_op():
    feature_fault({"op": "quantile", "field": "merchant", "q": 0.5}, "field", "merchant")
    feature_fault({"op": "decayed_sum", "field": "merchant", "half_life": "1d"}, "field")


@pytest.mark.parametrize(
    ("feature", "key"),
    [
        ({"op": "quantile", "field": "amount"}, "q"),
        ({"op": "decayed_sum", "field": "amount"}, "half_life"),
        ({"op": "decayed_mean", "field": "amount", "window": "7d"}, "half_life"),
        ({"op": "sum"}, "field"),
        ({"op": "mean", "window": "7d"}, "field"),
        ({"op": "first"}, "field"),
        ({"op": "frequency"}, "field"),
        ({"op": "last_value"}, "field"),
        ({"op": "last_label"}, "field"),
    ],
)
def test_missing_required_key(feature, key):
    feature_fault(feature, key)


def test_a_feature_without_op_or_expr_or_with_both():
    fault(text_of({"name": "f", "field": "amount"}), "pay1", "f")
    fault(text_of(GOOD, {"name": "f", "op": "count", "expr": "n + 1"}), "pay1", "f")


def test_a_feature_without_a_name():
    fault(text_of(GOOD, {"op": "count"}), "pay1", "name")


@pytest.mark.parametrize(
    ("feature", "key"),
    [
        ({"op": "sum", "field": "amount", "windw": "7d"}, "windw"),
        ({"op": "count", "colour": "red"}, "colour"),
        ({"op": "mean", "field": "amount", "q": 0.5}, "q"),
        ({"op": "sum", "field": "amount", "half_life": "1d"}, "half_life"),
        ({"op": "last_value", "field": "amount", "window": "7d"}, "window"),
        ({"op": "last_value", "field": "amount", "where": {"merchant": "food"}}, "where"),
        ({"op": "day_of_week", "field": "amount"}, "field"),
        ({"op": "hour_of_day", "unit": "h"}, "unit"),
        ({"op": "hash", "window": "7d"}, "window"),
        ({"op": "hash", "hours": [9, 17]}, "hours"),
        ({"op": "count", "buckets": 10}, "buckets"),
        ({"op": "is_weekend", "hours": [9, 17]}, "hours"),
        ({"expr": "1 + 1", "window": "7d"}, "window"),
        ({"expr": "1 + 1", "field": "amount"}, "field"),
    ],
)
def test_unknown_key(feature, key):
    feature_fault(feature, key)


def test_unknown_keys_outside_features():
    fault("extra = 1\n" + text_of(GOOD), "extra")
    fault(text_of(GOOD) + "\n[versions.pay1]\ncolour = 'red'\n", "pay1", "colour")
    fields = {**FIELDS, "amount": {"kind": "numeric", "unit": "eur"}}
    fault(text_of(GOOD, fields=fields), "amount", "unit")


@pytest.mark.parametrize(
    ("before", "expr", "culprit"),
    [
        ((), "later + 1", "later"),  # a later feature
        ((GOOD,), "n + nope", "nope"),  # no such feature
        ((GOOD,), "f * 2", "f"),  # itself: a cycle
        ((GOOD,), "abs(f)", "f"),
        ((GOOD,), "amount + 1", "amount"),  # a field is not a feature
    ],
)
def test_expression_referencing_a_later_unknown_or_the_same_feature(before, expr, culprit):
    text = text_of(*before, {"name": "f", "expr": expr}, {"name": "later", "op": "count"})
    fault(text, "pay1", "f", "expr", culprit)


@pytest.mark.parametrize(
    "expr",
    [
        "n.real",  # attribute access
        "n.__class__",
        "exp(n)",  # a call other than abs / min / max
        "print(n)",
        "__import__('os').system('true')",
        "n ** 2",
        "n // 2",
        "n % 2",
        "n > 1",
        "n == 1",
        "1 < n < 2",
        "'x'",  # strings
        "n + 'x'",
        "lambda: 1",
        "n if n else 1",
        "[n]",
        "(n, n)",
        "{n: 1}",
        "n[0]",
        "not n",
        "n and n",
        "n & 1",
        "~n",
        "True",
        "None",
        "1j",
        "f'{n}'",
        "abs()",
        "abs(n, n)",
        "abs(x=n)",
        "min()",
        "max(*[n])",
        "",
        "   ",
        "n +",
        "(n",
        "n n",
        "n; n",
        "n\nn",
        "n = 1",
        "(n := 1)",
        "abs",
    ],
)
def test_expression_syntax_outside_the_whitelist(expr):
    feature_fault({"expr": expr}, "expr", before=(GOOD,))


def test_duplicate_feature_name():
    text = text_of(GOOD, {"name": "f", "op": "count"}, {"name": "f", "op": "sum", "field": "tip"})
    fault(text, "pay1", "f", "name")


BAD_NAMES = ["", "A", "Amount", "1a", "_a", "a-b", "a b", "a.b", "é", "a" * 65, "ab\u00e9"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_feature_name(name):
    message = fault(text_of(GOOD, {"name": name, "op": "count"}), "pay1", "name")
    assert "64" in message or "[a-z0-9_]" in message or "letter" in message


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_version_name(name):
    fault(text_of(GOOD, version=name), "name")


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
def test_bad_field_name(name):
    fields = {**FIELDS, name: {"kind": "numeric"}}
    fault(text_of(GOOD, fields=fields), "name")


@pytest.mark.parametrize("name", ["entity_id", "timestamp", "event_id", "ts", "seq", "ingested_at"])
def test_reserved_field_name(name):
    fields = {**FIELDS, name: {"kind": "numeric"}}
    fault(text_of(GOOD, fields=fields), name)


def test_names_of_64_characters_are_fine():
    long = "a" + "b_9" * 21
    assert len(long) == 64
    fields = {**FIELDS, long: {"kind": "numeric"}}
    features = [{"name": long, "op": "sum", "field": long}, {"name": "x", "expr": long}]
    text = text_of(*features, version=long, fields=fields)
    assert list(parse_definitions(text, source="ok.toml").versions[long].names) == [long, "x"]


@pytest.mark.parametrize(
    "text",
    [
        "this is = not [toml",
        "[fields.amount\nkind = 'numeric'",
        "[fields.amount]\nkind = 'numeric'\nkind = 'numeric'\n",  # a duplicate key
        "a = 1\na = 2",
        "x = \x7f",
        '[fields.amount]\nkind = "numeric\n',
        "\x00",
    ],
)
def test_a_file_that_is_not_toml(text):
    fault(text)


@pytest.mark.parametrize(
    ("feature", "key"),
    [
        ({"op": "quantile", "field": "amount", "q": "0.5"}, "q"),
        ({"op": "quantile", "field": "amount", "q": 1.5}, "q"),
        ({"op": "quantile", "field": "amount", "q": -0.1}, "q"),
        ({"op": "quantile", "field": "amount", "q": float("nan")}, "q"),
        ({"op": "quantile", "field": "amount", "q": True}, "q"),
        ({"op": "quantile", "field": "amount", "q": [0.5]}, "q"),
        ({"op": "count", "serve": "no"}, "serve"),
        ({"op": "count", "serve": 0}, "serve"),
        ({"op": "hash", "buckets": 0}, "buckets"),
        ({"op": "hash", "buckets": -5}, "buckets"),
        ({"op": "hash", "buckets": 2**53 + 1}, "buckets"),
        ({"op": "hash", "buckets": 1.5}, "buckets"),
        ({"op": "hash", "buckets": "1000"}, "buckets"),
        ({"op": "is_business_hours", "hours": [9]}, "hours"),
        ({"op": "is_business_hours", "hours": [17, 9]}, "hours"),
        ({"op": "is_business_hours", "hours": [9, 25]}, "hours"),
        ({"op": "is_business_hours", "hours": [-1, 5]}, "hours"),
        ({"op": "is_business_hours", "hours": [9, 9]}, "hours"),
        ({"op": "is_business_hours", "hours": ["9", "17"]}, "hours"),
        ({"op": "is_business_hours", "hours": 9}, "hours"),
        ({"op": "time_since_last", "unit": "y"}, "unit"),
        ({"op": "time_since_last", "unit": "weeks"}, "unit"),
        ({"op": "time_since_last", "unit": 1}, "unit"),
        ({"op": "count", "kind": "weird"}, "kind"),
        ({"op": "count", "type": "double"}, "type"),
        ({"op": "count", "type": 1}, "type"),
        ({"op": "count", "description": 3}, "description"),
        ({"op": "count", "window": 7}, "window"),
        ({"op": "sum", "field": 3}, "field"),
        ({"op": "sum", "field": ["amount"]}, "field"),
        ({"op": 5}, "op"),
        ({"op": "count", "where": "merchant = food"}, "where"),
        ({"op": "count", "where": ["merchant"]}, "where"),
        ({"op": "decayed_sum", "field": "amount", "half_life": "7days"}, "half_life"),
        ({"op": "decayed_sum", "field": "amount", "half_life": 5}, "half_life"),
        ({"op": "decayed_sum", "field": "amount", "half_life": "all"}, "half_life"),
        ({"expr": 5}, "expr"),
        ({"expr": ["n"]}, "expr"),
    ],
)
def test_wrong_value_types(feature, key):
    feature_fault(feature, key)


def test_wrong_value_types_of_names_and_fields():
    def document(fields=FIELDS, versions=None) -> str:
        versions = {"pay1": {"features": [GOOD]}} if versions is None else versions
        return inline_document({"fields": fields, "versions": versions})

    fault(text_of(GOOD, {"name": 5, "op": "count"}), "pay1", "name")
    fault(document({**FIELDS, "tip": {"kind": "text"}}), "tip", "kind")
    fault(document({**FIELDS, "tip": {"kind": "numeric", "required": "yes"}}), "tip", "required")
    fault(document({**FIELDS, "tip": "numeric"}), "tip")
    fault(document({**FIELDS, "tip": {}}), "tip", "kind")
    fault(document(3), "fields")
    fault(document(versions=3), "versions")
    fault(document(versions={"pay1": 3}), "pay1")
    fault(document(versions={"pay1": {"features": 3}}), "pay1", "features")
    fault(document(versions={"pay1": {"features": [1, 2]}}), "pay1")
    fault(document(versions={"pay1": {"features": {"name": "n", "op": "count"}}}), "pay1")


def test_empty_version():
    fault(render(FIELDS, {}) + "[versions.pay1]\ndescription = 'nothing'\n", "pay1")
    fault(render(FIELDS, {}) + "[versions.pay1]\nfeatures = []\n", "pay1", "features")
    two = render(FIELDS, {"ok": [GOOD]}) + "[versions.pay1]\n"
    fault(two, "pay1")


def test_no_versions():
    fault(render(FIELDS, {}), "versions")
    fault(render(FIELDS, {}) + "[versions]\n", "versions")


@pytest.mark.parametrize(
    ("where", "culprit"),
    [
        ({"merchnt": "food"}, "merchnt"),  # an unknown field
        ({"entity_id": "e"}, "entity_id"),
        ({"merchant": {"gt": "a"}}, "gt"),  # an operator of the other kind
        ({"merchant": {"le": "a"}}, "le"),
        ({"amount": {"in": [1.0, 2.0]}}, "in"),
        ({"amount": {"not_in": [1.0]}}, "not_in"),
        ({"amount": {"between": [1, 2]}}, "between"),  # no such operator
        ({"merchant": {"is": "food"}}, "is"),
        ({"amount": {"gt": "10"}}, "amount"),  # a value of the wrong type
        ({"amount": "food"}, "amount"),
        ({"amount": True}, "amount"),
        ({"merchant": 5}, "merchant"),
        ({"merchant": {"in": "food"}}, "merchant"),
        ({"merchant": {"in": [1, 2]}}, "merchant"),
        ({"merchant": {"ne": ["food"]}}, "merchant"),
    ],
)
def test_bad_where(where, culprit):
    feature_fault({"op": "count", "where": where}, "where", culprit)


def test_every_feature_serve_false_or_a_where_on_an_absent_label_is_fine_or_clear():
    # a label never seen is fine: it matches nothing
    parse_definitions(text_of({"name": "n", "op": "count", "where": {"merchant": "none"}}))
    with pytest.raises(DefinitionsError):
        parse_definitions(text_of({"name": "n", "op": "count", "serve": False}))


# --- fuzz: nothing but definitions or DefinitionsError -------------------------------------------

KEYS = [
    "fields",
    "versions",
    "features",
    "kind",
    "required",
    "name",
    "op",
    "expr",
    "field",
    "window",
    "where",
    "q",
    "half_life",
    "unit",
    "hours",
    "buckets",
    "serve",
    "type",
    "description",
    "in",
    "not_in",
    "ne",
    "gt",
    "le",
    "amount",
    "merchant",
    "v1",
]
WORDS = [
    "numeric",
    "categorical",
    "identifier",
    "int",
    "float",
    "count",
    "sum",
    "mean",
    "quantile",
    "decayed_sum",
    "hash",
    "last_value",
    "is_business_hours",
    "time_since_last",
    "amount",
    "merchant",
    "food",
    "all",
    "7d",
    "90m",
    "0d",
    "99999999999999999999d",
    "n + 1",
    "abs(n)",
    "min(n, 1)",
    "n / 0",
    "__import__('os')",
    "n" * 70,
]
SCALARS = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=12),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)


def inline_document(document: dict) -> str:
    """Any document as top-level `key = value` lines (inline tables and arrays)."""
    return "\n".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in document.items())


def loads_or_clear_error(text: str) -> None:
    try:
        defs = parse_definitions(text, source="fuzz.toml")
    except DefinitionsError as exc:
        assert "fuzz.toml" in str(exc)
        return
    assert defs.versions
    for fs in defs.versions.values():
        assert len(fs.names) == len(fs.features) > 0
        assert isinstance(fs.content_hash, str)


@FUZZ
@given(document=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=4))
def test_fuzz_random_documents(document):
    loads_or_clear_error(inline_document(document))


def _tables(document: dict) -> list[dict]:
    """Every table of a (possibly already mutated) document that a mutation may change."""
    out = [document]
    for section in ("fields", "versions"):
        tables = document.get(section)
        if isinstance(tables, dict):
            out.append(tables)
            out.extend(t for t in tables.values() if isinstance(t, dict))
    versions = document.get("versions")
    for version in versions.values() if isinstance(versions, dict) else []:
        features = version.get("features") if isinstance(version, dict) else None
        if isinstance(features, list):
            out.extend(f for f in features if isinstance(f, dict))
    return out


@st.composite
def mutated_shipped(draw) -> dict:
    """The shipped file's data with a few keys of its tables (features mostly) changed, added
    or removed, or two features swapped."""
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    for _ in range(draw(st.integers(1, 3))):
        tables = _tables(document)
        features = [t for t in tables if "op" in t or "expr" in t]
        table = draw(st.sampled_from(features if features and draw(st.booleans()) else tables))
        key = draw(st.one_of(st.sampled_from(KEYS), st.sampled_from(sorted(table) or ["name"])))
        if draw(st.integers(0, 4)) == 0:
            table.pop(key, None)
        elif draw(st.integers(0, 4)) == 0 and features:
            other = draw(st.sampled_from(features))
            table[key], other[key] = other.get(key), table.get(key)
            for t in (table, other):
                if t.get(key) is None:
                    t.pop(key, None)
        else:
            table[key] = draw(VALUES)
    return document


@FUZZ
@given(document=mutated_shipped())
def test_fuzz_random_changes_to_the_shipped_data(document):
    loads_or_clear_error(inline_document(document))


@st.composite
def edited_shipped_text(draw) -> str:
    lines = SHIPPED_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert", "cut"]))
        if edit == "delete":
            del lines[i]
        elif edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif edit == "replace" and "=" in lines[i]:
            key = lines[i].split("=", 1)[0]
            lines[i] = key + "= " + draw(st.sampled_from(["1", "-1", "true", "[]", "{}", '""']))
        elif edit == "insert":
            lines.insert(i, draw(st.text(max_size=20)))
        elif edit == "cut":
            lines[i] = lines[i][: draw(st.integers(0, max(len(lines[i]) - 1, 0)))]
        if not lines:
            break
    return "\n".join(lines)


@FUZZ
@given(text=edited_shipped_text())
def test_fuzz_random_edits_of_the_shipped_text(text):
    loads_or_clear_error(text)


# --- the canonical content hash ------------------------------------------------------------------


def hashes(text: str) -> dict[str, str]:
    return {v: fs.content_hash for v, fs in parse_definitions(text).versions.items()}


SHIPPED_HASHES = hashes(SHIPPED_TEXT)


def reordered(table: dict) -> dict:
    return {k: reordered(v) if isinstance(v, dict) else v for k, v in reversed(table.items())}


def without_descriptions(document: dict) -> dict:
    out = copy.deepcopy(document)
    for version in out["versions"].values():
        version.pop("description", None)
        for feature in version["features"]:
            feature.pop("description", None)
    return out


def test_hash_ignores_formatting_comments_and_key_order():
    assert hashes(inline_document(SHIPPED_DOCUMENT)) == SHIPPED_HASHES
    no_comments = "\n".join(
        line for line in SHIPPED_TEXT.splitlines() if not line.lstrip().startswith("#")
    )
    assert hashes(no_comments) == SHIPPED_HASHES
    spaced = re.sub(r" = ", "   =\t", SHIPPED_TEXT).replace("\n\n", "\n\n# a comment\n\n")
    assert hashes(spaced) == SHIPPED_HASHES
    doc = SHIPPED_DOCUMENT
    backwards = {
        "versions": {
            name: {
                "features": [reordered(f) for f in v["features"]],
                **{k: x for k, x in v.items() if k != "features"},
            }
            for name, v in reversed(doc["versions"].items())
        },
        "fields": reordered(doc["fields"]),
    }
    assert hashes(inline_document(backwards)) == SHIPPED_HASHES


def test_hash_ignores_descriptions():
    assert hashes(inline_document(without_descriptions(SHIPPED_DOCUMENT))) == SHIPPED_HASHES
    changed = SHIPPED_TEXT.replace('description = "', 'description = "Changed: ')
    assert changed != SHIPPED_TEXT
    assert hashes(changed) == SHIPPED_HASHES


def test_hash_ignores_toml_spellings_of_the_same_values():
    base = text_of(
        {"name": "q", "op": "quantile", "field": "amount", "q": 0.25},
        {"name": "h", "op": "hash", "buckets": 1048576},
        {"name": "c", "op": "count", "where": {"merchant": "food"}},
    )
    spelled = (
        base.replace("q = 0.25", "q = 2.5e-1")
        .replace("buckets = 1048576", "buckets = 0x100000")
        .replace('where = { merchant = "food" }', "")
        .replace('name = "c"', "name = 'c'")
    ) + "\n[versions.pay1.features.where]\nmerchant = 'food'\n"
    assert tomllib.loads(spelled) == tomllib.loads(base)
    assert hashes(spelled) == hashes(base)
    underscored = base.replace("buckets = 1048576", "buckets = 1_048_576")
    assert hashes(underscored) == hashes(base)


FEATURE_CHANGES = [
    # (version, feature, key, new value): each changes what the version computes or serves
    ("v1", "value_mean", "op", "median"),
    ("v1", "value_mean", "window", "30d"),
    ("v1", "value_mean", "where", {"category": "web"}),
    ("v1", "value_max", "name", "value_maximum"),
    ("v1", "value_mean", "serve", False),
    ("v1", "value_mean", "type", "int"),
    ("v1", "value_q25", "q", 0.2),
    ("v1", "trend_7d", "window", "8d"),
    ("v1", "trend_7d", "window", "all"),
    ("v1", "momentum", "expr", "trend_30d - trend_7d"),
    ("v1", "momentum", "expr", "trend_7d + trend_30d"),
    ("v1", "is_business_hours", "hours", [8, 17]),
    ("v1", "recency_days", "unit", "h"),
    ("v1", "entity_hash", "buckets", 1024),
    ("v1", "interaction_hash", "buckets", 2**21),
    ("v1", "last_value", "serve", True),
    ("v2", "value_median", "window", "29d"),
    ("v2", "z_score", "expr", "(last_value - value_median) / (1.5 * value_mad)"),
    ("v2", "frequency", "where", {"value": {"gt": 0}}),
]


def _changed(version: str, feature: str, key: str, value) -> dict:
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    (table,) = [f for f in document["versions"][version]["features"] if f["name"] == feature]
    table[key] = value
    return document


@pytest.mark.parametrize(("version", "feature", "key", "value"), FEATURE_CHANGES)
def test_hash_changes_when_a_definition_changes(version, feature, key, value):
    got = hashes(inline_document(_changed(version, feature, key, value)))
    other = "v2" if version == "v1" else "v1"
    assert got[version] != SHIPPED_HASHES[version], (feature, key, value)
    assert got[other] == SHIPPED_HASHES[other]


def test_hash_changes_with_the_order_and_number_of_features():
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    features = document["versions"]["v1"]["features"]
    features[0], features[1] = features[1], features[0]
    assert hashes(inline_document(document))["v1"] != SHIPPED_HASHES["v1"]
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    document["versions"]["v1"]["features"].append({"name": "n", "op": "count"})
    assert hashes(inline_document(document))["v1"] != SHIPPED_HASHES["v1"]
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    (value_min,) = [f for f in document["versions"]["v1"]["features"] if f["name"] == "value_min"]
    document["versions"]["v1"]["features"].remove(value_min)
    assert hashes(inline_document(document))["v1"] != SHIPPED_HASHES["v1"]


def test_adding_an_optional_field_keeps_every_hash_and_reading_it_changes_one():
    document = copy.deepcopy(SHIPPED_DOCUMENT)
    document["fields"]["amount"] = {"kind": "numeric"}
    document["fields"]["merchant"] = {"kind": "categorical"}
    assert hashes(inline_document(document)) == SHIPPED_HASHES
    (mean,) = [f for f in document["versions"]["v1"]["features"] if f["name"] == "value_mean"]
    mean["field"] = "amount"
    got = hashes(inline_document(document))
    assert got["v1"] != SHIPPED_HASHES["v1"]
    assert got["v2"] == SHIPPED_HASHES["v2"]
