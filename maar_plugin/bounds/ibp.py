"""Interval bound propagation (IBP, Gowal et al. 2018) in plain torch for ``Sequential`` models.

The same bounds as auto_LiRPA's ``compute_bounds(method="IBP", C=spec)`` without its per-node graph
overhead: one pass in centre/radius form. Affine layers map the centre ``m`` and radius ``r`` of a box
as ``W m + b`` and ``|W| r``; ReLU maps the end points. A training step with these bounds takes
0.6-0.9 of the auto_LiRPA step's time on small (launch-bound) models, the same on large convolutional
ones (benchmarks/training_speed.py).

BatchNorm follows auto_LiRPA 0.3 (``BoundBatchNormalization.interval_propagate``, default bn mode
"forward"): in eval mode it is the affine map of the running statistics; in train mode it
normalises with the batch mean and (biased) variance of the *clean* forward pass at that layer,
which auto_LiRPA takes from the last ``forward`` call on the bounded input. Here the clean pass runs
alongside the bounds (input ``clean``, by default the box centre) and its statistics stay in the
autograd graph, as in auto_LiRPA; running statistics are not updated (the natural forward pass of a
training step does that).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maar_plugin.bounds.layers import batch_norm_affine
from maar_plugin.errors import MaarError
from maar_plugin.models.normalize import Normalize

Interval = tuple[Tensor, Tensor]


@dataclass
class IbpTrace:
    """What an IBP pass leaves for a CROWN pass back through the same layers (``bounds.crown``): each
    layer's input shape per example, and in order the input bounds of each ReLU and the map
    ``scale * x + shift`` (per channel) of each BatchNorm, with the statistics the pass used."""

    input_shapes: list[torch.Size] = field(default_factory=list)
    relu_inputs: list[Interval] = field(default_factory=list)
    batch_norm_affines: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def interval_bounds(model: nn.Sequential, lower: Tensor, upper: Tensor, spec: Tensor | None = None,
                    *, clean: Tensor | None = None) -> Interval:
    """IBP bounds of ``model`` (or of ``spec @ model``, spec [B, S, K]) over the box [lower, upper].

    ``spec`` is folded into the final Linear layer (``W' = spec W``, ``b' = spec b``), as auto_LiRPA does.
    ``clean``: the input whose batch statistics train-mode BatchNorm uses; defaults to the box centre.
    """
    return _propagate(model, lower, upper, spec, clean, trace=None)


def interval_bounds_with_relu_inputs(model: nn.Sequential, lower: Tensor, upper: Tensor,
                                     spec: Tensor | None = None, *, clean: Tensor | None = None
                                     ) -> tuple[Interval, list[Interval]]:
    """``interval_bounds`` plus the pre-activation bounds (lower, upper) at the input of every ReLU, in order."""
    bounds, trace = interval_bounds_with_trace(model, lower, upper, spec, clean=clean)
    return bounds, trace.relu_inputs


def interval_bounds_with_trace(model: nn.Sequential, lower: Tensor, upper: Tensor, spec: Tensor | None = None,
                               *, clean: Tensor | None = None) -> tuple[Interval, IbpTrace]:
    """``interval_bounds`` plus the ``IbpTrace`` a CROWN pass over the same box needs (CROWN-IBP)."""
    trace = IbpTrace()
    return _propagate(model, lower, upper, spec, clean, trace), trace


def _propagate(model: nn.Sequential, lower: Tensor, upper: Tensor, spec: Tensor | None,
               clean: Tensor | None, trace: IbpTrace | None) -> Interval:
    if not isinstance(model, nn.Sequential):
        raise MaarError(f"fused IBP needs an nn.Sequential model, got {type(model).__name__}")
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    reference = _clean_input(model, centre, clean)
    layers = list(model)
    final = layers[-1] if spec is not None and layers and isinstance(layers[-1], nn.Linear) else None
    for layer in layers[:-1] if final is not None else layers:
        if trace is not None:
            trace.input_shapes.append(centre.shape[1:])
        if isinstance(layer, nn.ReLU):
            low, high = centre - radius, centre + radius
            if trace is not None:
                trace.relu_inputs.append((low, high))
            low, high = low.clamp(min=0), high.clamp(min=0)
            centre, radius = (high + low) / 2, (high - low) / 2
            reference = None if reference is None else reference.clamp(min=0)
        else:
            centre, radius, reference = _affine_layer(layer, centre, radius, reference, trace)
    if spec is not None and final is not None:
        weight = spec.matmul(final.weight)
        bias = spec.matmul(final.bias) if final.bias is not None else 0.0
        centre, radius = _batched_affine(weight, bias, centre, radius)
    elif spec is not None:
        centre, radius = _batched_affine(spec, 0.0, centre, radius)
    return centre - radius, centre + radius


def _clean_input(model: nn.Sequential, centre: Tensor, clean: Tensor | None) -> Tensor | None:
    """The clean input, carried along only when some BatchNorm normalises with batch statistics."""
    uses_batch_stats = any(isinstance(layer, nn.modules.batchnorm._BatchNorm) and _uses_batch_stats(layer)
                           for layer in model)
    if not uses_batch_stats:
        return None
    return centre if clean is None else clean


def _uses_batch_stats(norm: nn.modules.batchnorm._BatchNorm) -> bool:
    return norm.training or norm.running_mean is None


def _batched_affine(weight: Tensor, bias: Tensor | float, centre: Tensor, radius: Tensor) -> tuple[Tensor, Tensor]:
    """A per-example affine map ``weight`` [B, S, N] on a box given as centre/radius [B, N]."""
    new_centre = weight.matmul(centre.unsqueeze(-1)).squeeze(-1) + bias
    new_radius = weight.abs().matmul(radius.unsqueeze(-1)).squeeze(-1)
    return new_centre, new_radius


def _affine_layer(layer: nn.Module, centre: Tensor, radius: Tensor, reference: Tensor | None,
                  trace: IbpTrace | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """Centre, radius and clean input through one layer that is affine (given its statistics)."""
    if isinstance(layer, nn.Linear):
        return (F.linear(centre, layer.weight, layer.bias), F.linear(radius, layer.weight.abs()),
                None if reference is None else layer(reference))
    if isinstance(layer, nn.Conv2d):
        if layer.padding_mode != "zeros":
            raise MaarError(f"fused IBP supports only zero padding, not Conv2d padding_mode={layer.padding_mode!r}")
        return (layer(centre), layer._conv_forward(radius, layer.weight.abs(), None),
                None if reference is None else layer(reference))
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        scale, shift = _batch_norm_affine(layer, reference)
        if trace is not None:
            trace.batch_norm_affines.append((scale, shift))
        shape = (1, -1) + (1,) * (centre.ndim - 2)
        scale, shift = scale.view(shape), shift.view(shape)
        return (centre * scale + shift, radius * scale.abs(),
                None if reference is None else reference * scale + shift)
    if isinstance(layer, Normalize):
        return (layer(centre), radius / layer.std.abs(), None if reference is None else layer(reference))
    if isinstance(layer, nn.Flatten):
        return layer(centre), layer(radius), None if reference is None else layer(reference)
    raise MaarError(f"fused IBP does not support layer {type(layer).__name__}; supported: Normalize, Conv2d, "
                    "BatchNorm1d, BatchNorm2d, ReLU, Flatten, Linear")


def _batch_norm_affine(norm: nn.modules.batchnorm._BatchNorm, reference: Tensor | None) -> tuple[Tensor, Tensor]:
    """BatchNorm as ``scale * x + shift`` per channel: running statistics in eval mode, the clean batch's in
    train mode."""
    if _uses_batch_stats(norm):
        assert reference is not None, "batch statistics need the clean input (_clean_input)"
        dims = [0, *range(2, reference.ndim)]
        mean, var = reference.mean(dims), reference.var(dims, unbiased=False)
    else:
        assert norm.running_mean is not None and norm.running_var is not None  # else batch statistics
        mean, var = norm.running_mean, norm.running_var
    return batch_norm_affine(mean, var, norm.eps, norm.weight, norm.bias)
