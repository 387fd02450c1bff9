"""POST /drift/baseline: reset, baseline from entity ids (as of the request's T), or from a
file written by `featurestore generate` under DATA_DIR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from drift.monitor import DriftMonitor
from featurestore.config import Settings
from featurestore.definitions.model import FeatureSet
from featurestore.errors import Code, ServiceError
from featurestore.features.engine import compute
from featurestore.offline.compute import STATUS_OK, VERSION_METADATA_KEY
from featurestore.offline.files import FileError, file_format, read_chunks
from featurestore.store.errors import STORE_RETRY_AFTER_S, StoreError
from featurestore.store.factory import open_event_store
from featurestore.timestamps import format_iso, now_ms
from featurestore.validation.decoding import invalid

ACTIONS = ("reset", "entity_ids", "file")
FILE_ROWS_MAX = 100_000  # rows of a baseline file used (the first ones)


class BaselineRequests:
    def __init__(self, settings: Settings, monitor: DriftMonitor) -> None:
        self.settings = settings
        self.monitor = monitor
        self._store = None

    @property
    def store(self):
        if self._store is None:
            self._store = open_event_store(self.settings, role="drift")
        return self._store

    def handle(self, body: dict) -> dict:
        """`body`: a decoded DriftBaselineRequest as a dict (its fields and types checked)."""
        action = body.get("action")
        if action not in ACTIONS:
            raise invalid(f"'action' must be one of {', '.join(ACTIONS)}", valid=list(ACTIONS))
        _check_types(body)
        versions = self._versions(body.get("version"))
        if action == "reset":
            self.monitor.reset(versions)
            return {
                "action": "reset",
                "versions": versions,
                "monitoring_since": format_iso(now_ms()),
            }
        if action == "entity_ids":
            try:
                return self._from_entities(body.get("entity_ids"), versions)
            except StoreError as exc:  # disk trouble or a corrupt file: not a bug of ours
                raise ServiceError(
                    Code.STORE_UNAVAILABLE,
                    f"the event store is unavailable ({exc.problem})",
                    retry_after_s=STORE_RETRY_AFTER_S,
                ) from None
        return self._from_file(body.get("path"), body.get("version"))

    def _versions(self, version: Any) -> list[str]:
        if version is None:
            return list(self.settings.versions)
        if version not in self.settings.versions:
            raise ServiceError(
                Code.UNKNOWN_VERSION,
                f"unknown version {version!r}",
                unknown=[version],
                valid=list(self.settings.versions),
            )
        return [version]

    def _from_entities(self, entity_ids: Any, versions: list[str]) -> dict:
        if not isinstance(entity_ids, list) or not entity_ids:
            raise invalid("'entity_ids' must be a non-empty list for action entity_ids")
        if len(entity_ids) > self.settings.batch_max_entities:
            raise ServiceError(
                Code.BATCH_TOO_LARGE,
                f"{len(entity_ids)} entity_ids exceed "
                f"BATCH_MAX_ENTITIES ({self.settings.batch_max_entities})",
            )
        if not all(isinstance(e, str) for e in entity_ids):
            raise invalid("'entity_ids' must be strings")
        t_ms = now_ms()
        codes, uniques = pd.factorize(pd.Series(entity_ids, dtype=object))
        batch = self.store.read(list(uniques))
        features_set = {}
        for version in versions:
            features = self.settings.definitions.versions[version]
            matrix = compute(batch, codes, t_ms, features, self.store.label_names())
            if not matrix.found.all():
                unknown = sorted({entity_ids[i] for i in np.flatnonzero(~matrix.found)})
                raise invalid(
                    f"{len(unknown)} entity id(s) have no events at or before {format_iso(t_ms)}",
                    unknown=unknown[:100],
                )
            columns = {name: matrix.values[:, i] for i, name in enumerate(features.names)}
            features_set[version] = self.monitor.set_baseline(version, columns)
        return {
            "action": "entity_ids",
            "versions": versions,
            "entities": len(entity_ids),
            "timestamp": t_ms,
            "features": features_set,
        }

    def _from_file(self, path: Any, version: Any) -> dict:
        if not isinstance(path, str) or not path:
            raise invalid("'path' is required for action file")
        data_dir = Path(self.settings.data_dir).resolve()
        try:
            target = (data_dir / path).resolve()
            inside = target.is_relative_to(data_dir)
            exists = inside and target.is_file()
        except (ValueError, OSError) as exc:  # a NUL byte, a name too long
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise invalid(f"'path' is not a usable file name: {reason}") from None
        if not inside:
            raise invalid("'path' must be inside DATA_DIR")
        if not exists:
            raise invalid(f"no such file under DATA_DIR: {path}")
        try:
            file_format(target)
            recorded = _recorded_version(target)
            chosen = version or recorded
            if chosen is None:
                raise invalid("the file records no version (CSV/JSON Lines): give 'version'")
            self._versions(chosen)
            frame = _read_vectors(target, self.settings.definitions.versions[chosen])
        except FileError as exc:
            raise invalid(str(exc)) from None
        columns = {
            name: pd.to_numeric(frame[name], errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
            for name in self.settings.definitions.versions[chosen].names
            if name in frame
        }
        features_set = self.monitor.set_baseline(chosen, columns)
        return {
            "action": "file",
            "versions": [chosen],
            "rows": len(frame),
            "features": {chosen: features_set},
        }

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _check_types(body: dict) -> None:
    """Every field of the body has its type, whatever the action uses."""
    for name in ("version", "path"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise invalid(f"'{name}' must be a string")
    ids = body.get("entity_ids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(e, str) for e in ids)):
        raise invalid("'entity_ids' must be a list of strings")


def _recorded_version(path: Path) -> str | None:
    if file_format(path) != "parquet":
        return None
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as exc:
        raise FileError(f"{path}: not a readable Parquet file ({exc})") from None
    value = metadata.get(VERSION_METADATA_KEY.encode())
    return value.decode() if value else None


def _read_vectors(path: Path, features: FeatureSet) -> pd.DataFrame:
    names, version = features.names, features.version
    frames, rows = [], 0
    for chunk in read_chunks(path, ("entity_id",), (*names, "status")):
        found = chunk[chunk["status"] == STATUS_OK] if "status" in chunk else chunk
        frames.append(found)
        rows += len(found)
        if rows >= FILE_ROWS_MAX:
            break
    frame = pd.concat(frames, ignore_index=True).head(FILE_ROWS_MAX)
    if not any(name in frame for name in names):
        raise invalid(f"the file has no feature column of {version}")
    return frame
