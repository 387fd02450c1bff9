"""What the benchmarks share: one reproducible ~2-million-event demo store, and how a
benchmark prints and saves its result."""

from __future__ import annotations

import json
import subprocess
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


def report(name: str, results: dict, lines: list[str]) -> None:
    """Print the key lines and write the whole result to bench/results/<name>.json."""
    print("\n".join(lines), flush=True)
    RESULTS.mkdir(exist_ok=True)
    results["lines"] = lines
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
