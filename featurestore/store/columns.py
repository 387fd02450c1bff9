"""`EventColumns`: validated events as columns, the input of every store's ingest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class EventColumns:
    """Validated events as columns, in request (insertion) order: per numeric field a float64
    array (NaN = the event lacks it), per categorical field a list of str or None. `value`
    and `category` are the default schema's fields (positional, as in Part I)."""

    __slots__ = ("categorical", "entity_id", "event_id", "numeric", "ts")

    def __init__(
        self,
        entity_id: Sequence[str],
        ts: np.ndarray,
        value: np.ndarray | None = None,
        category: Sequence[str | None] | None = None,
        event_id: Sequence[str | None] | None = None,
        *,
        numeric: Mapping[str, np.ndarray] | None = None,
        categorical: Mapping[str, Sequence[str | None]] | None = None,
    ) -> None:
        n = len(entity_id)
        self.entity_id = entity_id
        self.ts = ts
        self.event_id = event_id if event_id is not None else [None] * n
        self.numeric = dict(numeric or {})
        self.categorical = dict(categorical or {})
        if value is not None:
            self.numeric["value"] = value
        if category is not None:
            self.categorical["category"] = category

    @property
    def value(self) -> np.ndarray:
        return self.numeric["value"]

    @property
    def category(self) -> Sequence[str | None]:
        return self.categorical["category"]

    def __len__(self) -> int:
        return len(self.entity_id)

    def numeric_column(self, name: str) -> np.ndarray:
        """A numeric field's values (all NaN when no event carries it)."""
        found = self.numeric.get(name)
        return np.full(len(self), np.nan) if found is None else np.asarray(found, np.float64)

    def categorical_column(self, name: str) -> Sequence[str | None]:
        """A categorical field's values (all None when no event carries it)."""
        found = self.categorical.get(name)
        return [None] * len(self) if found is None else found
