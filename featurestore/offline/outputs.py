"""Outputs that appear only when complete: a directory is written beside its target under a
temporary name and renamed into place (one atomic rename on one file system); a failure
removes it. Used by `generate` (a Parquet dataset output) and `export events`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pandas as pd

from featurestore.offline.files import FileError, FrameWriter

DATASET_MARKER = "_generate.json"  # written last into a dataset made by `generate`
PART_NAME = "part-{index:06d}.parquet"  # parts sort in row order (readers sort by name)


def is_dataset_output(path: str | Path) -> bool:
    """An output path without an extension is a Parquet dataset directory."""
    return Path(path).suffix == ""


def temporary_sibling(target: Path) -> Path:
    """A new directory name beside `target` (same file system: the rename is atomic)."""
    return target.with_name(f".{target.name}.partial-{uuid.uuid4().hex[:12]}")


def check_replaceable(target: Path, marker: str, what: str) -> None:
    """FileError unless `target` is absent, an empty directory, or `what` (holds `marker`)."""
    if not target.exists():
        return
    if not target.is_dir():
        raise FileError(f"{target}: exists and is not a directory")
    if any(target.iterdir()) and not (target / marker).exists():
        raise FileError(f"{target}: exists and is not {what}; remove it or choose another name")


def replace_dir(temporary: Path, target: Path) -> None:
    """Move the complete `temporary` to `target`, replacing what `check_replaceable` allowed."""
    if target.exists():
        retired = temporary_sibling(target)
        os.replace(target, retired)
        os.replace(temporary, target)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(temporary, target)


class FileOutput:
    """One output file (any format of `FrameWriter`), in place only after `commit`."""

    def __init__(self, target: str | Path, metadata: dict[str, str]) -> None:
        self.writer = FrameWriter(target, metadata=metadata)

    def start_part(self, index: int) -> None:
        """A file has no parts: the rows of every input file follow each other."""

    def write(self, frame: pd.DataFrame) -> None:
        self.writer.write(frame)

    def commit(self, summary: dict[str, object]) -> None:
        self.writer.close(keep=True)

    def abort(self) -> None:
        self.writer.close(keep=False)


class DatasetOutput:
    """A Parquet dataset directory of numbered parts, in place only after `commit`."""

    def __init__(self, target: str | Path, metadata: dict[str, str]) -> None:
        self.target = Path(target)
        self.metadata = metadata
        check_replaceable(self.target, DATASET_MARKER, "a dataset written by generate")
        self.temporary = temporary_sibling(self.target)
        self.temporary.mkdir(parents=True)
        self._part: FrameWriter | None = None

    def start_part(self, index: int) -> None:
        self._close_part(keep=True)
        self._part = part_writer(self.temporary, index, self.metadata)

    def write(self, frame: pd.DataFrame) -> None:
        assert self._part is not None, "start_part first"
        self._part.write(frame)

    def commit(self, summary: dict[str, object]) -> None:
        self._close_part(keep=True)
        (self.temporary / DATASET_MARKER).write_text(json.dumps(summary, indent=1) + "\n")
        replace_dir(self.temporary, self.target)

    def abort(self) -> None:
        self._close_part(keep=False)
        shutil.rmtree(self.temporary, ignore_errors=True)

    def _close_part(self, keep: bool) -> None:
        if self._part is not None:
            self._part.close(keep=keep)
            self._part = None


def open_output(target: str | Path, metadata: dict[str, str]) -> FileOutput | DatasetOutput:
    """Where `generate` writes: a dataset directory for a path without extension, else a file."""
    if is_dataset_output(target):
        return DatasetOutput(target, metadata)
    return FileOutput(target, metadata)


def part_writer(directory: Path, index: int, metadata: dict[str, str]) -> FrameWriter:
    """A Parquet part of a dataset being written in `directory` (which must exist)."""
    return FrameWriter(
        directory / PART_NAME.format(index=index), metadata=metadata, make_parents=False
    )
