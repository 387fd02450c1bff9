"""Labels of categorical fields (SPEC §3, §14), the part every store shares: which names a
connection knows by label, per field; which names of a request are new (in order of first
appearance); the labels of a request's values.

Each categorical field has its own global, persistent, contiguous labels (0 ... k-1),
assigned in the transaction that stores the first event with that name. Committed labels
never change, so a `LabelBook` only grows, by reading the rows at or after the labels it
knows; a store whose transaction assigned labels and then rolled back makes it `forget` (it
reads them all again next time). How a store serialises the assignment between connections
is its own business (SQLite: the write lock; PostgreSQL: a row lock, `postgres.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from featurestore.store.batch import NO_LABEL


class LabelBook:
    def __init__(self, fields: Iterable[str] = ()) -> None:
        self.fields: tuple[str, ...] = ()
        self.names: dict[str, list[str]] = {}
        self.labels: dict[str, dict[str, int]] = {}
        self.reset(fields)

    def reset(self, fields: Iterable[str]) -> None:
        """Know these categorical fields, and no label yet."""
        self.fields = tuple(fields)
        self.forget()

    def forget(self) -> None:
        self.names = {field: [] for field in self.fields}
        self.labels = {field: {} for field in self.fields}

    def known(self, field: str) -> int:
        """Labels of `field` known: the next one to read (or to assign) is this."""
        return len(self.names[field])

    def learn(self, field: str, rows: Iterable[tuple[int, str]]) -> None:
        """Rows (label, name) of `field` from `known(field)` on, in label order."""
        names, labels = self.names[field], self.labels[field]
        for label, name in rows:
            if label != len(names):
                raise ValueError(f"label {label} of {field!r} after {len(names) - 1}")
            names.append(name)
            labels[name] = label

    def unknown(self, field: str, values: np.ndarray) -> list[str]:
        """Names among `values` (None = missing) without a label, in order of first
        appearance."""
        present = pd.Series(values, dtype=object).dropna()
        labels = self.labels[field]
        return [c for c in pd.unique(present) if c not in labels]

    def assign(self, field: str, names: list[str]) -> list[tuple[str, int, str]]:
        """Give new names the next labels; the (field, label, name) rows to insert."""
        start = self.known(field)
        rows = [(start + i, name) for i, name in enumerate(names)]
        self.learn(field, rows)
        return [(field, label, name) for label, name in rows]

    def encode(self, field: str, values: np.ndarray) -> np.ndarray:
        """int32 labels of `values` (NO_LABEL for None); every name must be known."""
        present = pd.Series(values, dtype=object)
        return present.map(self.labels[field]).fillna(NO_LABEL).to_numpy(dtype=np.int32)
