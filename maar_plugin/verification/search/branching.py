"""Branching strategies for branch and bound on ReLU splits: which unsplit unstable ReLU a domain splits on.

A strategy gets a :class:`BranchingInput` (per domain, each root-unstable ReLU's output coefficient in the
domain's bound, which ReLUs are still unsplit, and a function that bounds both children of candidate
splits) and returns one neuron per domain, −1 where every unstable ReLU is split already.

- ``intercept``: the neuron whose upper relaxation's intercept costs the bound most (BaBSR's intercept
  score; Bunel et al. 2020, "Branch and bound for piecewise linear neural network verification");
- ``babsr``: the neuron with the highest BaBSR score (the intercept's cost plus the bias term's change
  over the two children; Bunel et al. 2020, eq. 10; α,β-CROWN's ``babsr``);
- ``fsb``, filtered smart branching (De Palma et al. 2021, "Improved branch and bound for neural network
  verification via Lagrangian decomposition"; α,β-CROWN's ``kfsb``): the top ``candidates`` neurons by
  BaBSR's score and the top ``candidates`` by the intercept score are each split, both children are
  bounded once with the parent's α and β (one batched pass, no optimisation), and the candidate whose
  worse child has the highest bound wins.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

USEFUL_SCORE = 1e-4  # a score below this says the split barely changes the bound (α,β-CROWN's cut-off)


@dataclass(frozen=True)
class BranchingInput:
    """``coefficients`` [B, U]: each root-unstable ReLU's output coefficient in the bound of the domain's
    best row; ``lower``/``upper`` [U]: its input bounds at the root (l < 0 < u); ``bias`` [U]: the bias of
    the layer computing its input; ``unsplit`` [B, U]; ``child_margins``: candidate neurons [B, M] → the
    margins [B, M, 2] of their active and inactive children."""

    coefficients: Tensor
    lower: Tensor
    upper: Tensor
    bias: Tensor
    unsplit: Tensor
    child_margins: Callable[[Tensor], Tensor]


def intercept_score(inputs: BranchingInput) -> Tensor:
    """What the upper relaxation's intercept ``−l u/(u − l)`` costs the bound (higher: split first), with a
    tie-break by ``|A|·min(u, −l)`` where no intercept is paid."""
    A, l, u = inputs.coefficients, inputs.lower, inputs.upper
    return (-A).clamp(min=0) * (-l * u / (u - l)) + 1e-6 * A.abs() * torch.minimum(u, -l)


def babsr_score(inputs: BranchingInput) -> Tensor:
    """BaBSR's score (Bunel et al. 2020, eq. 10, as α,β-CROWN computes it): the intercept's cost plus an
    estimate, from the layer's bias, of how the bias term changes over the two children."""
    A, l, u, bias = inputs.coefficients, inputs.lower, inputs.upper, inputs.bias
    slope = u / (u - l)
    bias_change = torch.minimum(bias * A * (slope - 1), bias * A * slope)
    return (bias_change + A.clamp(max=0) * (-l * slope)).abs()


def _best_unsplit(score: Tensor, unsplit: Tensor) -> Tensor:
    choice = torch.where(unsplit, score, torch.full_like(score, -torch.inf)).argmax(dim=1)
    return torch.where(unsplit.any(dim=1), choice, torch.full_like(choice, -1))


def intercept_choice(inputs: BranchingInput, candidates: int) -> Tensor:
    """The unsplit neuron with the highest intercept score; no bound pass."""
    return _best_unsplit(intercept_score(inputs), inputs.unsplit)


def babsr_choice(inputs: BranchingInput, candidates: int) -> Tensor:
    """The unsplit neuron with the highest BaBSR score; no bound pass."""
    return _best_unsplit(babsr_score(inputs), inputs.unsplit)


def fsb_choice(inputs: BranchingInput, candidates: int) -> Tensor:
    """Filtered smart branching (see the module docstring); the intercept choice where no candidate's score
    reaches USEFUL_SCORE."""
    unsplit = inputs.unsplit
    by_intercept = intercept_score(inputs)
    fallback = _best_unsplit(by_intercept, unsplit)
    count = min(candidates, unsplit.shape[1])
    if count == 0 or unsplit.shape[0] == 0:
        return fallback
    tops = [torch.where(unsplit, score, torch.full_like(score, -torch.inf)).topk(count, dim=1)
            for score in (babsr_score(inputs), by_intercept)]
    neurons = torch.cat([top.indices for top in tops], dim=1)                              # [B, 2k]
    useful = torch.cat([top.values > USEFUL_SCORE for top in tops], dim=1)
    worse_child = inputs.child_margins(neurons).min(dim=2).values
    worse_child = torch.where(useful, worse_child, torch.full_like(worse_child, -torch.inf))
    choice = neurons.gather(1, worse_child.argmax(dim=1, keepdim=True)).reshape(-1)
    return torch.where(useful.any(dim=1), choice, fallback)


BRANCHING_STRATEGIES: dict[str, Callable[[BranchingInput, int], Tensor]] = {
    "intercept": intercept_choice,
    "babsr": babsr_choice,
    "fsb": fsb_choice,
}
