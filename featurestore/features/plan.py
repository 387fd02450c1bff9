"""A version's plan: its features compiled once into steps the engine runs per call.

The plan lists the distinct windows (one `searchsorted` each per call) and, per feature in
file order, one function of the call's context. Intermediates are shared through the context
(`context.py`), so features over the same window, filter and field read one sort, one sum.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from featurestore.definitions.model import FeatureSet
from featurestore.features.context import FeatureContext
from featurestore.features.ops import EXPRESSION, OPS

Step = Callable[[FeatureContext, dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class Plan:
    version: str
    windows: tuple[int, ...]  # distinct window lengths in ms (the whole history is implied)
    names: tuple[str, ...]  # every feature, served or not, in file order
    steps: tuple[Step, ...]
    served: np.ndarray  # positions of the served features in `names`
    all_served: bool  # no hidden feature: the computed block is the vector

    def describe(self) -> list[str]:
        """One line per step, for `featurestore definitions check`."""
        return [f"{name}" for name in self.names]


def compile_plan(feature_set: FeatureSet) -> Plan:
    windows = sorted(
        {
            f.definition.window_ms
            for f in feature_set.all_features
            if f.definition.op != EXPRESSION and f.definition.window_ms is not None
        }
    )
    steps = []
    for feature in feature_set.all_features:
        d = feature.definition
        if d.op == EXPRESSION:
            steps.append(_expression_step(d.expr))
        else:
            steps.append(_op_step(OPS[d.op].compute, d))
    served = np.array(
        [i for i, f in enumerate(feature_set.all_features) if f.serve], dtype=np.int64
    )
    return Plan(
        version=feature_set.version,
        windows=tuple(windows),
        names=tuple(f.name for f in feature_set.all_features),
        steps=tuple(steps),
        served=served,
        all_served=len(served) == len(feature_set.all_features),
    )


def _op_step(compute, definition) -> Step:
    def step(context: FeatureContext, _earlier: dict[str, np.ndarray]) -> np.ndarray:
        return compute(context, definition)

    return step


def _expression_step(node: tuple) -> Step:
    def step(context: FeatureContext, earlier: dict[str, np.ndarray]) -> np.ndarray:
        result = evaluate(node, earlier)
        if isinstance(result, np.ndarray) and result.shape == context.found.shape:
            return result
        return np.full(context.found.shape, result, dtype=np.float64)  # a constant expression

    return step


def _divide(a, b):
    return np.where(np.equal(b, 0), np.nan, np.divide(a, b))


_BINARY = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": _divide}
_REDUCE = {"min": np.minimum, "max": np.maximum}


def evaluate(node: tuple, earlier: dict[str, np.ndarray]) -> np.ndarray | float:
    """An expression over earlier features' values (as served: NaN where not finite): NaN in,
    NaN out; x / 0 is NaN; the engine turns a non-finite final result into null."""
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "ref":  # a feature's value: null where it is not finite
        value = earlier[node[1]]
        infinite = np.isinf(value)
        return np.where(infinite, np.nan, value) if infinite.any() else value
    if kind == "neg":
        return np.negative(evaluate(node[1], earlier))
    if kind == "abs":
        return np.abs(evaluate(node[1], earlier))
    if kind in _REDUCE:
        return functools.reduce(_REDUCE[kind], (evaluate(a, earlier) for a in node[1]))
    return _BINARY[kind](evaluate(node[1], earlier), evaluate(node[2], earlier))
