"""The input box of a perturbation: the L-inf ε-ball around x, clipped to the [0, 1] pixel range."""
from __future__ import annotations

from torch import Tensor


def linf_ball_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(lower, upper) of {x' : ||x' − x||∞ ≤ ε} ∩ [0, 1]^n."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
