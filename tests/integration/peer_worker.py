"""Fault-injecting compute workers for the integration tests, run as real processes.

    python peer_worker.py poison --id P            # registers, dies on the first job it gets
    python peer_worker.py commit-then-die --id P   # a real worker that dies before answering

Both speak the real back-end protocol (featurestore.protocol) to BROKER_BACKEND of the
environment. `poison` is the worker that a poison request kills: READY, heartbeats both ways,
`os._exit` when a W_JOB arrives. `commit-then-die` is the real `workers.Worker` whose job runs
to the end (an ingest is committed and its entities invalidated) and which then exits before
its RESULT is sent, as if SIGKILLed at the worst moment, so the broker re-dispatches a job
that already took effect.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import zmq

from featurestore.config import Settings
from featurestore.protocol import (
    SERVICE_FEATURES,
    W_HEARTBEAT,
    W_JOB,
    heartbeat_frames,
    ready_frames,
)

EXIT_POISONED = 86
EXIT_AFTER_COMMIT = 87


def run_poison(settings: Settings, peer_id: str) -> int:
    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    for endpoint in settings.broker_backend.split(","):
        socket.connect(endpoint.strip())
    figures = {"service": SERVICE_FEATURES, "worker_id": peer_id, "pid": os.getpid()}
    socket.send_multipart(ready_frames(SERVICE_FEATURES, peer_id, os.getpid()))
    interval_s = settings.heartbeat_interval_ms / 1000
    next_heartbeat = time.monotonic() + interval_s
    while True:
        wait_ms = max(0, int((next_heartbeat - time.monotonic()) * 1000))
        if socket.poll(wait_ms, zmq.POLLIN):
            frames = socket.recv_multipart()
            if frames[0] == W_JOB:
                os._exit(EXIT_POISONED)  # the request killed this worker
            if frames[0] == W_HEARTBEAT:
                socket.send_multipart(heartbeat_frames(figures))
        if time.monotonic() >= next_heartbeat:
            socket.send_multipart(heartbeat_frames(figures))
            next_heartbeat = time.monotonic() + interval_s


def run_commit_then_die(settings: Settings, peer_id: str) -> int:
    from workers.worker import Worker

    worker = Worker(settings, peer_id)

    def run_job_then_die(job: tuple) -> None:
        _job_id, op, payload, blocks = job
        request_id = payload.pop("request_id", "")
        reply = worker.handlers.handle(op, payload, blocks, request_id)
        print(f"job {op.value} {request_id} done (ok={reply.ok}); dying unanswered", flush=True)
        os._exit(EXIT_AFTER_COMMIT)

    worker.run_job = run_job_then_die
    worker.run()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("poison", "commit-then-die"))
    parser.add_argument("--id", required=True)
    args = parser.parse_args()
    settings = Settings.from_env()
    if args.mode == "poison":
        return run_poison(settings, args.id)
    return run_commit_then_die(settings, args.id)


if __name__ == "__main__":
    sys.exit(main())
