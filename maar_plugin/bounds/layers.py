"""The per-layer pieces of every linear bound pass, written once for training and verification alike.

- :func:`relu_relaxation`: the linear lines that enclose ``relu`` on an input interval [l, u] (CROWN; Zhang
  et al. 2018), with the lower slope auto_LiRPA uses by default ("adaptive": 1 where u > −l, else 0);
- :func:`conv2d_backward`: a row of coefficients on a convolution's output, carried to its input (the
  transposed convolution, with the output padding that restores the input's size);
- :func:`batch_norm_affine`: BatchNorm with given statistics as the per-channel map ``scale * x + shift``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ReluRelaxation(NamedTuple):
    """``lower_slope · z <= relu(z) <= upper_slope · z + upper_intercept`` for z in [l, u] (elementwise)."""

    lower_slope: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor


def adaptive_lower_slope(lower: Tensor, upper: Tensor) -> Tensor:
    """The lower line's slope of an unstable ReLU that keeps the smaller triangle: 1 where u > −l, else 0."""
    return (upper > -lower).to(upper.dtype)


def relu_relaxation(lower: Tensor, upper: Tensor, lower_slope: Tensor | None = None) -> ReluRelaxation:
    """CROWN's relaxation of ``relu`` over [lower, upper]: exact on stable neurons (active: identity, inactive:
    zero); on unstable ones (l < 0 < u) the chord ``u (z − l)/(u − l)`` above and ``α z`` below, with α the
    given ``lower_slope`` (α-CROWN's optimised slopes, in [0, 1]) or :func:`adaptive_lower_slope`.

    Differentiable in ``lower`` and ``upper`` (certified training back-propagates through them)."""
    active = (lower >= 0).to(upper.dtype)
    unstable = (lower < 0) & (upper > 0)
    width = torch.where(unstable, upper - lower, torch.ones_like(upper))
    upper_slope = torch.where(unstable, upper / width, active)
    upper_intercept = torch.where(unstable, -lower * upper_slope, torch.zeros_like(upper))
    slope = adaptive_lower_slope(lower, upper) if lower_slope is None else lower_slope
    return ReluRelaxation(torch.where(unstable, slope, active), upper_slope, upper_intercept)


def conv2d_backward(conv: nn.Conv2d, coefficients: Tensor, input_size: Sequence[int]) -> Tensor:
    """Coefficients [N, C_out, H_out, W_out] on the convolution's output as coefficients [N, C_in, *input_size]
    on its input: the product with the Jacobian of its linear part (its bias is the caller's)."""
    if isinstance(conv.padding, str):
        raise ValueError("convolutions with string padding have no fixed transpose; export with numeric padding")
    output_padding = tuple(
        int(size) - ((out - 1) * stride - 2 * padding + dilation * (kernel - 1) + 1)
        for size, out, stride, padding, dilation, kernel in zip(
            tuple(input_size)[-2:], coefficients.shape[-2:], conv.stride, conv.padding, conv.dilation,
            conv.kernel_size))
    return F.conv_transpose2d(coefficients, conv.weight, None, conv.stride, conv.padding, output_padding,
                              conv.groups, conv.dilation)


def batch_norm_affine(mean: Tensor, variance: Tensor, eps: float, weight: Tensor | None = None,
                      bias: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel with ``BatchNorm(x) = scale * x + shift`` for the given statistics:
    ``scale = weight / sqrt(variance + eps)``, ``shift = bias − mean · scale``."""
    scale = torch.rsqrt(variance + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift
