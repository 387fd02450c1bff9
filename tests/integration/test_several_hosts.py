"""Two hosts on one PostgreSQL store (SPEC §15): two stacks of real processes (each its own
DATA_DIR, cache, ports and listener) sharing one database.

- An ingest on host A is read at once on A (read your writes) and served fresh on host B
  within MAX_STALENESS_MS, through B's gateway (HTTP) and B's broker (ZeroMQ) alike.
- B's listener cut off (its connection killed with pg_terminate_backend, its role refused
  new logins): B stops serving hits within the bound and computes from the store, /health
  says so, and B catches up by itself once the listener may connect again.
- The database restarted (a crash) under mixed load on both hosts, then gone for a while:
  while it is gone, writes answer 503 `store_unavailable` and the hits within the bound are
  still served; no acknowledged event is lost, none is stored twice, and both hosts recover
  by themselves.

Host A speaks ZeroMQ only, host B has the gateway too (two stacks on two cores).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from http_support import HTTP_TIMEOUT_S, parse_prometheus, start_gateway_stack
from integration_support import DEMO_END_MS
from pg_support import Databases

from featurestore.config import Settings
from featurestore.errors import Code, ServiceError
from featurestore.offline.demo import write_demo
from featurestore.ops.launcher import Stack, wait_for
from featurestore.store.factory import open_event_store
from featurestore.timestamps import now_ms

STALENESS_MS = 1000
ENTITIES = 100
RECOVERY_TIMEOUT_S = 60.0
LOAD_TIMEOUT_S = 90.0
CLIENT_TIMEOUT_MS = 8000
RETRYABLE = {Code.STORE_UNAVAILABLE, Code.TIMEOUT, Code.NO_WORKERS, Code.OVERLOADED}


def with_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass
class Hosts:
    a: Stack
    b: Stack
    b_role: str
    url: str


@pytest.fixture(scope="module")
def hosts(
    pg_url: str, postgres: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hosts]:
    base = tmp_path_factory.mktemp("hosts")
    seed = Settings.from_env({"DATA_DIR": str(base / "seed"), "STORE_URL": pg_url})
    (base / "seed").mkdir()
    store = open_event_store(seed)
    try:
        write_demo(store, base / "seed", entities=ENTITIES, seed=3, end_ms=DEMO_END_MS)
    finally:
        store.close()
    # Host B logs in as a role of its own, so that a test can cut it off alone.
    role = f"fs_host_b_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    postgres.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    for grant in (
        f"GRANT USAGE ON SCHEMA featurestore TO {role}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA featurestore TO {role}",
    ):
        postgres.execute(grant, pg_url)
    env = {"MAX_STALENESS_MS": str(STALENESS_MS), "REQUEST_TIMEOUT_MS": "6000"}
    a = Stack(base / "a", workers=1, env={**env, "STORE_URL": pg_url})
    b = Stack(
        base / "b",
        workers=1,
        gateway=True,
        env={**env, "STORE_URL": with_user(pg_url, role, password)},
    )
    try:
        a.start()
        start_gateway_stack(b)
        yield Hosts(a, b, role, pg_url)
    finally:
        a.stop()
        b.stop()
        postgres.execute(f"DROP OWNED BY {role}", pg_url)
        postgres.execute(f"DROP ROLE IF EXISTS {role}")


def value_max_http(http: httpx.Client, entity: str) -> tuple[float, bool]:
    body = http.post("/features", json={"entity_id": entity}).json()
    return body["features"]["value_max"], body["cached"]


def value_max_zmq(stack: Stack, entity: str) -> tuple[float, bool]:
    with stack.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
        body = fs.get(entity)
    return body["features"]["value_max"], body["cached"]


def warm(hosts: Hosts, http: httpx.Client, entity: str) -> None:
    """B serves `entity` from its cache, over HTTP and ZeroMQ."""
    wait_for(lambda: value_max_http(http, entity)[1], 10, "an HTTP hit on B")
    wait_for(lambda: value_max_zmq(hosts.b, entity)[1], 10, "a ZeroMQ hit on B")


def answers_after(hosts: Hosts, http: httpx.Client, entity: str, until: float) -> list:
    """(started, value_max over HTTP, value_max over ZeroMQ) from B, until `until`."""
    seen = []
    while time.monotonic() < until:
        started = time.monotonic()
        seen.append((started, value_max_http(http, entity)[0], value_max_zmq(hosts.b, entity)[0]))
    return seen


def assert_fresh_within_the_bound(seen: list, acked: float, value: float) -> None:
    late = [(http, zmq) for started, http, zmq in seen if started > acked + STALENESS_MS / 1000]
    assert late, "no answer after the bound"
    assert all(http == value and zmq == value for http, zmq in late), late[:5]


# -------------------------------------------------------------------------------- fresh
def test_an_ingest_on_one_host_is_served_fresh_on_the_other_within_the_bound(
    hosts: Hosts,
) -> None:
    entity = "user_00007"
    marker = 1e9 + 7  # above every demo value: value_max tells old from new
    with httpx.Client(base_url=hosts.b.http_url, timeout=HTTP_TIMEOUT_S) as http:
        # Given B serving the entity from its cache (HTTP and ZeroMQ)
        warm(hosts, http, entity)

        # When A stores an event of it
        with hosts.a.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
            fs.ingest([{"entity_id": entity, "timestamp": now_ms(), "value": marker}])
            acked = time.monotonic()
            # Then A reads it at once (read your writes on the writing host)
            assert fs.get(entity)["features"]["value_max"] == marker

        # and B serves it within the bound, over both interfaces, never the old value after
        seen = answers_after(hosts, http, entity, acked + STALENESS_MS / 1000 + 0.5)
        fresh_at = next(s for s, h, z in seen if h == marker and z == marker)
        assert fresh_at - acked < STALENESS_MS / 1000
        assert all(h == marker and z == marker for s, h, z in seen if s >= fresh_at)
        health = http.get("/health").json()
    assert health["store_backend"] == "postgresql" and health["status"] == "ok"
    assert health["listener"]["state"] == "live" and health["listener"]["fresh"] is True
    assert health["listener"]["changes_applied"] >= 1
    assert "listener" in health["memory"]


# ------------------------------------------------------------------------------ cut off
def test_a_cut_off_listener_stops_stale_hits_within_the_bound(
    hosts: Hosts, postgres: Databases
) -> None:
    entity = "user_00011"
    marker = 1e9 + 11
    with httpx.Client(base_url=hosts.b.http_url, timeout=HTTP_TIMEOUT_S) as http:
        warm(hosts, http, entity)
        # When B's listener is cut off: its connection killed, no new login for B
        postgres.execute(f"ALTER ROLE {hosts.b_role} NOLOGIN")
        try:
            killed = postgres.terminate(hosts.url, "featurestore-listener", hosts.b_role)
            assert killed == 1
            # and A stores an event of the entity B has cached
            with hosts.a.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
                fs.ingest([{"entity_id": entity, "timestamp": now_ms(), "value": marker}])
            acked = time.monotonic()

            # Then B answers fresh after the bound at the latest (computed by its workers)
            seen = answers_after(hosts, http, entity, acked + STALENESS_MS / 1000 + 0.5)
            assert_fresh_within_the_bound(seen, acked, marker)
            assert not value_max_http(http, entity)[1]  # no hit while it is cut off
            health = http.get("/health").json()
            assert health["status"] == "degraded"
            assert health["listener"]["state"] == "disconnected"
            assert health["listener"]["fresh"] is False
            metrics = parse_prometheus(http.get("/metrics").text)[1]
            fresh = [v for name, _, v in metrics if name == "featurestore_listener_fresh"]
            assert fresh == [0.0]
        finally:
            postgres.execute(f"ALTER ROLE {hosts.b_role} LOGIN")

        # And once it may connect again, it catches up and B serves hits again by itself
        def recovered() -> bool:
            listener = http.get("/health").json()["listener"]
            return listener["fresh"] and listener["state"] == "live"

        wait_for(recovered, RECOVERY_TIMEOUT_S, "B's listener to be live again")
        warm(hosts, http, entity)
        assert value_max_http(http, entity) == (marker, True)
        assert http.get("/health").json()["listener"]["reconnects"] >= 1


# ------------------------------------------------------------------------------ restart
@dataclass
class Writer:
    """Ingests through one host until told to stop, each request retried with its request
    id until acknowledged; knows what it sent."""

    stack: Stack
    name: str
    acked: list[list[float]] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def events(self, n: int) -> list[dict]:
        base = (1e7 if self.name == "a" else 2e7) + n * 10
        return [
            {
                "entity_id": f"load_{self.name}_{n % 10}",
                "timestamp": DEMO_END_MS - i,
                "value": base + i,
            }
            for i in range(5)
        ]

    def run(self) -> None:
        with self.stack.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
            n = 0
            while not self.stop.is_set():
                events = self.events(n)
                deadline = time.monotonic() + LOAD_TIMEOUT_S
                while time.monotonic() < deadline:  # finish this request even when stopping
                    try:
                        fs.ingest(events, request_id=f"load-{self.name}-{n}")
                    except ServiceError as error:
                        if error.code not in RETRYABLE:
                            self.failures.append(f"{error.code}: {error.message}")
                            return
                        self.refused[error.code.value] += 1
                        time.sleep(0.05)  # deadline-poll: retry until this request's deadline
                        continue
                    self.acked.append([e["value"] for e in events])
                    break
                else:
                    self.failures.append(f"request {n} never acknowledged")
                    return
                n += 1


@dataclass
class Reader:
    stack: Stack
    ids: list[str]
    answered: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with self.stack.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
            while not self.stop.is_set():
                try:
                    fs.batch(self.ids)
                    self.answered += 1
                except ServiceError as error:
                    if error.code not in RETRYABLE:
                        self.failures.append(f"{error.code}: {error.message}")
                    self.stop.wait(0.02)  # retry after, unless the test is stopping the load


def outage(hosts: Hosts, postgres: Databases, http: httpx.Client, cached: str) -> None:
    """The database gone for longer than the stores wait for it: writes are refused with
    503 store_unavailable (and Retry-After), hits within the bound are still served."""
    warm(hosts, http, cached)
    postgres.stop(mode="fast")
    stopped = time.monotonic()
    try:
        hit = http.post("/features", json={"entity_id": cached}).json()
        assert hit["cached"] is True and time.monotonic() - stopped < STALENESS_MS / 1000
        event = {"entity_id": "user_00002", "timestamp": now_ms(), "value": 1.0}
        refused = http.post("/events", json={"events": [event]})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "store_unavailable"
        assert int(refused.headers["Retry-After"]) >= 1
        health = http.get("/health").json()
        assert health["status"] == "degraded" and health["store"] == "unavailable"
    finally:
        postgres.start_again()


def test_a_database_restart_under_load_loses_and_doubles_nothing_and_both_hosts_recover(
    hosts: Hosts, postgres: Databases
) -> None:
    if not postgres.restartable:
        pytest.skip("FS_TEST_POSTGRES_URL: the server is not ours to restart")
    ids = [f"user_{i:05d}" for i in range(0, ENTITIES, 7)]
    writers = [Writer(hosts.a, "a"), Writer(hosts.b, "b")]
    readers = [Reader(hosts.a, ids), Reader(hosts.b, ids)]
    threads = [threading.Thread(target=w.run, daemon=True) for w in [*writers, *readers]]
    for thread in threads:
        thread.start()

    def progress(count: int) -> None:
        marks = [len(w.acked) for w in writers]
        wait_for(
            lambda: all(len(w.acked) >= n + count for w, n in zip(writers, marks, strict=True)),
            RECOVERY_TIMEOUT_S,
            "both hosts to store",
        )

    try:
        # Given load flowing on both hosts
        progress(5)
        # When the database crashes and restarts at once, then goes away for a while
        postgres.restart(mode="immediate")
        progress(5)
        with httpx.Client(base_url=hosts.b.http_url, timeout=HTTP_TIMEOUT_S) as http:
            outage(hosts, postgres, http, "user_00017")
        # Then the load goes on by itself on both hosts
        progress(5)
    finally:
        for worker in [*writers, *readers]:
            worker.stop.set()
        for thread in threads:
            thread.join(LOAD_TIMEOUT_S)
    assert not [f for w in [*writers, *readers] for f in w.failures]
    assert all(r.answered > 0 for r in readers)
    assert sum(w.refused[Code.STORE_UNAVAILABLE.value] for w in writers) > 0  # the outage

    # Every acknowledged event is stored, exactly once
    store = open_event_store(Settings.from_env({"STORE_URL": hosts.url}))
    try:
        loaded = [f"load_{w.name}_{k}" for w in writers for k in range(10)]
        stored = Counter(store.read(loaded).value.tolist())
    finally:
        store.close()
    sent = Counter(v for w in writers for request in w.acked for v in request)
    assert stored == sent
    assert max(stored.values()) == 1

    # Both hosts are healthy and fresh again, and B sees A's next write within the bound
    for stack in (hosts.a, hosts.b):
        wait_for(
            lambda stack=stack: (
                (h := stack.health()) and h["status"] == "ok" and h["listener"]["fresh"]
            ),
            RECOVERY_TIMEOUT_S,
            "health ok after the restart",
        )
    entity, marker = "user_00013", 1e9 + 13
    with httpx.Client(base_url=hosts.b.http_url, timeout=HTTP_TIMEOUT_S) as http:
        warm(hosts, http, entity)
        with hosts.a.client(timeout_ms=CLIENT_TIMEOUT_MS) as fs:
            fs.ingest([{"entity_id": entity, "timestamp": now_ms(), "value": marker}])
        acked = time.monotonic()
        seen = answers_after(hosts, http, entity, acked + STALENESS_MS / 1000 + 0.3)
        assert_fresh_within_the_bound(seen, acked, marker)
