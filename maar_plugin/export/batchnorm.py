"""Fold BatchNorm into the preceding Conv2d/Linear, so exported networks hold only affine maps and ReLUs."""
from __future__ import annotations

import copy

import torch
from torch import nn

from maar_plugin.bounds.layers import batch_norm_affine
from maar_plugin.errors import MaarError

_FOLDABLE: dict[type[nn.Module], type[nn.Module]] = {nn.BatchNorm2d: nn.Conv2d, nn.BatchNorm1d: nn.Linear}


def fold_batchnorm(model: nn.Sequential) -> nn.Sequential:
    """A copy of ``model`` in eval mode with every BatchNorm merged into the layer before it.

    In eval mode BatchNorm is the per-channel affine map ``y = s * (x - mean) + beta`` with
    ``s = gamma / sqrt(var + eps)``; after ``x = W z + b`` this is ``(s W) z + s (b - mean) + beta``,
    so the folded network computes the same function (up to float rounding). The input model is left
    untouched.
    """
    folded: list[nn.Module] = []
    for index, layer in enumerate(model):
        if type(layer) not in _FOLDABLE or not isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            folded.append(copy.deepcopy(layer))
            continue
        previous = folded[-1] if folded else None
        if type(previous) is not _FOLDABLE[type(layer)] or not isinstance(previous, (nn.Conv2d, nn.Linear)):
            found = type(previous).__name__ if previous is not None else "nothing"
            raise MaarError(f"layer {index} ({type(layer).__name__}) follows {found}; only BatchNorm right after "
                            f"{_FOLDABLE[type(layer)].__name__} can be folded for export")
        if layer.running_mean is None or layer.running_var is None:
            raise MaarError(f"layer {index} ({type(layer).__name__}) has no running statistics to fold")
        folded[-1] = _merged(previous, layer)
    return nn.Sequential(*folded).eval()


def _merged(affine: nn.Conv2d | nn.Linear, norm: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Conv2d | nn.Linear:
    """``affine`` followed by ``norm`` (eval mode) as one layer of ``affine``'s type, with a bias."""
    assert norm.running_mean is not None and norm.running_var is not None  # fold_batchnorm checked
    with torch.no_grad():
        scale, shift = batch_norm_affine(norm.running_mean.double(), norm.running_var.double(), norm.eps,
                                         None if norm.weight is None else norm.weight.double(),
                                         None if norm.bias is None else norm.bias.double())
        weight = affine.weight.double() * scale.view(-1, *([1] * (affine.weight.dim() - 1)))
        bias = affine.bias.double() * scale + shift if affine.bias is not None else shift
        merged = copy.deepcopy(affine)
        if merged.bias is None:
            merged.bias = nn.Parameter(torch.empty_like(bias, dtype=affine.weight.dtype))
        merged.weight.copy_(weight)
        merged.bias.copy_(bias)
    return merged
