"""The client's I/O-free core (featurestore/wire/client.py): correlation ids are private and
match replies whatever request ids the caller chose; resends and deadlines follow the clock
it is given; a foreign, duplicate or unreadable reply changes nothing. It runs here in a
process without any of the server's variables, as a user's program would."""

from __future__ import annotations

import os

import pytest

from featurestore.config import VARIABLES
from featurestore.errors import ServiceError
from featurestore.wire.client import Call, ClientCore
from featurestore.wire.envelope import decode_request, error_frames, reply_frames
from featurestore.wire.frames import Op
from featurestore.wire.messages import Code, GetRequest


@pytest.fixture(autouse=True)
def no_server_variables(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert not any(name in os.environ for name in VARIABLES)


def answer(frames: list, body: dict) -> list:
    """The broker's reply to a request's frames."""
    return reply_frames(decode_request(frames).correlation_id, body)


def test_replies_are_matched_by_correlation_id_even_when_request_ids_repeat():
    core = ClientCore(timeout_ms=1000, retry_ms=100)
    first, first_frames = core.start(Call(Op.GET, GetRequest("a"), "same-id"), now=0.0)
    second, second_frames = core.start(Call(Op.GET, GetRequest("b"), "same-id"), now=0.0)
    assert first != second
    assert core.received(answer(second_frames, {"entity_id": "b"})) == second
    assert core.received(answer(first_frames, {"entity_id": "a"})) == first
    assert core.response(first, "ep").body == {"entity_id": "a"}
    assert core.response(second, "ep").body == {"entity_id": "b"}
    assert core.calls == {}


def test_a_request_id_is_made_when_the_caller_gives_none():
    core = ClientCore(timeout_ms=1000, retry_ms=100)
    _, frames = core.start(Call(Op.GET, GetRequest("a")), now=0.0)
    assert decode_request(frames).request_id


def test_resends_come_due_on_the_given_clock_and_stop_once_answered():
    core = ClientCore(timeout_ms=1000, retry_ms=100)
    cid, frames = core.start(Call(Op.GET, GetRequest("a")), now=10.0)
    assert core.due([cid], now=10.05) == []
    assert core.due([cid], now=10.1) == [frames]  # the same frames, the same correlation id
    assert core.due([cid], now=10.15) == []  # the next one is scheduled 100 ms later
    assert core.wake_at([cid]) == pytest.approx(10.2)
    core.received(answer(frames, {}))
    assert core.due([cid], now=11.0) == []
    assert core.answered(cid)


def test_a_call_without_answer_expires_at_its_deadline_with_a_timeout():
    core = ClientCore(timeout_ms=1000, retry_ms=5000)
    cid, _ = core.start(Call(Op.GET, GetRequest("a"), timeout_ms=250), now=0.0)
    assert not core.expired(cid, now=0.2)
    assert core.expired(cid, now=0.25)
    with pytest.raises(ServiceError) as raised:
        core.response(cid, "tcp://127.0.0.1:1")
    assert raised.value.code == Code.TIMEOUT


def test_foreign_duplicate_and_unreadable_replies_are_ignored():
    core = ClientCore(timeout_ms=1000, retry_ms=100)
    cid, frames = core.start(Call(Op.GET, GetRequest("a")), now=0.0)
    assert core.received(reply_frames(cid + 1000, {})) is None  # not ours
    assert core.received([b"\xc1 not msgpack"]) is None
    assert core.received([]) is None
    assert not core.answered(cid)
    assert core.received(answer(frames, {"n": 1})) == cid
    assert core.received(answer(frames, {"n": 2})) is None  # a resend's second answer
    assert core.response(cid, "ep").body == {"n": 1}


def test_an_error_reply_raises_its_service_error():
    core = ClientCore(timeout_ms=1000, retry_ms=100)
    cid, frames = core.start(Call(Op.GET, GetRequest("a")), now=0.0)
    error = ServiceError(Code.ENTITY_NOT_FOUND, "no events for 'a'")
    core.received(error_frames(decode_request(frames).correlation_id, error))
    response = core.response(cid, "ep")
    assert not response.ok
    with pytest.raises(ServiceError) as raised:
        response.raise_for_error()
    assert raised.value.code == Code.ENTITY_NOT_FOUND
