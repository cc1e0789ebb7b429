"""Branch and bound on the input box, for networks with few inputs (ACAS Xu-like).

With a handful of inputs, halving the box is cheaper than splitting ReLUs: it shrinks every ReLU's
input range at once, and auto_LiRPA bounds many boxes in one batched CROWN pass. Each iteration takes
up to ``batch_size`` boxes, the newest first (depth first, so the queue stays short), each with the
disjunct it must refute; bounds them; drops every box whose bound clears the tolerance; runs each kept
box's centre through the network (a centre that violates its disjunct goes to ``confirm``); and halves
each kept box along the input whose width times the sensitivity of the box's nearest-to-refuted row
(|∂(C_r y)/∂x| at the centre) is largest.

Halving alone is not complete: near a tie (a disjunct reached within the float32 tolerance, never beyond
it) the boxes shrink without end. A box narrower than ``EXACT_WIDTH`` of the root box's width in every
input is therefore handed to branch and bound on ReLU splits (:class:`~.bab.BranchAndBound`, complete
with its exact LP of fully split domains), from CROWN's intermediate bounds over that small box, where
almost every ReLU is stable.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import Tensor

from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.search.bab import BabOutcome, BabProblem, BranchAndBound

EXACT_WIDTH = 1e-3   # relative width below which a box goes to branch and bound on ReLU splits


class InputSplitSearch:
    """One search over the box of one problem (its ``relu_bounds`` are not needed)."""

    def __init__(self, stages: LirpaBoundStages, engine: SplitBoundEngine, problem: BabProblem, options: BabOptions,
                 memory: MemoryBudget, confirm: Callable[[Tensor], Tensor | None]) -> None:
        self.stages, self.engine, self.options, self.memory, self.confirm = stages, engine, options, memory, confirm
        device = stages.device
        self.C = problem.C.to(device, torch.float32)
        self.offsets = problem.offsets.to(device, torch.float32)
        self.thresholds = problem.thresholds.to(device, torch.float32)
        self.lower = problem.lower.to(device, torch.float32).reshape(1, -1)
        self.upper = problem.upper.to(device, torch.float32).reshape(1, -1)
        inputs = self.lower.shape[1]
        self.max_domains = max(1000, int(memory.search_store // (4 * (2 * inputs + 2))))

    def run(self, deadline: float) -> BabOutcome:
        count = self.C.shape[0]
        lower, upper = self.lower.repeat(count, 1), self.upper.repeat(count, 1)
        disjunct = torch.arange(count, device=self.lower.device)
        visited = iterations = 0
        undecided = ""
        while disjunct.numel():
            if time.monotonic() > deadline:
                return BabOutcome("timeout", domains=visited, iterations=iterations,
                                  message=f"{disjunct.numel()} input boxes open at the deadline")
            if disjunct.numel() > self.max_domains:
                return BabOutcome("unknown", domains=visited, iterations=iterations,
                                  message=f"more than {self.max_domains} open input boxes (memory limit)")
            take = min(self.options.batch_size * 4, disjunct.numel())
            box_lower, box_upper, box_disjunct = lower[-take:], upper[-take:], disjunct[-take:]
            lower, upper, disjunct = lower[:-take], upper[:-take], disjunct[:-take]
            visited += take
            iterations += 1
            C = self.C[box_disjunct]
            margin = self.stages.box_lower_bounds(box_lower, box_upper, C) \
                - self.offsets[box_disjunct] - self.thresholds[box_disjunct]
            keep = margin.max(dim=1).values <= 0
            if not bool(keep.any()):
                continue
            box_lower, box_upper = box_lower[keep], box_upper[keep]
            box_disjunct, margin = box_disjunct[keep], margin[keep]
            centre = ((box_lower + box_upper) / 2).requires_grad_(True)
            with torch.enable_grad():
                outputs = self.stages.model(centre)
                values = torch.einsum("brk,bk->br", self.C[box_disjunct], outputs) - self.offsets[box_disjunct]
                nearest = margin.argmax(dim=1, keepdim=True)
                (gradient,) = torch.autograd.grad(values.gather(1, nearest).sum(), centre)
            violating = (values.detach() <= 0).all(dim=1)
            if bool(violating.any()):
                found = self.confirm(centre.detach()[violating])
                if found is not None:
                    return BabOutcome("counterexample", found, domains=visited, iterations=iterations)
            width = box_upper - box_lower
            tiny = (width <= EXACT_WIDTH * (self.upper - self.lower)).all(dim=1)
            for index in torch.nonzero(tiny).reshape(-1).tolist():
                outcome = self.decide_exactly(box_lower[index], box_upper[index], int(box_disjunct[index]), deadline)
                visited += outcome.domains
                if outcome.status == "unknown":
                    undecided = outcome.message     # other boxes may still hold a counterexample
                elif outcome.status != "proved":
                    return BabOutcome(outcome.status, outcome.point, visited, iterations, outcome.message)
            if bool(tiny.all()):
                continue
            keep = ~tiny
            box_lower, box_upper, box_disjunct = box_lower[keep], box_upper[keep], box_disjunct[keep]
            centre, gradient, width = centre[keep], gradient[keep], width[keep]
            axis = (width * (gradient.abs() + 1e-12)).argmax(dim=1)
            rows = torch.arange(axis.numel(), device=axis.device)
            middle = centre.detach()[rows, axis]
            left_upper, right_lower = box_upper.clone(), box_lower.clone()
            left_upper[rows, axis], right_lower[rows, axis] = middle, middle
            lower = torch.cat([lower, box_lower, right_lower])
            upper = torch.cat([upper, left_upper, box_upper])
            disjunct = torch.cat([disjunct, box_disjunct, box_disjunct])
        if undecided:
            return BabOutcome("unknown", domains=visited, iterations=iterations, message=undecided)
        return BabOutcome("proved", domains=visited, iterations=iterations)

    def decide_exactly(self, lower: Tensor, upper: Tensor, disjunct: int, deadline: float) -> BabOutcome:
        """Branch and bound on ReLU splits over one small box, for one disjunct."""
        box_lower, box_upper = lower.to(self.engine.device)[None], upper.to(self.engine.device)[None]
        with torch.no_grad():
            root = self.engine.intermediate_bounds(box_lower, box_upper)
        problem = BabProblem(self.C[disjunct:disjunct + 1], self.offsets[disjunct:disjunct + 1],
                             self.thresholds[disjunct:disjunct + 1], lower, upper,
                             {relu: (low[0], up[0]) for relu, (low, up) in root.items()})
        return BranchAndBound(self.engine, problem, self.options, self.memory, self.confirm).run(deadline)
