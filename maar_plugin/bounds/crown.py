"""CROWN lower bounds (Zhang et al. 2018) in plain torch for ``Sequential`` models, from the intermediate
bounds of an IBP pass: CROWN-IBP (Zhang et al. 2020), as auto_LiRPA's ``compute_bounds(method="CROWN-IBP")``.

The linear function ``A @ layer(h) + b`` that lower-bounds ``spec @ model`` is carried back from the
output to the input box, where it is concretised as ``A·centre − |A|·radius + b``. Affine layers map
``A`` exactly (a Conv2d by a transposed convolution); a ReLU with input bounds [l, u] is relaxed as
auto_LiRPA 0.3 to 0.7 relax it by default (:func:`~maar_plugin.bounds.layers.relu_relaxation`), each
line taken by the sign of ``A``. BatchNorm is the affine map
the IBP pass used (``IbpTrace``), so both passes bound one function. Gradients reach the parameters
through ``A``, the biases and the intermediate bounds, by autograd.

On the CPU this costs a training step a fraction of auto_LiRPA's CROWN pass, whose sign-split
multiplication has a slow hand-written backward (``benchmarks/training_speed.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from maar_plugin.bounds.ibp import IbpTrace
from maar_plugin.bounds.layers import conv2d_backward, relu_relaxation
from maar_plugin.errors import MaarError
from maar_plugin.models import SUPPORTED_LAYERS
from maar_plugin.models.normalize import Normalize


def supports_crown(model: nn.Module) -> bool:
    """Whether ``crown_lower`` handles every layer of ``model`` (a Sequential of the supported layers,
    convolutions with numeric zero padding)."""
    return isinstance(model, nn.Sequential) and all(_supported(layer) for layer in model)


def crown_lower(model: nn.Sequential, lower: Tensor, upper: Tensor, spec: Tensor, trace: IbpTrace) -> Tensor:
    """Lower bounds [B, S] of ``spec @ model(x)`` (spec [B or 1, S, K]) over the box [lower, upper].

    ``trace``: an ``interval_bounds_with_trace`` pass of ``model`` over the same box (its ReLU input bounds
    and BatchNorm maps). A final Linear layer is folded into ``spec``.
    """
    if not supports_crown(model):
        layers = ", ".join(kind.__name__ for kind in SUPPORTED_LAYERS)
        raise MaarError(f"plain-torch CROWN needs an nn.Sequential of {layers} (Conv2d with numeric zero padding), "
                        f"got {type(model).__name__}")
    coefficients, bias = spec, spec.new_zeros(())
    relu_inputs, batch_norm_affines = list(trace.relu_inputs), list(trace.batch_norm_affines)
    first = 0
    if len(model) and isinstance(model[0], Normalize):  # exact on the box (std > 0); cheaper than through A
        lower, upper, first = model[0](lower), model[0](upper), 1
    for index in reversed(range(first, len(model))):
        layer = model[index]
        if isinstance(layer, nn.ReLU):
            coefficients, bias = _relu_backward(coefficients, bias, *relu_inputs.pop())
        elif isinstance(layer, nn.Linear):
            if layer.bias is not None:
                bias = bias + coefficients.matmul(layer.bias)
            coefficients = coefficients.matmul(layer.weight)
        elif isinstance(layer, nn.Conv2d):
            coefficients, bias = _conv_backward(layer, coefficients, bias, trace.input_shapes[index])
        elif isinstance(layer, nn.Flatten):
            coefficients = coefficients.reshape(*coefficients.shape[:2], *trace.input_shapes[index])
        elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
            coefficients, bias = _channel_affine_backward(coefficients, bias, *batch_norm_affines.pop())
        else:  # Normalize: (x − mean) / std
            assert isinstance(layer, Normalize)  # supports_crown allows no other layer
            scale = 1.0 / layer.std.flatten()
            coefficients, bias = _channel_affine_backward(coefficients, bias, scale, -layer.mean.flatten() * scale)
    centre, radius = ((upper + lower) / 2).flatten(1), ((upper - lower) / 2).flatten(1)
    coefficients = coefficients.flatten(2)
    return (coefficients.matmul(centre.unsqueeze(-1)) - coefficients.abs().matmul(radius.unsqueeze(-1))).squeeze(-1) \
        + bias


def _supported(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Conv2d):
        return not isinstance(layer.padding, str) and layer.padding_mode == "zeros"
    if isinstance(layer, nn.Flatten):
        return layer.start_dim >= 1
    return isinstance(layer, SUPPORTED_LAYERS)


def _relu_backward(coefficients: Tensor, bias: Tensor, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """Through ReLU over inputs in [low, high] [B, ...], as auto_LiRPA's ``BoundRelu`` (adaptive lower slope)."""
    relaxation = relu_relaxation(low, high)
    lower_slope, upper_slope = relaxation.lower_slope.unsqueeze(1), relaxation.upper_slope.unsqueeze(1)
    negative = coefficients.clamp(max=0)
    new_coefficients = coefficients * lower_slope + negative * (upper_slope - lower_slope)
    intercept = negative.flatten(2).matmul(relaxation.upper_intercept.flatten(1).unsqueeze(-1)).squeeze(-1)
    return new_coefficients, bias + intercept


def _conv_backward(layer: nn.Conv2d, coefficients: Tensor, bias: Tensor, input_shape: torch.Size
                   ) -> tuple[Tensor, Tensor]:
    batch, rows = coefficients.shape[:2]
    if layer.bias is not None:
        bias = bias + coefficients.sum((-2, -1)).matmul(layer.bias)
    flat = conv2d_backward(layer, coefficients.reshape(batch * rows, *coefficients.shape[2:]), input_shape)
    return flat.view(batch, rows, *flat.shape[1:]), bias


def _channel_affine_backward(coefficients: Tensor, bias: Tensor, scale: Tensor, shift: Tensor
                             ) -> tuple[Tensor, Tensor]:
    """Through ``scale * x + shift`` per channel (dimension 2 of ``coefficients`` [B, S, C, ...])."""
    shape = (-1,) + (1,) * (coefficients.ndim - 3)
    bias = bias + (coefficients.flatten(3).sum(-1) if coefficients.ndim > 3 else coefficients).matmul(shift)
    return coefficients * scale.view(shape), bias
