"""`EventColumns`: validated events as columns, the input of every store's ingest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EventColumns:
    """Validated events as columns, in request (insertion) order."""

    entity_id: list[str]
    ts: np.ndarray  # int64 epoch ms
    value: np.ndarray  # float64
    category: list[str | None]
    event_id: list[str | None]

    def __len__(self) -> int:
        return len(self.entity_id)
