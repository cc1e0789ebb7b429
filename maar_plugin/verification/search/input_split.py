"""Branch and bound on the input box, for networks with few inputs (ACAS Xu-like).

With a handful of inputs, halving the box is cheaper than splitting ReLUs: it shrinks every ReLU's input
range at once. Each iteration takes a batch of boxes, the newest first (depth first, so the queue stays
short), each with the disjunct it must refute, and bounds them all in one pass of
:class:`~maar_plugin.verification.bounding.linear.SplitBoundEngine` (CROWN, intermediate bounds of every
ReLU included). Then, per box:

- a box some row of whose disjunct has a lower bound that clears the tolerance is dropped;
- the others are *clipped* (as α,β-CROWN's ``clip_input_domain``): a violation needs every row's linear
  lower bound ``a_r·x + c_r`` (a function of the input, valid on the box) to be ≤ 0, so each coordinate
  is cut to where that halfspace meets the box; a box the cut empties is dropped too;
- the clipped box's centre is run through the network (a centre that violates its disjunct goes to
  ``confirm``) and the box is halved along the input whose width times the sensitivity of its row
  nearest to refuted (|∂(C_r y)/∂x| at the centre) is largest.

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
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.search.bab import FLOAT32_ALLOWANCE, BabOutcome, BabProblem, BranchAndBound

EXACT_WIDTH = 1e-3   # relative width below which a box goes to branch and bound on ReLU splits
BOXES_PER_UNIT = 64  # boxes per iteration for each domain of ``BabOptions.batch_size``
ITERATION_SECONDS = 2.0  # an iteration's batch shrinks to about this long, so the deadline is kept


class InputSplitSearch:
    """One search over the box of one problem (its ``relu_bounds`` are not needed)."""

    def __init__(self, engine: SplitBoundEngine, problem: BabProblem, options: BabOptions, memory: MemoryBudget,
                 confirm: Callable[[Tensor], Tensor | None]) -> None:
        self.engine, self.options, self.memory, self.confirm = engine, options, memory, confirm
        dtype, device = engine.dtype, engine.device
        self.C = problem.C.to(device, dtype)
        self.offsets = problem.offsets.to(device, dtype)
        self.thresholds = problem.thresholds.to(device, dtype)
        self.lower = problem.lower.to(device, dtype).reshape(1, -1)
        self.upper = problem.upper.to(device, dtype).reshape(1, -1)
        inputs = self.lower.shape[1]
        self.max_domains = max(1000, int(memory.search_store // (4 * (2 * inputs + 2))))
        # a pass holds every ReLU's bounds and, per row, coefficients for every node of every box
        neurons = sum(int(torch.Size(node.shape).numel()) for node in engine.graph.nodes)
        per_box = 4 * neurons * (4 + 3 * self.C.shape[1])
        self.batch = max(1, min(options.batch_size * BOXES_PER_UNIT, int(memory.search_pass // per_box)))

    def run(self, deadline: float) -> BabOutcome:
        count = self.C.shape[0]
        lower, upper = self.lower.repeat(count, 1), self.upper.repeat(count, 1)
        disjunct = torch.arange(count, device=self.lower.device)
        visited = iterations = 0
        undecided = ""
        last_started: float | None = None  # the last iteration's start and boxes: its time sizes the next batch
        take = 0
        while disjunct.numel():
            if time.monotonic() > deadline:
                return BabOutcome("timeout", domains=visited, iterations=iterations,
                                  message=f"{disjunct.numel()} input boxes open at the deadline")
            if disjunct.numel() > self.max_domains:
                return BabOutcome("unknown", domains=visited, iterations=iterations,
                                  message=f"more than {self.max_domains} open input boxes (memory limit)")
            now = time.monotonic()
            limit = self.batch
            if last_started is not None and now > last_started:
                seconds_per_box = (now - last_started) / take
                limit = max(1, min(limit, int(min(ITERATION_SECONDS, deadline - now) / seconds_per_box)))
            take, last_started = min(limit, disjunct.numel()), now
            box_lower, box_upper, box_disjunct = lower[-take:], upper[-take:], disjunct[-take:]
            lower, upper, disjunct = lower[:-take], upper[:-take], disjunct[:-take]
            visited += take
            iterations += 1
            box_lower, box_upper, box_disjunct, margin = self.bound_and_clip(box_lower, box_upper, box_disjunct)
            if not box_disjunct.numel():
                continue
            centre = ((box_lower + box_upper) / 2).requires_grad_(True)
            with torch.enable_grad():
                outputs = self.engine.forward(centre)
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
            keep = ~tiny
            box_lower, box_upper, box_disjunct = box_lower[keep], box_upper[keep], box_disjunct[keep]
            centre, gradient, width = centre.detach()[keep], gradient[keep], width[keep]
            axis = (width * (gradient.abs() + 1e-12)).argmax(dim=1)
            rows = torch.arange(axis.numel(), device=axis.device)
            middle = centre[rows, axis]
            left_upper, right_lower = box_upper.clone(), box_lower.clone()
            left_upper[rows, axis], right_lower[rows, axis] = middle, middle
            lower = torch.cat([lower, box_lower, right_lower])
            upper = torch.cat([upper, left_upper, box_upper])
            disjunct = torch.cat([disjunct, box_disjunct, box_disjunct])
        if undecided:
            return BabOutcome("unknown", domains=visited, iterations=iterations, message=undecided)
        return BabOutcome("proved", domains=visited, iterations=iterations)

    def bound_and_clip(self, lower: Tensor, upper: Tensor, disjunct: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The boxes that stay open, clipped, with their disjuncts and rows' margins (see the module docstring)."""
        C = self.C[disjunct].transpose(0, 1)                               # [R, B, K]
        with torch.no_grad():
            relu_bounds = self.engine.intermediate_bounds(lower, upper)
            result = self.engine.bound(C, lower, upper, relu_bounds)
        # rows within the tolerance, and float32 rounding of the pass, are never refuted nor clipped away
        slack = (self.offsets[disjunct] + self.thresholds[disjunct]).T + FLOAT32_ALLOWANCE * result.magnitude
        margin = result.lower - slack                                      # > 0: the row is refuted on the box
        open_boxes = (margin <= 0).all(dim=0)
        # a violation needs a_r·x + c_r <= slack_r for every row r, with c_r = lower_r − min over the box of a_r·x
        a = result.input_coefficients                                      # [R, B, n]
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        minimum = (a * centre).sum(-1) - (a.abs() * radius).sum(-1)       # [R, B]
        budget = slack - (result.lower - minimum)                          # a_r·x <= budget_r
        for row in range(a.shape[0]):
            coefficients, room = a[row], budget[row] - minimum[row]       # Σ_i a_i x_i − min a·x <= room
            smallest = torch.where(coefficients >= 0, coefficients * lower, coefficients * upper)
            limit = smallest + room[:, None]                               # a_i x_i <= limit_i
            positive, negative = coefficients > 0, coefficients < 0
            upper = torch.where(positive, torch.minimum(upper, limit / coefficients.clamp(min=1e-30)), upper)
            lower = torch.where(negative, torch.maximum(lower, limit / coefficients.clamp(max=-1e-30)), lower)
            centre, radius = (upper + lower) / 2, (upper - lower) / 2
            minimum = (a * centre).sum(-1) - (a.abs() * radius).sum(-1)
        open_boxes &= (upper >= lower).all(dim=1)
        return lower[open_boxes], upper[open_boxes], disjunct[open_boxes], margin.T[open_boxes]

    def decide_exactly(self, lower: Tensor, upper: Tensor, disjunct: int, deadline: float) -> BabOutcome:
        """Branch and bound on ReLU splits over one small box, for one disjunct."""
        with torch.no_grad():
            root = self.engine.intermediate_bounds(lower[None], upper[None])
        problem = BabProblem(self.C[disjunct:disjunct + 1], self.offsets[disjunct:disjunct + 1],
                             self.thresholds[disjunct:disjunct + 1], lower, upper,
                             {relu: (low[0], up[0]) for relu, (low, up) in root.items()})
        return BranchAndBound(self.engine, problem, self.options, self.memory, self.confirm).run(deadline)
