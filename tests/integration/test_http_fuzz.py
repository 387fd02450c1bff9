"""Property-based fuzzing of the HTTP API from its own /openapi.json (schemathesis), against a
real stack with drift monitoring on, so every operation reaches the process that serves it.

Each operation gets a bounded number of generated requests, valid and invalid, plus
schemathesis' coverage cases (edge values, missing fields, undeclared methods). Checks: no 500
ever; 503 and 504 only where documented, only with their catalogue codes, and 503 with
Retry-After; every status documented; every body of the documented media type and schema;
invalid requests refused (4xx); 405 with `Allow`; X-Request-Id echoed. Not checked:
"every schema-valid request is accepted", because JSON Schema cannot say what the API rightly
refuses (ids counted in UTF-8 bytes, as_of later than now, impossible dates, unknown entities).

Valid requests would almost never name an existing entity, so a hook maps half of their entity
ids onto the demo's and their epoch timestamps into its 100 days, to reach the 200 answers too.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from http_support import HTTP_TIMEOUT_S, REQUEST_ID, error_json, gateway_stack, http_client, ok_json
from hypothesis import HealthCheck, settings
from integration_support import DAY_MS, DEMO_END_MS, DEMO_ENTITIES, entity

from featurestore.ops.launcher import Stack

MAX_EXAMPLES = 30
SPAN_MS = 100 * DAY_MS
UNAVAILABLE = {503: {"overloaded", "no_workers"}, 504: {"timeout"}}


@pytest.fixture(scope="module")
def stack(demo_dir: Path) -> Iterator[Stack]:
    with gateway_stack(demo_dir, workers=2, drift=True) as running:
        yield running


@pytest.fixture(scope="module")
def api(stack: Stack) -> Iterator[httpx.Client]:
    with http_client(stack) as client:
        yield client


@pytest.fixture(scope="module")
def api_schema(stack: Stack):
    config = schemathesis.Config.from_dict(
        {
            "checks": {
                # 413 (batch_too_large, over maxItems) is a refusal too
                "negative_data_rejection": {"expected-statuses": ["400", "404", "405", "413"]},
                "positive_data_acceptance": {"enabled": False},
            },
        }
    )
    loaded = schemathesis.openapi.from_url(
        f"{stack.http_url}/openapi.json", config=config, timeout=HTTP_TIMEOUT_S
    )
    loaded.hook("map_case")(_towards_the_demo)
    return loaded


def _demo_id(value: object) -> object:
    """Half of the strings become a demo entity id (chosen by the string's CRC)."""
    if not isinstance(value, str):
        return value
    digest = zlib.crc32(value.encode("utf-8", "surrogatepass"))
    return entity(digest % DEMO_ENTITIES) if digest % 2 == 0 else value


def _demo_time(value: object) -> object:
    """Epoch ms into the demo's last 100 days (online answers need as_of <= now)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return DEMO_END_MS - value % SPAN_MS
    return value


def _towards_the_demo(context, case):
    meta = case.meta
    body = case.body
    if meta is None or not meta.generation.mode.is_positive or not isinstance(body, dict):
        return case
    if "entity_id" in body:
        body["entity_id"] = _demo_id(body["entity_id"])
    if isinstance(body.get("entity_ids"), list):
        body["entity_ids"] = [_demo_id(e) for e in body["entity_ids"]]
    if "as_of" in body:
        body["as_of"] = _demo_time(body["as_of"])
    for key in ("rows", "events"):
        for item in body.get(key) or ():
            if isinstance(item, dict):
                item["entity_id"] = _demo_id(item.get("entity_id"))
                item["timestamp"] = _demo_time(item.get("timestamp"))
    return case


# ----------------------------------------------------------------------------- checks
def no_internal_error(ctx, response, case) -> None:
    assert response.status_code != 500, f"500 internal: {response.text}"


def unavailable_only_as_documented(ctx, response, case) -> None:
    """503/504 only where the document lists them, with a catalogue code and Retry-After."""
    status = response.status_code
    if status not in UNAVAILABLE:
        return
    assert str(status) in case.operation.definition.raw["responses"], status
    body = response.json()
    if case.operation.path == "/health" and status == 503:
        assert body["status"] == "down"
        return
    assert body["error"] in UNAVAILABLE[status], body
    if status == 503:
        assert response.headers.get("retry-after"), "503 without Retry-After"


def request_id_echoed(ctx, response, case) -> None:
    got = response.headers.get("x-request-id")
    assert got, "no X-Request-Id"
    sent = (case.headers or {}).get(REQUEST_ID)
    if response.status_code < 400 and sent is not None:
        assert got == [sent], (sent, got)


CHECKS = [no_internal_error, unavailable_only_as_documented, request_id_echoed]

schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_conforms_to_the_openapi_document(case) -> None:
    response = case.call(timeout=HTTP_TIMEOUT_S)
    case.validate_response(response, additional_checks=CHECKS)


# ------------------------------------------------- drift routes with monitoring on
def test_drift_report_and_baseline_with_monitoring_on(api: httpx.Client) -> None:
    report = ok_json(api.get("/drift/report"))
    assert report["status"] in {"insufficient_data", "ok", "drift_detected"}
    assert report["features_monitored"] == len(report["drift_details"])
    reset = ok_json(api.post("/drift/baseline", json={"action": "reset", "version": "v1"}))
    assert reset["action"] == "reset"
    error_json(api.post("/drift/baseline", json={"action": "nope"}), 400, "invalid_request")


def test_drift_baseline_with_a_non_string_version_is_invalid_request(api: httpx.Client) -> None:
    response = api.post("/drift/baseline", json={"action": "reset", "version": {}})
    error_json(response, 400, "invalid_request")


@pytest.mark.parametrize("extra", [{"entity_ids": True}, {"path": 5}, {"entity_ids": ["a", 1]}])
def test_drift_baseline_fields_of_the_wrong_type_are_invalid_requests(
    api: httpx.Client, extra: dict
) -> None:
    response = api.post("/drift/baseline", json={"action": "reset", **extra})
    error_json(response, 400, "invalid_request")
