"""What a store records about its contents (SPEC §14 on both backends, SPEC §15): the fields of
the definitions it serves, in the order it first saw them, with labels per categorical field;
segments written with fewer fields widened on read and rewritten by compaction; a schema that
would make stored events unreadable refused naming the field; served versions recorded,
immutable, and forgotten on request."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from definitions_text import render
from store_targets import Target

from featurestore.definitions import load_definitions
from featurestore.store.base import EventStore
from featurestore.store.batch import NO_LABEL, EventBatch
from featurestore.store.errors import SchemaMismatch
from featurestore.validation.events import validate_events

T0 = 1_704_067_200_000
COUNT = [{"name": "events", "op": "count"}]
DEFAULT_FIELDS: dict[str, dict[str, Any]] = {
    "value": {"kind": "numeric", "required": True},
    "category": {"kind": "categorical"},
}
WIDER_FIELDS = {
    **DEFAULT_FIELDS,
    "amount": {"kind": "numeric"},
    "merchant": {"kind": "categorical"},
}


def definitions(path: Path, fields: dict[str, dict[str, Any]], features=COUNT) -> str:
    path.write_text(render(fields, {"v1": features}))
    return str(path)


def open_with(target: Target, path: str) -> EventStore:
    return target.open(FEATURES_FILE=path)


def ingest(store: EventStore, path: str, events: list[dict]):
    schema = load_definitions(path).schema
    return store.ingest(validate_events(events, 100_000, 300_000, schema=schema))


def entity(batch: EventBatch, i: int) -> dict[str, list]:
    lo, hi = int(batch.offsets[i]), int(batch.offsets[i + 1])
    out: dict[str, list] = {"ts": batch.ts[lo:hi].tolist()}
    out.update({name: column[lo:hi].tolist() for name, column in batch.numeric.items()})
    out.update({name: column[lo:hi].tolist() for name, column in batch.labels.items()})
    return out


def same(got: list, expected: list) -> bool:
    return len(got) == len(expected) and all(
        (isinstance(e, float) and math.isnan(e) and math.isnan(g)) or g == e
        for g, e in zip(got, expected, strict=True)
    )


def test_declared_fields_round_trip_with_labels_of_their_own(
    store_target: Target, tmp_path: Path
) -> None:
    path = definitions(tmp_path / "wide.toml", WIDER_FIELDS)
    store = open_with(store_target, path)
    try:
        ingest(
            store,
            path,
            [
                {"entity_id": "a", "timestamp": T0, "value": 1.0, "merchant": "food"},
                {"entity_id": "a", "timestamp": T0 + 1, "value": 2.0, "category": "web"},
                {"entity_id": "a", "timestamp": T0 + 2, "value": 3.0, "amount": 9.5},
                {"entity_id": "a", "timestamp": T0 + 3, "value": 4.0, "merchant": "travel"},
                {"entity_id": "a", "timestamp": T0 + 4, "value": 5.0, "category": "food"},
            ],
        )
        got = entity(store.read(["a"]), 0)
        assert got["value"] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert same(got["amount"], [math.nan, math.nan, 9.5, math.nan, math.nan])
        # Each categorical field numbers its own names from 0, in order of first appearance.
        assert got["merchant"] == [0, NO_LABEL, NO_LABEL, 1, NO_LABEL]
        assert got["category"] == [NO_LABEL, 0, NO_LABEL, NO_LABEL, 1]
        assert store.label_names() == {"category": ["web", "food"], "merchant": ["food", "travel"]}
        assert store.category_names() == ["web", "food"]
    finally:
        store.close()
    assert [tuple(r) for r in store_target.sql("SELECT name, kind FROM fields ORDER BY 1")] == [
        ("amount", "numeric"),
        ("category", "categorical"),
        ("merchant", "categorical"),
        ("value", "numeric"),
    ]


def test_older_segments_are_widened_on_read_and_rewritten_by_compaction(
    store_target: Target, tmp_path: Path
) -> None:
    narrow = definitions(tmp_path / "narrow.toml", DEFAULT_FIELDS)
    wide = definitions(tmp_path / "wide.toml", WIDER_FIELDS)
    store = open_with(store_target, narrow)
    try:
        ingest(store, narrow, [{"entity_id": "a", "timestamp": T0, "value": 1.0, "category": "x"}])
    finally:
        store.close()
    store = open_with(store_target, wide)
    try:
        ingest(
            store,
            wide,
            [{"entity_id": "a", "timestamp": T0 + 1, "value": 2.0, "amount": 7.0, "merchant": "m"}],
        )
        assert sorted(r[0] for r in store_target.sql("SELECT n_fields FROM segments")) == [2, 4]
        got = entity(store.read(["a"]), 0)
        assert got["value"] == [1.0, 2.0]
        assert same(got["amount"], [math.nan, 7.0])
        assert got["merchant"] == [NO_LABEL, 0]
        assert got["category"] == [0, NO_LABEL]
        before = got
        assert store.compact() == 1
        assert [r[0] for r in store_target.sql("SELECT n_fields FROM segments")] == [4]
        after = entity(store.read(["a"]), 0)
        assert after.keys() == before.keys()
        assert all(same(after[k], before[k]) for k in before)
    finally:
        store.close()


FIRST_FIELDS = {**DEFAULT_FIELDS, "amount": {"kind": "numeric"}}
VALUE = {"value": {"kind": "numeric", "required": True}}


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({**VALUE, "amount": {"kind": "numeric"}}, ["'category'", "removing a field"]),
        (
            {**VALUE, "category": {"kind": "numeric"}, "amount": {"kind": "numeric"}},
            ["'category'", "changing a field's kind"],
        ),
        (
            {**FIRST_FIELDS, "extra": {"kind": "numeric", "required": True}},
            ["'extra'", "declare it optional"],
        ),
        (
            {**DEFAULT_FIELDS, "amount": {"kind": "numeric", "required": True}},
            ["'amount'", "stored events may lack it"],
        ),
    ],
)
def test_a_schema_that_does_not_fit_the_stored_fields_is_refused_naming_the_field(
    store_target: Target, tmp_path: Path, fields: dict, words: list[str]
) -> None:
    open_with(store_target, definitions(tmp_path / "first.toml", FIRST_FIELDS)).close()
    with pytest.raises(SchemaMismatch) as raised:
        open_with(store_target, definitions(tmp_path / "second.toml", fields))
    message = str(raised.value)
    assert all(word in message for word in words), message
    assert "\n" not in message
    # Nothing was changed: the first definitions still open the store.
    open_with(store_target, str(tmp_path / "first.toml")).close()


def test_served_versions_are_recorded_immutable_and_forgotten(store_target: Target) -> None:
    store = store_target.open()
    try:
        assert store.served_versions() == {}
        store.record_versions({"v1": "a" * 64, "v2": "b" * 64})
        served = store.served_versions()
        assert {name: digest for name, (digest, _) in served.items()} == {
            "v1": "a" * 64,
            "v2": "b" * 64,
        }
        store.record_versions({"v1": "a" * 64})  # the same definition again: nothing changes
        assert store.served_versions() == served
        with pytest.raises(SchemaMismatch) as raised:
            store.record_versions({"v2": "b" * 64, "v1": "c" * 64}, source="new.toml")
        message = str(raised.value)
        assert message.startswith("new.toml: version 'v1'")
        assert "a" * 16 in message and "c" * 16 in message
        assert "featurestore definitions forget v1" in message
        assert store.served_versions() == served  # the refused call recorded nothing
        assert store.forget_version("v1") is True
        assert store.forget_version("v1") is False
        assert store.forget_version("never") is False
        store.record_versions({"v1": "c" * 64})
        again = store.served_versions()
        assert again["v1"][0] == "c" * 64 and again["v2"] == served["v2"]
        assert again["v1"][1] >= served["v1"][1]  # a new serving epoch
    finally:
        store.close()
    other = store_target.open()  # another connection (another host) sees the same record
    try:
        assert other.served_versions() == again
    finally:
        other.close()


def test_counts_count_the_labels_of_every_field(store_target: Target, tmp_path: Path) -> None:
    path = definitions(tmp_path / "wide.toml", WIDER_FIELDS)
    store = open_with(store_target, path)
    try:
        ingest(
            store,
            path,
            [
                {"entity_id": "a", "timestamp": T0, "value": 1.0, "category": "x", "merchant": "x"},
                {"entity_id": "b", "timestamp": T0, "value": 1.0, "merchant": "y"},
            ],
        )
        assert store.counts() == {"entities": 2, "events": 2, "categories": 3}
        assert np.array_equal(store.read(["b"]).labels["merchant"], [1])
    finally:
        store.close()
