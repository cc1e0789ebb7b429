"""IBP initialisation and warm-up regulariser of Shi et al. 2021, "Fast certified robust training with
short warmup" (NeurIPS 2021), on the fused IBP bounds.

IBP initialisation (their Sec. 3.2) draws weights from N(0, σ²) with σ = sqrt(2π) / n_in, n_in the
fan-in: then E|w| = 2 / n_in, a box of radius r maps to pre-activations of radius about 2r, and the
ReLU halves it again, so bound widths neither explode nor vanish with depth.

The warm-up regulariser (their Sec. 3.3) is L_tightness + L_relu, averaged over the ReLU layers, with
tolerance τ (0.5 in their code). For a ReLU whose pre-activation box has centres c and radii r:

- L_tightness = ReLU(τ - r̄₀ / r̄) / τ, where r̄₀ is the mean radius of the (normalised) input box and
  r̄ that of the pre-activation box: it grows once bounds are over 1/τ times looser than the input.
- L_relu = (ReLU(τ - balance(mean)) + ReLU(τ - balance(var))) / τ compares the active neurons
  (lower > 0) with the inactive ones (upper < 0): ``mean`` is mean(c·[active]) against
  -mean(c·[inactive]), ``var`` is sum((c - mean c)²·[active]) against the same over the inactive ones,
  and balance(a, b) = min(a, b) / max(a, b) = min(a/b, b/a) as in their code.

Their code skips a layer whose L_relu is NaN (no stable neuron at all); here that layer's balance
terms are 0 instead, which is the same value without NaN gradients. Shi et al. weight the sum by
λ(1 - ε_t/ε_max) with λ = 0.5 during the ε ramp; that weighting belongs to the training objective.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maar_plugin.bounds.ibp import Interval, interval_bounds_with_relu_inputs
from maar_plugin.models.normalize import Normalize


@torch.no_grad()
def ibp_initialize_(model: nn.Module) -> nn.Module:
    """Re-draw every Linear/Conv2d weight but the last from N(0, (sqrt(2π)/fan_in)²) and zero its bias.

    The last affine layer keeps its initialisation, as in Shi et al.'s code; biases are zeroed so that
    the bounds' centres start unbiased (their code leaves biases as they are).
    """
    affine = [layer for layer in model.modules() if isinstance(layer, (nn.Linear, nn.Conv2d))]
    for layer in affine[:-1]:
        fan_in = layer.weight[0].numel()
        layer.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
        if layer.bias is not None:
            layer.bias.zero_()
    return model


def warmup_regularizer(model: nn.Sequential, lower: Tensor, upper: Tensor, tolerance: float = 0.5,
                       clean: Tensor | None = None) -> Tensor:
    """L_tightness + L_relu of Shi et al. 2021 for the IBP bounds of ``model`` over [lower, upper] (a scalar).

    ``clean``: the input whose statistics train-mode BatchNorm uses (see ``interval_bounds``).
    """
    _, relu_inputs = interval_bounds_with_relu_inputs(model, lower, upper, clean=clean)
    input_bounds = (lower, upper)
    if isinstance(model[0], Normalize):
        input_bounds = (model[0](lower), model[0](upper))
    return regularizer_from_bounds(input_bounds, relu_inputs, tolerance)


def regularizer_from_bounds(input_bounds: Interval, relu_inputs: list[Interval], tolerance: float) -> Tensor:
    """L_tightness + L_relu (see the module docstring) from the input box and the ReLU pre-activation boxes."""
    if not relu_inputs:
        return input_bounds[0].new_zeros(())
    input_radius = ((input_bounds[1] - input_bounds[0]) / 2).mean()
    tightness = relu_balance = input_radius.new_zeros(())
    for lower, upper in relu_inputs:
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        tightness = tightness + F.relu(tolerance - input_radius / radius.mean().clamp(min=1e-12)) / tolerance
        active, inactive = (lower > 0).to(centre.dtype), (upper < 0).to(centre.dtype)
        mean_active, mean_inactive = (centre * active).mean(), -(centre * inactive).mean()
        spread = (centre - centre.mean()) ** 2
        var_active, var_inactive = (spread * active).sum(), (spread * inactive).sum()
        relu_balance = relu_balance + (_shortfall(mean_active, mean_inactive, tolerance)
                                       + _shortfall(var_active, var_inactive, tolerance)) / tolerance
    return (tightness + relu_balance) / len(relu_inputs)


def _shortfall(a: Tensor, b: Tensor, tolerance: float) -> Tensor:
    """ReLU(τ - min(a, b) / max(a, b)) for a, b >= 0; 0 when both are 0 (a layer without stable neurons)."""
    largest = torch.maximum(a, b)
    balance = torch.minimum(a, b) / largest.clamp(min=1e-12)
    return torch.where(largest > 0, F.relu(tolerance - balance), torch.zeros_like(balance))
