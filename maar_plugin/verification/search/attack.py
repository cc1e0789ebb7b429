"""PGD towards the unsafe disjuncts of one input box: the counterexample search of the cascade and of
branch and bound.

One batch element per (restart, disjunct): each element ascends its own disjunct's smallest row slack
``d − C y`` (a gradient through a max over disjuncts would only ever pull towards one of them); every
other element ascends instead the sum of the rows' violations ``Σ_r min(d_r − C_r y, 0)``, which moves
all unmet rows of a conjunction at once where the smallest slack moves only one (both reach 0 exactly at
a point of the disjunct). Steps start at a quarter of the box's half-width and shrink by 1 % a step (as
α,β-CROWN's attack). A step's batch is at most ``STEP_BUDGET`` multiply-adds (and ``MAX_BATCH`` examples),
at least one element per disjunct: small networks — the low-dimensional control networks, ACAS Xu's — can
take thousands of restarts, where a counterexample is often a needle that ten random starts miss.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from maar_plugin.attacks import pgd_maximize
from maar_plugin.vnnlib.property import VnnlibProperty

STEP_BUDGET = 200_000_000   # multiply-adds per PGD step: batch × the network's multiply-adds per example
MAX_BATCH = 10_000          # α,β-CROWN's restarts on ACAS Xu


def stacked_rows(prop: VnnlibProperty, disjuncts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of the given disjuncts as one spec matrix, their offsets and the disjunct of each row."""
    rows = np.concatenate([prop.unsafe[j].coefficients for j in disjuncts]).astype(np.float64)
    offsets = np.concatenate([prop.unsafe[j].bounds for j in disjuncts]).astype(np.float64)
    owners = np.concatenate([np.full(len(prop.unsafe[j].bounds), j) for j in disjuncts])
    return rows, offsets, owners


class DisjunctAttack:
    """PGD on ``model`` over the box of ``prop`` (see the module docstring); ``multiply_adds`` (of one example's
    forward pass) sizes the batch."""

    def __init__(self, model: nn.Module, prop: VnnlibProperty, device: torch.device, multiply_adds: int,
                 budget: int = STEP_BUDGET) -> None:
        self.model, self.prop, self.device = model, prop, device
        self.affordable = min(budget // max(1, multiply_adds), MAX_BATCH)
        self.lower = torch.as_tensor(prop.input_lower, dtype=torch.float32, device=device).reshape(1, -1)
        self.upper = torch.as_tensor(prop.input_upper, dtype=torch.float32, device=device).reshape(1, -1)

    def batch_size(self, restarts: int, disjuncts: int) -> int:
        """Elements per PGD step: ``restarts`` per disjunct within the budget, never fewer than one per disjunct."""
        return max(min(restarts * disjuncts, self.affordable), disjuncts)

    def candidates(self, disjuncts: list[int], restarts: int, steps: int, starts: Tensor | None = None,
                   count: int = 3) -> tuple[Tensor, Tensor]:
        """The ``count`` points of the search with the largest violation (``≥ 0``: inside a disjunct, up to
        float32 rounding), best first, [count, n], and their violations ``min_r (d_r − C_r y)`` of their own
        disjunct, [count]; ``starts`` [k, n] replace the first random starts."""
        rows, offsets, owners = stacked_rows(self.prop, disjuncts)
        C = torch.as_tensor(rows, dtype=torch.float32, device=self.device)
        d = torch.as_tensor(offsets, dtype=torch.float32, device=self.device)
        owner = torch.as_tensor(owners, device=self.device)
        mask = owner[None, :] == torch.as_tensor(disjuncts, device=self.device)[:, None]   # [D, rows]
        batch = self.batch_size(restarts, len(disjuncts))
        target = torch.arange(batch, device=self.device) % len(disjuncts)
        hinge = (torch.arange(batch, device=self.device) // len(disjuncts)) % 2 == 1
        row_mask = mask[target]

        def violation(outputs: Tensor) -> Tensor:
            return (d - outputs @ C.T).masked_fill(~row_mask, torch.inf).min(dim=1).values

        def objective(outputs: Tensor) -> Tensor:
            slack = d - outputs @ C.T
            summed = slack.clamp(max=0).masked_fill(~row_mask, 0.0).sum(dim=1)
            return torch.where(hinge, summed, slack.masked_fill(~row_mask, torch.inf).min(dim=1).values)

        lower, upper = self.lower.expand(batch, -1), self.upper.expand(batch, -1)
        start = lower + torch.rand_like(lower) * (upper - lower)
        if starts is not None:
            given = starts.reshape(-1, lower.shape[1])[:batch].to(device=self.device, dtype=torch.float32)
            start[: len(given)] = given
        best = pgd_maximize(self.model, lower, upper, objective, steps=steps, restarts=1, start=start,
                            step_size=(upper - lower) / 8, step_decay=0.99, stop_above=1e-3)
        with torch.no_grad():
            scores = violation(self.model(best))
        order = torch.argsort(scores, descending=True)[:count]
        return best[order], scores[order]
