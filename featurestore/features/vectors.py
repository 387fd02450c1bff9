"""Feature vectors (float64 rows, NaN = null) as the JSON objects of the API."""

from __future__ import annotations

import numpy as np

from featurestore.definitions.model import FeatureSet


class VectorView:
    """Slices and converts full vectors of one version for a requested list of names.

    Built once per (version, names) and reused: requests with the same selection share it.
    `features` is a loaded version (a name: of the shipped file).
    """

    def __init__(self, features: FeatureSet | str, names: list[str] | None = None) -> None:
        if isinstance(features, str):
            from featurestore.features.registry import feature_set

            features = feature_set(features)
        self.features = features
        self.version = features.version
        self.names = list(names) if names else features.names
        self.columns = features.index_of(self.names).tolist()
        int_mask = features.int_mask
        self.is_int = [bool(int_mask[c]) for c in self.columns]
        self.int_positions = [i for i, is_int in enumerate(self.is_int) if is_int]
        self.width = len(features.features)
        self.all_columns = self.columns == list(range(self.width))

    def select(self, values: np.ndarray) -> np.ndarray:
        """The requested columns of full vectors (rows as wide as the cache's, or wider than
        this version: NaN beyond it), as a (m, len(names)) matrix."""
        if not self.all_columns:
            return values[:, self.columns]
        return values if values.shape[1] == self.width else values[:, : self.width]

    def to_dict(self, vector: np.ndarray) -> dict[str, int | float | None]:
        """{name: value} in the requested order; null for NaN, int for integer features."""
        values = (
            vector[: self.width].tolist() if self.all_columns else vector[self.columns].tolist()
        )
        for position in self.int_positions:
            value = values[position]
            if value == value:  # not NaN
                values[position] = int(value)
        return {name: (None if v != v else v) for name, v in zip(self.names, values, strict=True)}
