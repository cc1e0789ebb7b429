"""Linear relaxations of Sigmoid and Tanh: sound on every interval, and touching the function."""
from __future__ import annotations

import pytest
import torch

from maar_plugin.bounds.activations import S_SHAPED, s_shaped_relaxation


def intervals(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative, positive, crossing, wide (|z| up to 60), narrow and degenerate intervals."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.5, 3.0, 20.0, 0.01], dtype=torch.float64).repeat(1000)
    widths = torch.tensor([0.1, 4.0, 40.0, 1e-6], dtype=torch.float64).repeat(1000)
    centre = torch.randn(4000, generator=generator, dtype=torch.float64) * scale
    width = torch.rand(4000, generator=generator, dtype=torch.float64) * widths
    width[:10] = 0.0
    return centre - width / 2, centre + width / 2


@pytest.mark.parametrize("kind", sorted(S_SHAPED))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_relaxation_encloses_the_function_and_touches_it(kind, dtype):
    function, _ = S_SHAPED[kind]
    lower, upper = intervals(0)
    lines = s_shaped_relaxation(kind, lower.to(dtype), upper.to(dtype))
    fraction = torch.linspace(0, 1, 2001, dtype=torch.float64)[:, None]
    z = (lower + fraction * (upper - lower)).to(dtype)                                # [points, intervals]
    value = function(z.double())
    below = (lines.lower_slope * z + lines.lower_intercept).double()                  # the lines as the pass uses them
    above = (lines.upper_slope * z + lines.upper_intercept).double()
    assert bool((below <= value).all()) and bool((value <= above).all())
    # not vacuous: each line meets the function (within the grid's resolution and the rounding pad)
    wide = (upper - lower) > 1e-3
    assert float((value - below).min(dim=0).values[wide].max()) < 1e-3
    assert float((above - value).min(dim=0).values[wide].max()) < 1e-3


def test_backward_gives_a_lower_bound_of_the_weighted_sum():
    lower, upper = torch.tensor([[-2.0, 0.5, -3.0]]), torch.tensor([[1.0, 2.0, -1.0]])
    relaxation = s_shaped_relaxation("sigmoid", lower, upper)
    A = torch.tensor([[[1.0, -2.0, 0.5]]])                                              # [R, B, n]
    A_in, constant = relaxation.backward(A)
    z = lower + torch.rand(5000, 3) * (upper - lower)
    exact = (A[0] * torch.sigmoid(z)).sum(-1)
    bound = (A_in[0] * z).sum(-1) + constant[0]
    assert bool((bound <= exact + 1e-6).all()) and float((exact - bound).min()) < 0.5
