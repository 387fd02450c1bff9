"""Category labels (SPEC §3), the part every store shares: which names a connection knows by
label, which names of a request are new (in order of first appearance), the labels of a
request's categories.

Labels are global, persistent and contiguous (0 ... k-1), assigned in the transaction that
stores the first event of a category. Committed labels never change, so a `LabelBook` only
grows, by reading the rows at or after the labels it knows; a store whose transaction
assigned labels and then rolled back makes it `forget` (it reads them all again next time).
How a store serialises the assignment between connections is its own business (SQLite: the
write lock; PostgreSQL: a row lock, `postgres.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from featurestore.store.batch import NO_CATEGORY


class LabelBook:
    def __init__(self) -> None:
        self.names: list[str] = []
        self.labels: dict[str, int] = {}

    @property
    def known(self) -> int:
        """Labels known: the next one to read (or to assign) is this."""
        return len(self.names)

    def learn(self, rows: Iterable[tuple[int, str]]) -> None:
        """Rows (label, name) of labels from `known` on, in label order."""
        for label, name in rows:
            if label != len(self.names):
                raise ValueError(f"category label {label} after {len(self.names) - 1}")
            self.names.append(name)
            self.labels[name] = label

    def unknown(self, categories: np.ndarray) -> list[str]:
        """Names of `categories` (None = no category) without a label, in order of first
        appearance."""
        present = pd.Series(categories, dtype=object).dropna()
        return [c for c in pd.unique(present) if c not in self.labels]

    def assign(self, names: list[str]) -> list[tuple[int, str]]:
        """Give new names the next labels; the (label, name) rows the store must insert."""
        rows = [(len(self.names) + i, name) for i, name in enumerate(names)]
        self.learn(rows)
        return rows

    def encode(self, categories: np.ndarray) -> np.ndarray:
        """int32 labels of `categories` (NO_CATEGORY for None); every name must be known."""
        present = pd.Series(categories, dtype=object)
        return present.map(self.labels).fillna(NO_CATEGORY).to_numpy(dtype=np.int32)

    def forget(self) -> None:
        self.names = []
        self.labels = {}
