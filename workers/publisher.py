"""Publishes the vectors a worker computes for online serving to the drift process (SPEC §7).

One PUB socket connected to DRIFT_FEATURES_ENDPOINT (the drift process binds, so workers may
come and go). PUB never blocks: with nobody listening, or a slow listener, messages are
dropped by ZeroMQ at the high-water mark, and the sequence numbers let the drift process count
what it missed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import zmq

from featurestore.security.curve import CurveClient, secure_client
from featurestore.wire.backend import vectors_frames

PUBLISH_HWM = 1000
CONNECT_WAIT_S = 2.0  # at start, how long a worker waits for the drift process to accept it


class VectorPublisher:
    def __init__(
        self,
        context: zmq.Context,
        endpoint: str,
        worker_id: str,
        enabled: bool,
        curve: CurveClient | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.sequence = 0
        self.socket: zmq.Socket | None = None
        if enabled:
            self.socket = context.socket(zmq.PUB)
            self.socket.setsockopt(zmq.LINGER, 0)
            self.socket.setsockopt(zmq.SNDHWM, PUBLISH_HWM)
            secure_client(self.socket, curve)
            for address in endpoint.split(","):
                self.socket.connect(address.strip())

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait (bounded) until the drift process accepted this socket (the handshake, CURVE's
        included, is done), so the first vectors are not dropped while the connection is still
        being made. False if it did not."""
        if self.socket is None:
            return True
        monitor = self.socket.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            return bool(monitor.poll(int(timeout_s * 1000)))
        finally:
            self.socket.disable_monitor()
            monitor.close(linger=0)

    def publish(self, version: str, values: np.ndarray) -> None:
        """Send one batch of full vectors (rows of `values`); never blocks."""
        if self.socket is None or values.shape[0] == 0:
            return
        self.sequence += 1
        frames = vectors_frames(self.worker_id, self.sequence, version, values)
        with contextlib.suppress(zmq.Again):  # dropped: the drift process sees the gap in seq
            self.socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close(linger=0)
