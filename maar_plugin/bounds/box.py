"""The input box of a perturbation: the L-inf ε-ball around x, clipped to the [0, 1] pixel range."""
from __future__ import annotations

import torch
from torch import Tensor


def linf_ball_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(lower, upper) of {x' : ||x' − x||∞ ≤ ε} ∩ [0, 1]^n."""
    return (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)


def small_box(lower: Tensor, upper: Tensor, centre: Tensor, shrinkage: float) -> tuple[Tensor, Tensor]:
    """SABR's box (Müller et al. 2023) inside [lower, upper]: radius τ = λ·(upper − lower)/2 per coordinate
    (λ·ε where the ε-ball is not clipped by [0, 1]), around ``centre`` clipped to [lower + τ, upper − τ]."""
    radius = shrinkage * (upper - lower) / 2
    centre = torch.max(torch.min(centre, upper - radius), lower + radius)
    return torch.max(centre - radius, lower), torch.min(centre + radius, upper)
