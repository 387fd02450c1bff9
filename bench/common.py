"""What the benchmarks share: one reproducible ~2-million-event demo store (and a copy of it
for a second stack), measurements that alternate between configurations, and how a benchmark
prints and saves its result."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from featurestore.store.sqlite import DB_FILENAME

RESULTS = Path(__file__).parent / "results"
END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed, reproducible data set
SEED = 7


def demo_store(work: str | Path, entities: int = 10_000) -> Path:
    """WORK/store, filled by `featurestore demo` the first time."""
    data = Path(work) / "store"
    if not (data / DB_FILENAME).exists():
        subprocess.run(
            [
                "featurestore",
                "demo",
                "--data-dir",
                str(data),
                "--entities",
                str(entities),
                "--seed",
                str(SEED),
                "--end",
                str(END_MS),
            ],
            check=True,
            timeout=900,
        )
    return data


def store_copy(data: Path, suffix: str) -> Path:
    """A copy of the store beside it (DATA_DIR-suffix), for a second stack run at the same
    time: one stack per DATA_DIR."""
    copy = data.with_name(f"{data.name}-{suffix}")
    if not (copy / DB_FILENAME).exists():
        copy.mkdir(exist_ok=True)
        shutil.copy2(data / DB_FILENAME, copy / DB_FILENAME)
    return copy


def alternating(names: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, name) with the order flipped every round, so that what the shared machine does
    meanwhile (other load, frequency changes) falls on every configuration alike."""
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            yield i, name


def report(name: str, results: dict, lines: list[str]) -> None:
    """Print the key lines and write the whole result to bench/results/<name>.json."""
    print("\n".join(lines), flush=True)
    RESULTS.mkdir(exist_ok=True)
    results["lines"] = lines
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
