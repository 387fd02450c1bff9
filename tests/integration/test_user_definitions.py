"""A service started with a user's definitions file (SPEC §14), on real processes.

The file is the shipped one plus two fields (`amount`, numeric and optional; `merchant`,
categorical) and a version `pay1` of windowed, filtered aggregations, a hidden feature, an
expression and a hash. Events with the extra fields go in over HTTP and from a file; `pay1`
is served side by side with v1 (which stays exactly as the shipped file computes it); drift
monitors `pay1`; an undeclared key is refused naming it; a restart with `pay1` changed is
refused naming the version and both hashes, and works after `featurestore definitions
forget pay1` (on a SQLite store and on a PostgreSQL one).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from http_support import gateway_stack, http_client
from store_targets import BACKENDS, Target

from featurestore.config import VARIABLES
from featurestore.definitions import SHIPPED_FILE, load_definitions, shipped_definitions
from featurestore.exitcodes import EXIT_CONFIG
from featurestore.features.engine import compute
from featurestore.ops.launcher import Stack
from featurestore.store.batch import EventBatch
from featurestore.timestamps import now_ms

DAY_MS = 86_400_000
CLI_TIMEOUT_S = 120

PAY1 = """
[fields.amount]
kind = "numeric"

[fields.merchant]
kind = "categorical"

[versions.pay1]
description = "Payments"

[[versions.pay1.features]]
name = "food_count_7d"
op = "count"
window = "7d"
where = { merchant = "food" }

[[versions.pay1.features]]
name = "amount_sum_30d"
op = "sum"
field = "amount"
window = "30d"

[[versions.pay1.features]]
name = "amount_events"
op = "count"
field = "amount"
serve = false

[[versions.pay1.features]]
name = "events"
op = "count"

[[versions.pay1.features]]
name = "share_with_amount"
expr = "amount_events / events"

[[versions.pay1.features]]
name = "big_amounts"
op = "count"
where = { amount = { gt = 100 } }

[[versions.pay1.features]]
name = "last_merchant"
op = "last_label"
field = "merchant"

[[versions.pay1.features]]
name = "merchant_hash"
op = "hash"
field = "merchant"
buckets = 1000
"""


def user_file(path: Path, pay1: str = PAY1) -> Path:
    path.write_text(SHIPPED_FILE.read_text() + pay1)
    return path


@pytest.fixture(scope="module")
def definitions_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return user_file(tmp_path_factory.mktemp("definitions") / "payments.toml")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, definitions_file: Path) -> Iterator[Stack]:
    env = {
        "FEATURES_FILE": str(definitions_file),
        "DRIFT_BASELINE_SIZE": "20",
        "DRIFT_WINDOW_SIZE": "20",
        "DRIFT_MIN_CURRENT": "10",
        "DRIFT_CHECK_INTERVAL_MS": "200",
    }
    data_dir = tmp_path_factory.mktemp("user-store")
    with gateway_stack(data_dir, drift=True, env=env) as started:
        yield started


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as client:
        yield client


def post_events(api: httpx.Client, events: list[dict]) -> dict:
    response = api.post("/events", json={"events": events})
    assert response.status_code == 200, response.text
    return response.json()


def features(api: httpx.Client, entity_id: str, version: str, as_of: int) -> dict:
    response = api.post(
        "/features", json={"entity_id": entity_id, "version": version, "as_of": as_of}
    )
    assert response.status_code == 200, response.text
    return response.json()["features"]


def payment_events(entity_id: str, end: int) -> list[dict]:
    """Events of one entity with and without the new fields, inside and outside the windows."""
    rows = [
        (end - 40 * DAY_MS, 1.0, "web", 500.0, "food"),  # outside 30d and 7d
        (end - 10 * DAY_MS, 2.0, None, 120.0, "travel"),  # inside 30d only
        (end - 3 * DAY_MS, 3.0, "app", None, "food"),  # inside 7d, no amount
        (end - 2 * DAY_MS, 4.0, "app", 50.0, None),  # no merchant
        (end - DAY_MS, 5.0, "web", 101.0, "food"),
    ]
    events = []
    for ts, value, category, amount, merchant in rows:
        event = {"entity_id": entity_id, "timestamp": ts, "value": value}
        if category is not None:
            event["category"] = category
        if amount is not None:
            event["amount"] = amount
        if merchant is not None:
            event["merchant"] = merchant
        events.append(event)
    return events


def test_the_new_version_is_served_beside_v1_from_events_with_the_new_fields(api: httpx.Client):
    end = now_ms() - 60_000
    events = payment_events("cust-1", end)
    assert post_events(api, events) == {"accepted": 5, "duplicates": 0}
    got = features(api, "cust-1", "pay1", end)
    # the food events of the last 7 days: end - 3 d and end - 1 d
    assert got["food_count_7d"] == 2
    assert got["amount_sum_30d"] == 120.0 + 50.0 + 101.0
    assert got["events"] == 5
    assert got["share_with_amount"] == 4 / 5  # the event without an amount is skipped
    assert got["big_amounts"] == 3  # 500, 120, 101; an event without amount never matches
    assert got["last_merchant"] == 0  # the last event's merchant, "food", was labelled first
    assert isinstance(got["merchant_hash"], int) and 0 <= got["merchant_hash"] < 1000
    assert "amount_events" not in got  # serve = false
    # v1 on the same events is what the shipped definitions compute (new fields ignored)
    v1 = features(api, "cust-1", "v1", end)
    batch = EventBatch.from_columns(
        ["cust-1"],
        ts=[e["timestamp"] for e in events],
        value=[e["value"] for e in events],
        category=[{"web": 0, "app": 1}.get(e.get("category"), -1) for e in events],
    )
    expected = compute(batch, np.array([0]), end, "v1", ["web", "app"]).values[0]
    names = shipped_definitions().versions["v1"].names
    for name, value in zip(names, expected.tolist(), strict=True):
        assert v1[name] == (None if value != value else value), name


def test_an_undeclared_key_is_refused_naming_it(api: httpx.Client):
    event = {"entity_id": "x", "timestamp": now_ms() - 1000, "value": 1.0, "colour": "red"}
    response = api.post("/events", json={"events": [event]})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_request"
    assert {"index": 0, "field": "colour", "reason": "unknown field"} in body["errors"]
    # a required field stays required, an optional one may be null
    response = api.post(
        "/events", json={"events": [{"entity_id": "x", "timestamp": now_ms(), "amount": 1.0}]}
    )
    assert response.status_code == 400
    assert {"index": 0, "field": "value", "reason": "is required"} in response.json()["errors"]
    ok = {"entity_id": "nulls", "timestamp": now_ms() - 1000, "value": 1.0, "amount": None}
    assert post_events(api, [{**ok, "merchant": None}]) == {"accepted": 1, "duplicates": 0}


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({k: v for k, v in stack.environ.items() if k in VARIABLES})
    return subprocess.run(
        [sys.executable, "-m", "featurestore", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def test_a_file_with_the_new_fields_is_ingested_and_served_at_once(
    api: httpx.Client, stack: Stack, tmp_path: Path
):
    end = now_ms() - 60_000
    path = tmp_path / "payments.csv"
    path.write_text(
        "entity_id,timestamp,value,category,amount,merchant\n"
        f"cust-2,{end - 2 * DAY_MS},1.5,web,10.0,food\n"
        f"cust-2,{end - DAY_MS},2.5,,,food\n"
        f"cust-2,{end - 8 * DAY_MS},3.5,app,250.0,\n"
    )
    done = cli(stack, "ingest", str(path))
    assert done.returncode == 0, done.stderr
    got = features(api, "cust-2", "pay1", end)
    assert got["food_count_7d"] == 2
    assert got["amount_sum_30d"] == 260.0
    assert got["share_with_amount"] == 2 / 3
    assert got["big_amounts"] == 1
    # a column that is not a declared field is refused, naming it; nothing is stored
    bad = tmp_path / "bad.csv"
    bad.write_text(f"entity_id,timestamp,value,colour\ncust-3,{end},1.0,red\n")
    refused = cli(stack, "ingest", str(bad))
    assert refused.returncode != 0
    assert "colour" in refused.stderr and "not declared" in refused.stderr
    assert api.post("/features", json={"entity_id": "cust-3"}).status_code == 404


def test_definitions_list_the_new_version_with_its_hash(api: httpx.Client, definitions_file):
    body = api.get("/features/definitions").json()
    assert body["versions"] == ["v1", "v2", "pay1"]
    loaded = load_definitions(definitions_file)
    assert body["hashes"]["pay1"] == loaded.versions["pay1"].content_hash
    assert body["hashes"]["v1"] == shipped_definitions().versions["v1"].content_hash
    listed = {f["name"]: f for f in body["features"]["pay1"]}
    assert list(listed) == loaded.versions["pay1"].names
    assert listed["food_count_7d"]["definition"] == {
        "op": "count",
        "window": "7d",
        "where": {"merchant": "food"},
    }
    assert (listed["food_count_7d"]["kind"], listed["food_count_7d"]["type"]) == ("numeric", "int")
    assert listed["merchant_hash"]["kind"] == "identifier"
    assert listed["last_merchant"]["kind"] == "categorical"


def test_metrics_show_each_served_version_with_its_hash(api: httpx.Client, definitions_file):
    text = api.get("/metrics").text
    loaded = load_definitions(definitions_file)
    for version, features in loaded.versions.items():
        sample = (
            f'featurestore_version_features{{hash="{features.content_hash}",version="{version}"}} '
            f"{float(len(features.features))}"
        )
        assert sample in text, version


def test_drift_monitors_the_new_version(api: httpx.Client):
    end = now_ms() - 60_000
    ids = [f"drift-{i}" for i in range(20)]
    events = [
        {
            "entity_id": e,
            "timestamp": end - k * DAY_MS,
            "value": float(k),
            "amount": 10.0 * i,
            "merchant": ("food", "travel")[i % 2],
        }
        for i, e in enumerate(ids)
        for k in range(1, 4)
    ]
    post_events(api, events)
    reply = api.post(
        "/drift/baseline", json={"action": "entity_ids", "entity_ids": ids, "version": "pay1"}
    )
    assert reply.status_code == 200, reply.text
    monitored = reply.json()["features"]["pay1"]
    assert "amount_sum_30d" in monitored and "merchant_hash" not in monitored
    report = api.get("/drift/report").json()
    pay1 = {d["feature"]: d for d in report["drift_details"] if d["version"] == "pay1"}
    assert set(pay1) == set(monitored)
    assert pay1["amount_sum_30d"]["baseline"]["count"] == 20


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_changed_served_version_is_refused_until_it_is_forgotten(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
):
    data_dir = tmp_path / "store"
    store_env: dict[str, str] = {}
    if backend == "postgresql":  # the versions of a store several hosts share
        store_env["STORE_URL"] = request.getfixturevalue("pg_url")
        Target.make(backend, data_dir, store_env["STORE_URL"]).reset()
    first = user_file(tmp_path / "first.toml")
    env = {"FEATURES_FILE": str(first), **store_env}
    with Stack(data_dir, workers=1, env=env) as stack, stack.client() as client:
        client.ingest([{"entity_id": "a", "timestamp": now_ms() - 1000, "value": 1.0}])
    changed = user_file(tmp_path / "changed.toml", PAY1.replace('window = "7d"', 'window = "14d"'))
    old_hash = load_definitions(first).versions["pay1"].content_hash
    new_hash = load_definitions(changed).versions["pay1"].content_hash
    changed_env = {"FEATURES_FILE": str(changed), **store_env}
    refused = Stack(data_dir, workers=1, env=changed_env, autorestart=False)
    with pytest.raises(RuntimeError) as raised:
        refused.start()
    message = str(raised.value)
    assert "exited with 78" in message
    assert "'pay1'" in message and old_hash[:16] in message and new_hash[:16] in message
    # `featurestore serve` refuses it too, before starting anything
    env = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    env.update({"DATA_DIR": str(data_dir), **changed_env})
    env.update({k: refused.environ[k] for k in ("PORT", "CACHE_NAME", "BROKER_FRONTEND")})
    serve = subprocess.run(
        [sys.executable, "-m", "featurestore", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert serve.returncode == EXIT_CONFIG, serve.stderr
    assert "pay1" in serve.stderr and "definitions forget pay1" in serve.stderr
    forgot = subprocess.run(
        [sys.executable, "-m", "featurestore", "definitions", "forget", "pay1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    assert forgot.returncode == 0, forgot.stderr
    served = Stack(data_dir, workers=1, env=changed_env)
    with served as stack, stack.client() as client:
        assert client.get("a", version="pay1")["features"]["events"] == 1
