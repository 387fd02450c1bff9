"""Fault-injecting compute workers for the integration tests, run as real processes.

    python peer_worker.py poison --id P            # registers, dies on the first job it gets
    python peer_worker.py commit-then-die --id P   # runs its first job for real, dies unanswered

Both speak the real back-end protocol (featurestore.wire.backend) to BROKER_BACKEND of the
environment: READY, heartbeats both ways. `poison` is the worker that a poison request kills:
`os._exit` when a W_JOB arrives. `commit-then-die` runs the job with the real worker handlers
(workers.handlers: an ingest is committed and its entities invalidated) and then exits before
its RESULT is sent, as if SIGKILLed at the worst moment, so the broker re-dispatches a job
that already took effect.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import zmq

from featurestore.cache import open_cache
from featurestore.config import Settings
from featurestore.store.sqlite import open_store
from featurestore.wire.backend import OK, Heartbeat, decode_job, heartbeat_frames, ready_frames
from featurestore.wire.frames import SERVICE_FEATURES, W_HEARTBEAT, W_JOB

EXIT_POISONED = 86
EXIT_AFTER_COMMIT = 87


def serve_one_job(settings: Settings, peer_id: str, on_job: Callable[[list], None]) -> None:
    """Register as a compute worker, answer heartbeats, hand the first job to `on_job`
    (which ends the process)."""
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    for endpoint in settings.broker_backend.split(","):
        socket.connect(endpoint.strip())
    figures = Heartbeat(SERVICE_FEATURES, peer_id, os.getpid())
    socket.send_multipart(ready_frames(SERVICE_FEATURES, peer_id, os.getpid()))
    interval_s = settings.heartbeat_interval_ms / 1000
    next_heartbeat = time.monotonic() + interval_s
    while True:
        wait_ms = max(0, int((next_heartbeat - time.monotonic()) * 1000))
        if socket.poll(wait_ms, zmq.POLLIN):
            frames = socket.recv_multipart()
            if frames[0] == W_JOB:
                on_job(frames[1:])
            if frames[0] == W_HEARTBEAT:
                socket.send_multipart(heartbeat_frames(figures))
        if time.monotonic() >= next_heartbeat:
            socket.send_multipart(heartbeat_frames(figures))
            next_heartbeat = time.monotonic() + interval_s


def run_poison(settings: Settings, peer_id: str) -> None:
    def die(_frames: list) -> None:
        os._exit(EXIT_POISONED)  # the request killed this worker

    serve_one_job(settings, peer_id, die)


def run_commit_then_die(settings: Settings, peer_id: str) -> None:
    from workers.handlers import Handlers
    from workers.publisher import VectorPublisher

    handlers = Handlers(
        settings,
        open_store(settings.data_dir),
        open_cache(settings),
        VectorPublisher(zmq.Context(), settings.drift_features_endpoint, peer_id, False),
    )

    def run_then_die(frames: list) -> None:
        job = decode_job(frames)
        result = handlers.handle(job)
        ok = result[2] == OK
        print(f"job {job.op.value} {job.request_id} done (ok={ok}); dying unanswered", flush=True)
        os._exit(EXIT_AFTER_COMMIT)

    serve_one_job(settings, peer_id, run_then_die)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("poison", "commit-then-die"))
    parser.add_argument("--id", required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.mode == "poison":
        run_poison(settings, args.id)
    else:
        run_commit_then_die(settings, args.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
