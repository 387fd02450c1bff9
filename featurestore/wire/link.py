"""A service's connection to the broker's back end (compute workers and the drift process).

Majordomo-style: READY on connect; heartbeats every HEARTBEAT_INTERVAL_MS carrying the
service's figures; a fresh socket and READY again when the broker has been silent for
HEARTBEAT_LIVENESS intervals or says DISCONNECT, so a restarted broker gets its services back.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import zmq

from featurestore.config import Settings
from featurestore.security.curve import internal_keys, secure_client
from featurestore.wire.backend import (
    Heartbeat,
    Job,
    decode_job,
    error_result_frames,
    heartbeat_frames,
    ready_frames,
)
from featurestore.wire.frames import (
    W_DISCONNECT,
    W_HEARTBEAT,
    W_JOB,
    ProtocolError,
    TooManyFrames,
    copy_small,
    recv_frames,
)

log = logging.getLogger("brokerlink")


class BrokerLink:
    def __init__(
        self,
        context: zmq.Context,
        settings: Settings,
        service: str,
        worker_id: str,
        figures: Callable[[], dict],
    ) -> None:
        self.context = context
        self.settings = settings
        self.service = service
        self.worker_id = worker_id
        self.figures = figures
        self.curve = internal_keys(settings)  # KeyFileError at start, not at each reconnect
        self.interval_s = settings.heartbeat_interval_ms / 1000
        self.liveness_s = self.interval_s * settings.heartbeat_liveness
        self.socket: zmq.Socket | None = None
        self.malformed = 0  # messages from the broker that could not be decoded
        self.broker_expiry = 0.0
        self.next_heartbeat = 0.0

    def connect(self) -> zmq.Socket:
        """A new socket to the broker (closing the old one) and READY."""
        if self.socket is not None:
            self.socket.close(linger=0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        identity = f"{self.service}-{self.worker_id}-{os.getpid()}-{time.monotonic_ns()}"
        self.socket.setsockopt(zmq.IDENTITY, identity.encode())
        secure_client(self.socket, self.curve)
        for endpoint in self.settings.broker_backend.split(","):
            self.socket.connect(endpoint.strip())
        self.socket.send_multipart(ready_frames(self.service, self.worker_id, os.getpid()))
        self.broker_expiry = time.monotonic() + self.liveness_s
        self.next_heartbeat = time.monotonic() + self.interval_s
        return self.socket

    def timeout_ms(self) -> int:
        """How long a poll may wait before the next heartbeat is due."""
        return max(0, int((self.next_heartbeat - time.monotonic()) * 1000))

    def receive_raw(self) -> list | None:
        """Read one message from the broker: the frames of a JOB, or None (heartbeat,
        disconnect: handled here; a message of too many frames: counted and dropped)."""
        try:
            frames = recv_frames(self.socket, self.settings.zmq_max_frames)
        except TooManyFrames as refused:
            self.malformed += 1
            log.warning("a message of %d frames from the broker dropped", refused.count)
            return None
        self.broker_expiry = time.monotonic() + self.liveness_s
        command = frames[0].bytes
        if command == W_JOB:
            return frames
        if command == W_DISCONNECT:
            self.broker_expiry = 0.0  # register again on the next tick
        elif command != W_HEARTBEAT:
            log.warning("unknown command %r from the broker", command)
        return None

    def receive(self) -> Job | None:
        """Read one message from the broker; a decoded job to run, or None (a malformed one
        is counted, answered when its job id could be read, and dropped)."""
        frames = self.receive_raw()
        if frames is None:
            return None
        try:
            return decode_job([f.buffer for f in frames[1:]])
        except ProtocolError as error:
            self.refuse(frames, error)
            return None

    def refuse(self, frames: list, error: ProtocolError) -> None:
        """Count a malformed job and answer it with an error when it has a job id, so the
        broker does not wait for it."""
        self.malformed += 1
        log.warning("malformed job dropped: %s", error.message)
        if len(frames) >= 2:
            self.send_result(error_result_frames(frames[1].bytes, error))

    def send_result(self, frames: list) -> None:
        """RESULT frames (wire.backend.result_frames / error_result_frames)."""
        self.socket.send_multipart(frames, copy=copy_small(frames))

    def tick(self) -> bool:
        """Send a due heartbeat; reconnect if the broker went silent. True if reconnected."""
        now = time.monotonic()
        reconnected = False
        if now >= self.broker_expiry:
            log.warning("broker silent for %.1f s: reconnecting", self.liveness_s)
            self.connect()
            reconnected = True
        if now >= self.next_heartbeat:
            figures = self.figures()
            figures["malformed"] = figures.get("malformed", 0) + self.malformed
            heartbeat = Heartbeat(self.service, self.worker_id, os.getpid(), figures)
            self.socket.send_multipart(heartbeat_frames(heartbeat))
            self.next_heartbeat = now + self.interval_s
        return reconnected

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
            self.socket = None
