"""BatchNorm statistics of the clean batch for every forward pass of a training step, as CTBench sets them.

CTBench (``BasicModelWrapper.compute_nat_loss_and_set_BN``) runs the clean batch first, which updates the
running statistics as usual, and then freezes each train-mode BatchNorm to that batch's mean and (biased)
variance for the attack, the bound pass and the adversarial logits of the same step. ``clean_batch_statistics``
does the same for any torch model. The statistics stay in the autograd graph; eval-mode BatchNorm is left alone.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextmanager
def clean_batch_statistics(model: nn.Module, x: Tensor) -> Iterator[Tensor]:
    """Run the clean pass ``model(x)`` and yield its logits; inside the block every further forward pass
    normalises with the clean batch's statistics and leaves the running statistics alone."""
    norms = [module for module in model.modules() if isinstance(module, _BatchNorm) and module.training]
    inputs: dict[nn.Module, Tensor] = {}
    handles = [norm.register_forward_pre_hook(lambda module, arguments: inputs.setdefault(module, arguments[0]))
               for norm in norms]
    try:
        logits = model(x)
    finally:
        for handle in handles:
            handle.remove()
    frozen = [norm for norm in norms if norm in inputs]
    for norm in frozen:
        # an instance attribute that shadows the class's forward until the ``del`` below
        norm.forward = partial(_normalise, norm, *_batch_moments(inputs[norm]))  # type: ignore[method-assign]
    try:
        yield logits
    finally:
        for norm in frozen:
            del norm.forward


def _batch_moments(batch: Tensor) -> tuple[Tensor, Tensor]:
    dims = [0, *range(2, batch.ndim)]
    return batch.mean(dims), batch.var(dims, unbiased=False)


def _normalise(norm: _BatchNorm, mean: Tensor, var: Tensor, batch: Tensor) -> Tensor:
    shape = (1, -1) + (1,) * (batch.ndim - 2)
    scale = torch.rsqrt(var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    out = (batch - mean.view(shape)) * scale.view(shape)
    return out + norm.bias.view(shape) if norm.bias is not None else out
