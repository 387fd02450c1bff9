"""Values at the edges of float64 never raise and never come out infinite (SPEC §4: null)."""

import numpy as np
import pytest

from featurestore.features.engine import compute
from featurestore.features.registry import REGISTRY
from featurestore.store.batch import EventBatch

DAY_MS = 86_400_000


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    "values",
    [
        [1e308, 1.5e308],
        [-1.7e308, 1.7e308, 1.7e308],
        [1e-303, 2e-303, 3e-303, 1e6],
        [5e-324, 1e-323],
        [1.7976931348623157e308] * 3,
    ],
)
def test_extreme_values_give_finite_numbers_or_null(version: str, values: list[float]) -> None:
    # Given events whose values sit at the edges of float64
    stamps = [DAY_MS * (i + 1) for i in range(len(values))]
    batch = EventBatch.from_columns(["e"], ts=stamps, value=values)
    # When features are computed
    with np.errstate(all="raise"):
        matrix = compute(batch, np.zeros(1, dtype=np.int64), DAY_MS * 40, version, [])
    # Then nothing is infinite, and the mean is right where it is representable
    assert not np.isinf(matrix.values).any()
    mean = matrix.values[0, REGISTRY[version].names.index("value_mean")]
    if version == "v1" and max(abs(v) for v in values) > 1e300:
        expected = sum(v / 2**64 for v in values) / len(values) * 2**64
        assert mean == pytest.approx(expected, rel=1e-12)


def test_mean_of_two_huge_values_is_exact() -> None:
    batch = EventBatch.from_columns(["e"], ts=[1, 2], value=[1e308, 1.5e308])
    matrix = compute(batch, np.zeros(1, dtype=np.int64), 10, "v1", [])
    assert matrix.values[0, 0] == 1.25e308
