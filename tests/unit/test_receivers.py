"""Every receiver decodes inside its error handling (SPEC §11): a malformed job, vector message
or oversized frame count is refused with a clear error, never a crash, and the socket is
ready for the next message. Real ZeroMQ sockets over inproc."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest
import zmq

from featurestore.config import Settings
from featurestore.wire.backend import (
    ERROR,
    decode_job,
    decode_vectors,
    job_frames,
    vectors_frames,
)
from featurestore.wire.envelope import error_of
from featurestore.wire.frames import W_RESULT, Op, ProtocolError, TooManyFrames, recv_frames
from featurestore.wire.messages import ComputeRequest
from workers.handlers import Figures
from workers.worker import ComputeThread

WIDTHS = {"v1": 4}


def pack(value: object) -> bytes:
    return msgspec.msgpack.encode(value)


TIMEOUT_MS = 2000


@pytest.fixture
def pair():
    context = zmq.Context()
    a, b = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    for s in (a, b):
        s.setsockopt(zmq.LINGER, 0)
    a.bind("inproc://receivers")
    b.connect("inproc://receivers")
    yield a, b
    a.close(linger=0)
    b.close(linger=0)
    context.term()


def test_recv_frames_refuses_a_message_past_the_cap_and_keeps_the_socket_usable(pair) -> None:
    sender, receiver = pair
    sender.send_multipart([b"head", *([b""] * 1000)])
    sender.send_multipart([b"next", b"ok"])
    assert receiver.poll(TIMEOUT_MS)
    with pytest.raises(TooManyFrames) as refused:
        recv_frames(receiver, 64)
    assert refused.value.count == 1001
    assert bytes(refused.value.kept[0]) == b"head"
    assert "64" in str(refused.value)
    assert [bytes(f) for f in recv_frames(receiver, 64)] == [b"next", b"ok"]


def test_recv_frames_takes_a_message_at_the_cap(pair) -> None:
    sender, receiver = pair
    sender.send_multipart([b"x"] * 64)
    assert receiver.poll(TIMEOUT_MS)
    assert len(recv_frames(receiver, 64, copy=True)) == 64


@pytest.mark.parametrize(
    "frames",
    [
        pytest.param([], id="nothing"),
        pytest.param([b"\x01" * 8], id="no-header"),
        pytest.param([b"\x01" * 8, b"\xc1garbage"], id="not-msgpack"),
        pytest.param([b"\x01" * 8, pack(["explode", "r"]), b"\x80"], id="unknown-op"),
        pytest.param([b"\x01" * 8, pack(["compute"]), b"\x80"], id="header-too-short"),
        pytest.param([b"\x01" * 8, pack({"op": "compute"}), b"\x80"], id="header-not-a-list"),
        pytest.param([b"\x01" * 8, pack(["compute", "r"])], id="no-payload"),
    ],
)
def test_a_malformed_job_is_a_protocol_error(frames: list) -> None:
    with pytest.raises(ProtocolError):
        decode_job(frames)


def test_a_compute_thread_answers_a_malformed_job_and_counts_it() -> None:
    figures = Figures()
    thread = ComputeThread(None, "inproc://unused", Settings.from_env({}), "0", figures)
    frames = thread.run_job(None, [b"\x07" * 8, b"\xc1garbage", b"\x80"])
    assert frames[0] == W_RESULT and bytes(frames[1]) == b"\x07" * 8
    assert frames[2] == ERROR and error_of(frames[3]).code.value == "invalid_request"
    assert figures.malformed == 1


def test_a_well_formed_job_still_decodes() -> None:
    payload = ComputeRequest("v1", ["a"], 1, False)
    frames = job_frames(b"\x02" * 8, Op.COMPUTE, "rid-1", payload, [])
    job = decode_job(frames[1:])
    assert (job.job_id, job.op, job.request_id, job.blocks) == (
        b"\x02" * 8,
        Op.COMPUTE,
        "rid-1",
        [],
    )
    assert msgspec.msgpack.decode(job.payload, type=ComputeRequest) == payload


def test_vector_messages_round_trip() -> None:
    values = np.arange(8, dtype=np.float64).reshape(2, 4)
    frames = vectors_frames("w", 3, "v1", values)
    worker_id, seq, version, decoded = decode_vectors([bytes(f) for f in frames], WIDTHS)
    assert (worker_id, seq, version) == ("w", 3, "v1")
    assert np.array_equal(decoded, values)


@pytest.mark.parametrize(
    ("version", "values", "needle"),
    [
        ("v9", np.ones((2, 4)), "unknown version"),
        ("v1", np.ones((2, 5)), "4 columns"),
        ("v1", np.ones(4), "4 columns"),
        ("v1", np.ones((2, 4), dtype=np.int64), "float64"),
    ],
)
def test_malformed_vector_messages_are_protocol_errors(version, values, needle) -> None:
    frames = vectors_frames("w", 1, version, values)
    with pytest.raises(ProtocolError, match=needle):
        decode_vectors([bytes(f) for f in frames], WIDTHS)


@pytest.mark.parametrize(
    "frames",
    [
        [b"vectors"],
        [b"vectors", b"\xc1"],
        [b"vectors", pack({"worker_id": "w", "seq": 1})],
        [b"vectors", pack({"worker_id": "w", "seq": -1, "version": "v1", "values": {}})],
        [b"vectors", pack({"worker_id": "w", "seq": 1, "version": "v1", "values": {"block": 0}})],
    ],
)
def test_undecodable_vector_messages_are_protocol_errors(frames) -> None:
    with pytest.raises(ProtocolError):
        decode_vectors(frames, WIDTHS)
