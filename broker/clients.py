"""Per-client bounds at the broker's front end (SPEC §11): what one ZeroMQ client may cost.

- Requests in progress per client identity: at most BROKER_CLIENT_MAX_PENDING; more are
  answered `overloaded` at once.
- Replies waiting for a client: ZeroMQ keeps at most FRONTEND_SNDHWM messages per peer;
  when that pipe is full (the client is not reading), replies wait in the client's outbox
  here, counted in bytes. An outbox past BROKER_CLIENT_MAX_BYTES means the client has
  stopped reading: its queued replies are dropped and its requests cancelled (it loses its
  slot), never the broker's memory. A client that goes away is forgotten on the next send
  (ROUTER_MANDATORY: EHOSTUNREACH).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import zmq

from featurestore.wire.frames import NOBLOCK, copy_small

log = logging.getLogger("broker")
FRONTEND_SNDHWM = 16  # replies ZeroMQ queues per client before the outbox takes over
FLUSH_INTERVAL_MS = 2  # how soon a backlogged outbox is tried again
SENT, FULL, GONE = "sent", "full", "gone"  # what became of a reply handed to ZeroMQ


def frames_bytes(frames: list) -> int:
    return sum(len(f) for f in frames)


@dataclass
class Outbox:
    replies: deque = field(default_factory=deque)
    size: int = 0


class ClientBook:
    def __init__(self, socket: zmq.Socket, max_pending: int, max_bytes: int) -> None:
        self.socket = socket
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.pending: dict[bytes, int] = {}
        self.outboxes: dict[bytes, Outbox] = {}
        self.dropped_replies = 0
        self.stalled_clients = 0

    # -- requests in progress
    def has_room(self, client: bytes) -> bool:
        return self.pending.get(client, 0) < self.max_pending

    def started(self, client: bytes) -> None:
        self.pending[client] = self.pending.get(client, 0) + 1

    def finished(self, client: bytes) -> None:
        left = self.pending.get(client, 0) - 1
        if left > 0:
            self.pending[client] = left
        else:
            self.pending.pop(client, None)

    # -- replies
    def send(self, client: bytes, frames: list) -> bool:
        """Send a reply now or queue it; False when the client stalled (its outbox was
        dropped: the caller cancels its requests)."""
        outbox = self.outboxes.get(client)
        if outbox is None:
            outcome = self._try_send(client, frames)
            if outcome is not FULL:
                return True  # sent, or the client is gone: nothing to keep
            outbox = self.outboxes[client] = Outbox()
        outbox.replies.append(frames)
        outbox.size += frames_bytes(frames)
        if outbox.size > self.max_bytes:
            self._stall(client, outbox)
            return False
        return True

    def _try_send(self, client: bytes, frames: list) -> str:
        try:
            self.socket.send_multipart([client, *frames], flags=NOBLOCK, copy=copy_small(frames))
        except zmq.Again:
            return FULL
        except zmq.ZMQError as exc:  # EHOSTUNREACH: the client disconnected
            log.info("reply to a departed client dropped: %s", exc)
            self.dropped_replies += 1
            return GONE
        return SENT

    def flush(self) -> None:
        """Send what the outboxes hold while ZeroMQ takes it."""
        for client, outbox in list(self.outboxes.items()):
            while outbox.replies:
                frames = outbox.replies[0]
                outcome = self._try_send(client, frames)
                if outcome is FULL:
                    break
                outbox.replies.popleft()
                outbox.size -= frames_bytes(frames)
                if outcome is GONE:
                    self._forget(client, outbox)
                    break
            else:
                del self.outboxes[client]

    @property
    def backlogged(self) -> bool:
        return bool(self.outboxes)

    def _stall(self, client: bytes, outbox: Outbox) -> None:
        self.stalled_clients += 1
        log.warning(
            "a client stopped reading: %d replies (%d bytes) dropped",
            len(outbox.replies),
            outbox.size,
        )
        self._forget(client, outbox)

    def _forget(self, client: bytes, outbox: Outbox) -> None:
        self.dropped_replies += len(outbox.replies)
        outbox.replies.clear()
        self.outboxes.pop(client, None)

    def figures(self) -> dict[str, int]:
        return {
            "dropped_replies": self.dropped_replies,
            "stalled_clients": self.stalled_clients,
            "backlogged_clients": len(self.outboxes),
            "backlog_bytes": sum(o.size for o in self.outboxes.values()),
        }
