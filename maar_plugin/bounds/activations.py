"""Linear relaxations of the S-shaped activations Sigmoid and Tanh over an input interval [l, u].

Both are increasing, convex on (−∞, 0], concave on [0, ∞) and point-symmetric about (0, f(0)). The
lines are CROWN's (Zhang et al. 2018, sec. 3.2; auto_LiRPA's choice of tangent points):

- lower line: on the concave side (l ≥ 0) the chord; on the convex side (u ≤ 0) the tangent at the
  midpoint; across 0 the chord where it stays below f (its slope at most f'(l)), else the tangent at
  the largest d ≤ 0 whose tangent passes below (u, f(u)), found by bisection. That tangent is below f on
  the convex side, and on [0, u] because f − tangent is concave there and non-negative at both ends;
- upper line: the lower line of [−u, −l], reflected through (0, f(0)).

The lines are computed in float64 and moved outwards by ``ROUNDING_PAD·(1 + |intercept| + |slope|·max(|l|,
|u|))``, which covers rounding them to float32 anywhere on [l, u]. On intervals narrower than
``MIN_WIDTH`` they are the constants f(l) and f(u).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

MIN_WIDTH = 1e-6
ROUNDING_PAD = 1e-7
BISECTION_STEPS = 60


class LinearRelaxation(NamedTuple):
    """``lower_slope·z + lower_intercept <= f(z) <= upper_slope·z + upper_intercept`` for z in [l, u]."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor

    def backward(self, A: Tensor) -> tuple[Tensor, Tensor]:
        """For a lower bound of ``A · f(z)`` (``A`` [R, B, *shape]): the coefficients on z and the constant [R, B]."""
        positive, negative = A.clamp(min=0), A.clamp(max=0)
        A_in = positive * self.lower_slope + negative * self.upper_slope
        constant = (positive * self.lower_intercept + negative * self.upper_intercept).flatten(2).sum(-1)
        return A_in, constant


def _sigmoid_derivative(z: Tensor) -> Tensor:
    value = torch.sigmoid(z)
    return value * (1 - value)


def _tanh_derivative(z: Tensor) -> Tensor:
    return 1 - torch.tanh(z) ** 2


S_SHAPED: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "sigmoid": (torch.sigmoid, _sigmoid_derivative),
    "tanh": (torch.tanh, _tanh_derivative),
}


def s_shaped_relaxation(kind: str, lower: Tensor, upper: Tensor) -> LinearRelaxation:
    """The relaxation (module docstring) of ``kind`` (a key of :data:`S_SHAPED`) over [lower, upper], elementwise,
    in the dtype of ``lower``."""
    function, derivative = S_SHAPED[kind]
    l, u = lower.detach().double(), upper.detach().double()
    low_slope, low_intercept = _lower_line(function, derivative, l, u)
    up_slope, mirrored_intercept = _lower_line(function, derivative, -u, -l)
    up_intercept = 2 * function(torch.zeros_like(u)) - mirrored_intercept
    narrow = (u - l) < MIN_WIDTH
    zero = torch.zeros_like(u)
    low_slope, up_slope = torch.where(narrow, zero, low_slope), torch.where(narrow, zero, up_slope)
    low_intercept = torch.where(narrow, function(l), low_intercept)
    up_intercept = torch.where(narrow, function(u), up_intercept)
    reach = torch.maximum(l.abs(), u.abs())
    low_intercept = low_intercept - ROUNDING_PAD * (1 + low_intercept.abs() + low_slope.abs() * reach)
    up_intercept = up_intercept + ROUNDING_PAD * (1 + up_intercept.abs() + up_slope.abs() * reach)
    return LinearRelaxation(*(t.to(lower.dtype) for t in (low_slope, low_intercept, up_slope, up_intercept)))


def _lower_line(function: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor], l: Tensor,
                u: Tensor) -> tuple[Tensor, Tensor]:
    """(slope, intercept) of the lower line over [l, u] (module docstring), float64."""
    f_l, f_u = function(l), function(u)
    chord = (f_u - f_l) / (u - l).clamp(min=MIN_WIDTH)
    middle = (l + u) / 2
    # the largest d in [l, 0] whose tangent stays below (u, f(u)); meaningful where l < 0 < u and the chord
    # is not below f (then d = l qualifies, and the tangent's value at u grows with d on (−∞, 0])
    below, above = l.clamp(max=0), torch.zeros_like(l)
    for _ in range(BISECTION_STEPS):
        d = (below + above) / 2
        fits = function(d) + derivative(d) * (u - d) <= f_u
        below, above = torch.where(fits, d, below), torch.where(fits, above, d)
    tangent_point = torch.where(u <= 0, middle, below)
    use_chord = (l >= 0) | ((u > 0) & (l < 0) & (chord <= derivative(l)))
    slope = torch.where(use_chord, chord, derivative(tangent_point))
    intercept = torch.where(use_chord, f_l - chord * l, function(tangent_point) - slope * tangent_point)
    return slope, intercept
