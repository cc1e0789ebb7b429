"""A verification problem in memory: an input box and an unsafe output region, as a VNN-LIB file states one.

The region is a union of conjunctions ``C y <= d`` over the network's outputs y, the form of VNN-LIB's
asserts and of α,β-CROWN's ``VerificationSpec`` clauses: the property holds (verdict ``unsat``) iff no
input in the box has its output inside the region, and is violated (``sat``) iff some input does.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from maar_plugin.errors import MaarError
from maar_plugin.vnnlib.property import Conjunction, VnnlibProperty
from maar_plugin.vnnlib.writer import robustness_box

ArrayLike = Tensor | np.ndarray | Sequence[float] | Sequence[Sequence[float]]


def _float64(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class VerificationSpec:
    """Inputs ``lower <= x <= upper`` (arrays of the model's per-example input shape, no batch dimension) and
    the unsafe outputs: ``y`` with ``C @ y <= d`` for some ``(C, d)`` of ``unsafe`` (C: [rows, outputs])."""

    lower: np.ndarray
    upper: np.ndarray
    unsafe: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __init__(self, lower: ArrayLike, upper: ArrayLike,
                 unsafe: Sequence[tuple[ArrayLike, ArrayLike]]) -> None:
        low, high = _float64(lower), _float64(upper)
        if low.shape != high.shape or low.ndim == 0:
            raise MaarError(f"the input box's lower and upper bounds must be arrays of one shape, got {low.shape} "
                            f"and {high.shape}")
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (low <= high).all()):
            raise MaarError("the input box must have finite bounds with lower <= upper")
        regions: list[tuple[np.ndarray, np.ndarray]] = []
        for index, (coefficients, bounds) in enumerate(unsafe):
            C, d = np.atleast_2d(_float64(coefficients)), np.atleast_1d(_float64(bounds))
            if C.ndim != 2 or d.shape != (C.shape[0],) or (regions and C.shape[1] != regions[0][0].shape[1]):
                raise MaarError(f"unsafe region {index}: C must be [rows, outputs] (outputs as in the others) and d "
                                f"[rows], got {C.shape} and {d.shape}")
            regions.append((C, d))
        if not regions:
            raise MaarError("the unsafe output region needs at least one conjunction (C, d)")
        object.__setattr__(self, "lower", low)
        object.__setattr__(self, "upper", high)
        object.__setattr__(self, "unsafe", tuple(regions))

    @classmethod
    def robustness(cls, x: ArrayLike, label: int, eps: float, num_classes: int,
                   domain: tuple[float, float] | None = (0.0, 1.0)) -> VerificationSpec:
        """L∞ robustness of ``x``: every input within ``eps`` of it (clipped to ``domain``; None: unclipped)
        is classified as ``label``. The box is the one ``maar export`` writes to VNN-LIB (float32 bounds rounded
        outward); the unsafe region is ``y_j >= y_label`` for some class ``j != label``."""
        if not eps > 0:
            raise MaarError(f"eps must be positive, got {eps}")
        if not 0 <= int(label) < num_classes:
            raise MaarError(f"label {label} is outside 0..{num_classes - 1}")
        pixels = _float64(x)
        lower, upper = robustness_box(pixels, eps, domain)
        unsafe = []
        for other in range(num_classes):
            if other != label:
                row = np.zeros((1, num_classes))
                row[0, label], row[0, other] = 1.0, -1.0
                unsafe.append((row, np.zeros(1)))
        return cls(lower.reshape(pixels.shape), upper.reshape(pixels.shape), unsafe)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.lower.shape)

    @property
    def num_outputs(self) -> int:
        return int(self.unsafe[0][0].shape[1])

    def violated_by(self, output: ArrayLike) -> bool:
        """Whether an output vector lies in the unsafe region (the input that gave it is a counterexample)."""
        return self.to_property().violated_by(_float64(output).reshape(-1))

    def to_property(self) -> VnnlibProperty:
        """The flat form the verifier works on (inputs in C order, as VNN-LIB numbers ``X_i``)."""
        return VnnlibProperty(self.lower.reshape(-1), self.upper.reshape(-1),
                              [Conjunction(C, d) for C, d in self.unsafe], self.num_outputs)
