"""A full disk under the running service (SPEC §5, §11): an ingest that does not fit is
refused whole with 503 `store_unavailable` and Retry-After (over HTTP and ZeroMQ), `/health`
says degraded while the store cannot write, reads go on, and once space is freed the worker
finds out by itself: health is ok again and the same request is stored whole.

The disk fills for real: a small tmpfs where this machine allows mounting one, else an
RLIMIT_FSIZE of one byte on the compute worker (disk_support.py); each way runs where it can.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from disk_support import FileSizeLimit, SmallTmpfs
from http_support import HTTP_TIMEOUT_S, REQUEST_ID, gateway_stack

from featurestore.errors import Code, ServiceError
from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.errors import STORE_RETRY_AFTER_S
from featurestore.timestamps import now_ms

MINUTE_MS = 60_000
BIG_INGEST = 10_000  # events (and entities): far more than any slack left in the WAL
HEALTH_TIMEOUT_S = 10.0
RECOVERY_TIMEOUT_S = 30.0


@pytest.fixture(scope="module", params=["tmpfs", "rlimit"])
def disk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"full-{request.param}")
    made = SmallTmpfs(root / "logs") if request.param == "tmpfs" else FileSizeLimit(root)
    reason = made.setup()
    if reason is not None:
        pytest.skip(reason)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def stack(disk) -> Iterator[Stack]:
    with gateway_stack(disk.data_dir, workers=1) as running:
        disk.attach(running.pid("worker-0"))
        yield running


@pytest.fixture
def api(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.http_url, timeout=HTTP_TIMEOUT_S) as client:
        yield client


def big_events(prefix: str) -> list[dict]:
    start = now_ms() - BIG_INGEST * 10
    return [
        {
            "entity_id": f"{prefix}-{i:05d}",
            "timestamp": start + i,
            "value": float(i),
            "category": f"c{i % 7}",
            "event_id": f"{prefix}-ev-{i}",
        }
        for i in range(BIG_INGEST)
    ]


def post(api: httpx.Client, events: list[dict], request_id: str) -> httpx.Response:
    return api.post("/events", json={"events": events}, headers={REQUEST_ID: request_id})


def health(api: httpx.Client) -> dict:
    return api.get("/health").json()


def statuses(api: httpx.Client, entity_ids: list[str]) -> list[str]:
    response = api.post("/features/batch", json={"entity_ids": entity_ids})
    assert response.status_code == 200, response.text
    return [item["status"] for item in response.json()["features"]]


def test_a_full_disk_refuses_an_ingest_whole_then_the_worker_recovers(
    stack: Stack, disk, api: httpx.Client
) -> None:
    # Given a healthy service that stored some events
    seed = [{"entity_id": "seed", "timestamp": now_ms() - MINUTE_MS, "value": 1.0}]
    assert post(api, seed, "seed-1").status_code == 200
    assert (health(api)["status"], health(api)["store"]) == ("ok", "ok")
    events = big_events(f"full-{disk.name}")
    probe_ids = [events[0]["entity_id"], events[BIG_INGEST // 2]["entity_id"], "seed"]

    # When the disk is full and an ingest of 10,000 events comes, over HTTP and ZeroMQ
    disk.fill()
    try:
        refused = post(api, events, "full-1")
        with stack.client() as fs, pytest.raises(ServiceError) as over_zmq:
            fs.ingest(events, request_id="full-zmq-1")

        # Then it is refused whole: 503 store_unavailable with Retry-After, not 500 internal
        assert refused.status_code == 503, refused.text
        body = refused.json()
        assert body["error"] == "store_unavailable"
        assert "nothing was stored" in body["message"]
        assert body["retry_after_s"] == STORE_RETRY_AFTER_S
        assert refused.headers["Retry-After"] == str(STORE_RETRY_AFTER_S)
        assert over_zmq.value.code is Code.STORE_UNAVAILABLE
        assert over_zmq.value.extra["retry_after_s"] == STORE_RETRY_AFTER_S
        # /health says degraded (from the worker's next heartbeat), reads go on, and none
        # of the refused events is there
        degraded = wait_for(
            lambda: (h := health(api))["store"] == "unavailable" and h,
            HEALTH_TIMEOUT_S,
            "/health to report the store unavailable",
        )
        assert degraded["status"] == "degraded"
        assert degraded["workers"] == {"alive": 1, "expected": 1}
        assert statuses(api, probe_ids) == ["not_found", "not_found", "ok"]
        assert "featurestore_store_up 0.0" in api.get("/metrics").text.splitlines()
    finally:
        # When space is freed
        disk.free()

    # Then the worker finds out by itself, and the same request is stored whole (the refused
    # attempt left no event id and no request id behind)
    recovered = wait_for(
        lambda: (h := health(api))["store"] == "ok" and h,
        RECOVERY_TIMEOUT_S,
        "/health to report the store ok again",
    )
    assert recovered["status"] == "ok"
    stored = post(api, events, "full-1")
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"accepted": BIG_INGEST, "duplicates": 0}
    assert statuses(api, probe_ids) == ["ok", "ok", "ok"]
    assert Path(stack.data_dir, "events.sqlite3").stat().st_size > 0
