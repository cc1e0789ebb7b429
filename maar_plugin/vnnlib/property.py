"""A VNN-LIB property as arrays: an input box and the *unsafe* output region.

VNN-LIB asserts describe a counterexample: the property is violated (``sat``) iff some input x in the
box has an output y = f(x) inside the disjunction of conjunctions below; it holds (``unsat``) iff none
does. Each conjunction is a set of linear rows ``C @ y <= d``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Conjunction:
    """All rows must hold: ``coefficients @ y <= bounds`` (shapes [rows, outputs] and [rows])."""

    coefficients: np.ndarray
    bounds: np.ndarray

    def satisfied_by(self, outputs: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether an output vector lies in this region (rows may be violated by ``tolerance``)."""
        return bool(np.all(self.coefficients @ outputs <= self.bounds + tolerance))


@dataclass(frozen=True)
class VnnlibProperty:
    """Input box ``lower <= x <= upper`` (flat, length = number of inputs) and the unsafe region."""

    input_lower: np.ndarray
    input_upper: np.ndarray
    unsafe: list[Conjunction]
    num_outputs: int
    comments: dict[str, str] = field(default_factory=dict)

    @property
    def num_inputs(self) -> int:
        return int(self.input_lower.shape[0])

    def violated_by(self, outputs: np.ndarray, tolerance: float = 0.0) -> bool:
        """Whether an output vector is a counterexample (lies in some unsafe conjunction)."""
        return any(c.satisfied_by(outputs, tolerance) for c in self.unsafe)
