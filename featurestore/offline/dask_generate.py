"""`generate` on a Dask cluster: the same rows as one process, bit for bit (SPEC §16).

Three waves of tasks (the tasks and what they carry: `dask_tasks.py`), rows co-partitioned
with events by entity bucket (`buckets.py`):

1. split, one task per piece of the input (`rowsource.py`): read and check its chunks exactly
   as `generate_file` does, give each row its input position, cut the rows by bucket.
2. compute, one task per bucket: its rows from every piece, the events of its entities (from
   the store, or from an export partitioned by the same bucket), one `feature_frame` call —
   the function `generate_file` calls, so the one engine on whole entities; results cut back
   by piece. Memory: the bucket's rows and events, whatever the size of the data set.
3. write, one task per piece: its rows' results from every bucket, put back in input order
   (every position exactly once, checked), joined with the piece's own columns read again,
   written as a part of the output dataset (or handed to the client for a single file).

Big inputs run in rounds of consecutive pieces (`ROUND_ROWS` rows each), the three waves per
round: the results waiting between compute and write are then one round's (~250 bytes a row),
not the data set's, and the output is written round by round; each round reads the events of
its buckets again. A wave's parts travel as one Dask key per (piece, bucket) that has rows.
Tasks are retried
(`TASK_RETRIES`, and by the scheduler when a worker dies); a failure that persists stops the
run with one error and the output, written to a temporary directory, never appears. Every
wait has a deadline: the run fails if no task finishes for `STALL_TIMEOUT_S`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
from distributed import Client, Future, KilledWorker, wait

from featurestore.definitions.model import FeatureSet
from featurestore.offline.buckets import bucket_count, check_bucket_count
from featurestore.offline.cluster import ClusterError, worker_count
from featurestore.offline.compute import (
    GENERATE_CHUNK_ROWS,
    VERSION_METADATA_KEY,
    GenerateSummary,
    resolve_features,
)
from featurestore.offline.dask_tasks import (
    EventsSpec,
    Job,
    compute_bucket,
    split_piece,
    write_piece,
)
from featurestore.offline.files import ROW_REQUIRED, FileError
from featurestore.offline.outputs import DatasetOutput, FileOutput, is_dataset_output
from featurestore.offline.rowsource import (
    RowPiece,
    chunk_pieces,
    is_parquet_input,
    parquet_pieces,
    parquet_rows,
    row_files,
)
from featurestore.store.errors import StoreError

TASK_RETRIES = 2  # attempts after the first, for a task that raised
STALL_TIMEOUT_S = 600.0  # no task finished for this long: the run is stuck
ABORT_TIMEOUT_S = 30.0  # removing a failed run's temporary output
ABORT_POLL_S = 0.1
PIECE_CHUNKS_MAX = 10  # a split/write task reads at most this many chunks (1,000,000 rows)
PIECES_PER_WORKER = 4
ROUND_ROWS = 20_000_000  # rows per round of split, compute and write (~5 GB of results)


# ------------------------------------------------------------------------------ driver
def generate_dask(
    client: Client,
    events: EventsSpec,
    events_count: int,
    rows_path: str | Path,
    output_path: str | Path,
    *,
    version: FeatureSet | str,
    names: list[str],
    buckets: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = GENERATE_CHUNK_ROWS,
    stall_timeout_s: float = STALL_TIMEOUT_S,
    round_rows: int = ROUND_ROWS,
) -> GenerateSummary:
    """`generate_file` on the cluster of `client`; `events_count` sizes the buckets."""
    started = time.perf_counter()
    run = _Run(client, stall_timeout_s)
    features = resolve_features(version)
    metadata = {VERSION_METADATA_KEY: features.version}
    try:
        pieces, inputs = run.pieces(row_files(rows_path), chunk_rows)
        total = sum(p.rows for p in pieces)
        if total == 0:
            raise FileError(f"{rows_path}: no rows")
        workers = worker_count(client)
        rounds = list(rounds_of(pieces, round_rows))
        largest = max(sum(p.rows for p in r) for r in rounds)
        n_buckets = check_bucket_count(buckets or bucket_count(largest, events_count, workers))
        job = Job(features, names, n_buckets, chunk_rows, events)
        dataset = is_dataset_output(output_path)
        output = (DatasetOutput if dataset else FileOutput)(output_path, metadata)
        try:
            directory = str(output.temporary) if dataset else None
            found = 0
            for round_pieces in rounds:
                split = run.split(round_pieces, inputs, job)
                found += run.compute_and_write(
                    round_pieces,
                    inputs,
                    job,
                    split,
                    directory=directory,
                    output=output,
                    progress=progress,
                )
            summary = {"version": features.version, "rows": total, "found": found}
            output.commit({**summary, "parts": len(pieces), "buckets": n_buckets})
        except BaseException:
            run.cancel()
            _abort(output)
            raise
    finally:
        run.cancel()
    return GenerateSummary(total, found, time.perf_counter() - started)


def rounds_of(pieces: list[RowPiece], round_rows: int) -> Iterator[list[RowPiece]]:
    """Consecutive pieces, in order, in rounds of at least `round_rows` rows (the last one
    may have fewer); a piece is never cut."""
    current: list[RowPiece] = []
    rows = 0
    for piece in pieces:
        current.append(piece)
        rows += piece.rows
        if rows >= round_rows:
            yield current
            current, rows = [], 0
    if current:
        yield current


class _Run:
    """The futures of one run. Only what is still needed is referenced (Dask frees a result
    when no one holds it), and everything still held is cancelled when the run fails."""

    def __init__(self, client: Client, stall_timeout_s: float) -> None:
        self.client = client
        self.stall_timeout_s = stall_timeout_s
        self.tag = uuid.uuid4().hex[:8]
        self.live: dict[str, Future] = {}

    def submit(self, name: str, function: Callable, *args: object) -> Future:
        key = f"fs-{name}-{self.tag}"
        future = self.client.submit(function, *args, key=key, retries=TASK_RETRIES, pure=False)
        self.live[key] = future
        return future

    def drop(self, futures: Iterable[Future]) -> None:
        for future in futures:
            self.live.pop(future.key, None)

    def cancel(self) -> None:
        if self.live:
            with contextlib.suppress(Exception):
                self.client.cancel(list(self.live.values()), force=True)
            self.live.clear()

    # ------------------------------------------------------------------------- waves
    def pieces(
        self, files: list[Path], chunk_rows: int
    ) -> tuple[list[RowPiece], dict[int, RowPiece | Future]]:
        """The pieces (without their rows) and what each task gets: a Parquet piece, which
        it reads itself, or a chunk read here and scattered to the cluster."""
        if is_parquet_input(files):
            total = sum(parquet_rows(f) for f in files)
            workers = worker_count(self.client)
            wanted = chunk_rows * workers * PIECES_PER_WORKER
            per_piece = max(1, min(PIECE_CHUNKS_MAX, -(-total // wanted)))
            pieces = parquet_pieces(files, chunk_rows, per_piece)
            return pieces, {p.ordinal: p for p in pieces}
        pieces, inputs = [], {}
        for piece in chunk_pieces(files, ROW_REQUIRED, chunk_rows):
            future = self.client.scatter(piece, hash=False, timeout=self.stall_timeout_s)
            self.live[future.key] = future
            inputs[piece.ordinal] = future
            pieces.append(dataclasses.replace(piece, frame=None))
        return pieces, inputs

    def split(
        self, pieces: list[RowPiece], inputs: dict[int, RowPiece | Future], job: Job
    ) -> tuple[dict[tuple[int, int], Future], np.ndarray]:
        """Wave 1: the (piece, bucket) parts that have rows, as futures, and the rows of each
        (pieces x buckets)."""
        splits = {
            p.ordinal: self.submit(f"split-{p.ordinal}", split_piece, inputs[p.ordinal], job)
            for p in pieces
        }
        infos = {
            ordinal: self.submit(f"split-info-{ordinal}", operator.getitem, future, 0)
            for ordinal, future in splits.items()
        }
        ordinal_of = {future.key: ordinal for ordinal, future in infos.items()}
        answers = {}
        for future in self.wait_all(infos.values()):
            answers[ordinal_of[future.key]] = future.result(timeout=self.stall_timeout_s)
        self.drop(infos.values())
        errors = sorted((o, a.error) for o, a in answers.items() if a.error)
        if errors:
            raise FileError(errors[0][1])
        parts = {}
        for ordinal, future in splits.items():
            for bucket in np.flatnonzero(answers[ordinal].counts).tolist():
                name = f"part-{ordinal}-{bucket}"
                parts[ordinal, bucket] = self.submit(name, operator.getitem, future, bucket + 1)
        self.drop(splits.values())
        counts = np.stack([answers[p.ordinal].counts for p in pieces])
        return parts, counts

    def compute_and_write(
        self,
        pieces: list[RowPiece],
        inputs: dict[int, RowPiece | Future],
        job: Job,
        split: tuple[dict[tuple[int, int], Future], np.ndarray],
        *,
        directory: str | None,
        output: DatasetOutput | FileOutput,
        progress: Callable[[int], None] | None,
    ) -> int:
        """Waves 2 and 3; the number of rows found. A single output file is written here, in
        piece order, as the pieces come."""
        parts, counts = split
        computes: dict[str, tuple[Future, int]] = {}
        back: dict[int, list[Future]] = {p.ordinal: [] for p in pieces}
        for bucket in np.flatnonzero(counts.sum(axis=0)).tolist():
            ordinals = np.flatnonzero(counts[:, bucket]).tolist()
            ordinals = [pieces[i].ordinal for i in ordinals]
            future = self.submit(
                f"compute-{bucket}",
                compute_bucket,
                job,
                ordinals,
                [parts[o, bucket] for o in ordinals],
            )
            computes[future.key] = (future, int(counts[:, bucket].sum()))
            for ordinal in ordinals:
                name = f"back-{ordinal}-{bucket}"
                back[ordinal].append(self.submit(name, operator.getitem, future, ordinal))
        self.drop(parts.values())
        writes = {
            p.ordinal: self.submit(
                f"write-{p.ordinal}",
                write_piece,
                inputs[p.ordinal],
                job,
                directory,
                back[p.ordinal],
            )
            for p in pieces
        }
        self.drop(f for futures in back.values() for f in futures)
        mine = (inputs[p.ordinal] for p in pieces)  # this round's; later rounds keep theirs
        self.drop(f for f in mine if isinstance(f, Future))
        del parts, back
        first = pieces[0].ordinal
        return self._collect(
            computes, writes, output if directory is None else None, progress, first
        )

    def _collect(
        self,
        computes: dict[str, tuple[Future, int]],
        writes: dict[int, Future],
        output: FileOutput | DatasetOutput | None,
        progress: Callable[[int], None] | None,
        first_piece: int,
    ) -> int:
        """Wait for every task; write the pieces (from `first_piece` on) to the one output
        file in order, if any."""
        found, next_piece = 0, first_piece
        ordinal_of = {future.key: ordinal for ordinal, future in writes.items()}
        finished: set[int] = set()
        everything = [f for f, _ in computes.values()] + list(writes.values())
        for future in self.wait_all(everything):
            if future.key in computes:
                _, rows = computes.pop(future.key)
                self.drop([future])
                if progress is not None:
                    progress(rows)
                continue
            finished.add(ordinal_of[future.key])
            while next_piece in finished:
                done = writes.pop(next_piece)
                _, hit, frames = done.result(timeout=self.stall_timeout_s)
                for frame in frames or ():
                    output.write(frame)
                found += hit
                self.drop([done])
                next_piece += 1
        return found

    def wait_all(self, futures: Iterable[Future]) -> Iterator[Future]:
        """Each future as it finishes; a task's failure or a stall raises."""
        pending = set(futures)
        while pending:
            try:
                with self.client.as_current():  # `wait` asks for the current client
                    done, pending = wait(
                        pending, timeout=self.stall_timeout_s, return_when="FIRST_COMPLETED"
                    )
            except TimeoutError:
                raise ClusterError(
                    f"no task finished within {self.stall_timeout_s:g} s; is the cluster alive?"
                ) from None
            for future in done:
                if future.status != "finished":
                    raise task_failure(future)
                yield future


def task_failure(future: Future) -> Exception:
    """The one error a failed task stands for: the problem itself when it names a file or
    the store, else which task failed how often and why."""
    name = future.key.removeprefix("fs-").rsplit("-", 1)[0]
    if future.status == "cancelled":
        return ClusterError(f"task {name} was cancelled (its input was lost with a worker?)")
    error = future.exception(timeout=ABORT_TIMEOUT_S)
    if isinstance(error, FileError | StoreError):
        return error
    if isinstance(error, KilledWorker):
        return ClusterError(f"task {name} was lost with the worker running it, too many times")
    return ClusterError(
        f"task {name} failed {TASK_RETRIES + 1} times: {type(error).__name__}: {error}"
    )


def _abort(output: DatasetOutput | FileOutput) -> None:
    """Remove a failed run's output; a task still running may hold a file of it open a
    moment longer, so the removal is retried until a deadline."""
    deadline = time.monotonic() + ABORT_TIMEOUT_S
    output.abort()
    temporary = getattr(output, "temporary", None)
    while temporary is not None and temporary.exists() and time.monotonic() < deadline:
        shutil.rmtree(temporary, ignore_errors=True)
        time.sleep(ABORT_POLL_S)
