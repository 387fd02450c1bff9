"""Complete baselines on disk (DATA_DIR/drift/baselines.npz), so a restart keeps them.

Written atomically (temporary file, fsync, rename) whenever a baseline completes or is set;
partial baselines are never written. Loaded at start. Each version's baselines carry its
serving epoch (when the store first recorded it served): after `featurestore definitions
forget` the version starts a new epoch, and the baselines of the old one are not restored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from drift.monitor import DriftMonitor

FILENAME = "baselines.npz"


def baseline_path(data_dir: str) -> Path:
    return Path(data_dir) / "drift" / FILENAME


def save(monitor: DriftMonitor, data_dir: str, epochs: dict[str, int] | None = None) -> int:
    """Write every complete baseline, with each version's serving epoch; how many."""
    arrays: dict[str, np.ndarray] = {}
    meta = {"since_ms": monitor.since_ms, "pairs": [], "epochs": epochs or {}}
    for pairs in monitor.pairs.values():
        for pair in pairs:
            if pair.complete:
                key = f"{pair.version}/{pair.feature}"
                arrays[key] = pair.baseline
                meta["pairs"].append({"key": key, "nulls": pair.baseline_nulls})
    path = baseline_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as handle:
        np.savez(
            handle, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays
        )
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return len(arrays)


def load(monitor: DriftMonitor, data_dir: str, epochs: dict[str, int] | None = None) -> int:
    """Restore the complete baselines saved before in the versions' current serving epochs;
    how many."""
    path = baseline_path(data_dir)
    if not path.exists():
        return 0
    with np.load(path) as stored:
        meta = json.loads(bytes(stored["__meta__"]).decode())
        saved_epochs = meta.get("epochs", {})
        epochs = epochs or {}
        by_key = {p.version + "/" + p.feature: p for pairs in monitor.pairs.values() for p in pairs}
        restored = 0
        for entry in meta["pairs"]:
            pair = by_key.get(entry["key"])
            if pair is not None and saved_epochs.get(pair.version) == epochs.get(pair.version):
                pair.set_baseline(stored[entry["key"]], int(entry["nulls"]))
                restored += 1
    for version, since in meta.get("since_ms", {}).items():
        if version in monitor.since_ms and saved_epochs.get(version) == epochs.get(version):
            monitor.since_ms[version] = int(since)
    return restored
