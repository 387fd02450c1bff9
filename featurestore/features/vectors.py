"""Feature vectors (float64 rows, NaN = null) as the JSON objects of the API."""

from __future__ import annotations

import numpy as np

from featurestore.features.registry import feature_set


class VectorView:
    """Slices and converts full vectors of one version for a requested list of names.

    Built once per (version, names) and reused: requests with the same selection share it.
    """

    def __init__(self, version: str, names: list[str] | None = None) -> None:
        features = feature_set(version)
        self.version = version
        self.names = list(names) if names else features.names
        self.columns = features.index_of(self.names).tolist()
        int_mask = features.int_mask
        self.is_int = [bool(int_mask[c]) for c in self.columns]
        self.int_positions = [i for i, is_int in enumerate(self.is_int) if is_int]
        self.all_columns = self.columns == list(range(len(features.features)))

    def to_dict(self, vector: np.ndarray) -> dict[str, int | float | None]:
        """{name: value} in the requested order; null for NaN, int for integer features."""
        values = vector.tolist() if self.all_columns else vector[self.columns].tolist()
        for position in self.int_positions:
            value = values[position]
            if value == value:  # not NaN
                values[position] = int(value)
        return {name: (None if v != v else v) for name, v in zip(self.names, values, strict=True)}
