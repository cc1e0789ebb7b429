"""An exact decision, by one LP, of a branch-and-bound domain in which every unstable ReLU is split.

Such a domain fixes every ReLU of the network: root-stable ones by the root's sound bounds, the
others by the splits (``s_i = +1`` active, ``−1`` inactive). On the input box the network is then
affine, and so are the disjunct's rows ``C_r f(x) = a_r·x + b_r`` and every split neuron's
pre-activation ``z_i(x) = w_i·x + c_i``. Both maps come from :class:`SplitBoundEngine` in float64 with
every ReLU given as stable (input bounds (1, 1) active, (−1, −1) inactive): its backward pass then
relaxes nothing, so its linear bound *is* the map (the float32 weights convert to float64 exactly).

A point of the domain reaches the disjunct ``C y <= d`` within the thresholds θ when ``s_i z_i(x) >= 0``
for every split neuron and ``C_r f(x) − d_r − θ_r <= 0`` for every row. One LP asks for the point that
satisfies all of them with the largest common slack:

    min t   s.t.   C_r f(x) − d_r − θ_r <= t  (every row),   −s_i z_i(x) <= t  (every split),   x in the box.

It is always feasible and bounded. ``t* > 0`` means every input of the box either leaves the domain or
has some row above its threshold, so the domain is refuted; an empty domain (splits that contradict
each other) is the case where the split terms alone keep ``t*`` above 0, so it needs no infeasibility
branch. This refutes on the max over rows, as the MILP does: weaker than the bound passes' "one row
clears its threshold on the whole domain", and exact. Where ``t* <= 0`` a second LP finds the domain's
deepest violation, ``min max_r (C_r f(x) − d_r)`` subject to ``s_i z_i(x) >= 0`` (on the boundary both
pieces of a ReLU agree, so the network is the same there): a candidate counterexample, for the caller to
confirm on the original model. The value
compared with 0 is :func:`~maar_plugin.verification.bounding.lp.safe_lower_bound` of HiGHS's duals, valid
whatever the solver's tolerances; the maps' float64 rounding (relative 1e-16) is far below the thresholds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from torch import Tensor

from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.bounding.lp import LinearRelaxation, solve_relaxation
from maar_plugin.verification.network.layers import LayerGraph

RANGE_PAD = 1e-6  # relative widening of the finite bounds given to t (they must not cut the optimum)


@dataclass(frozen=True)
class AffinePiece:
    """The network on one activation pattern, float64: rows ``C f(x) = rows_weight @ x + rows_bias`` [R],
    split pre-activations ``z(x) = splits_weight @ x + splits_bias`` [S] with their split signs [S]."""

    rows_weight: np.ndarray
    rows_bias: np.ndarray
    splits_weight: np.ndarray
    splits_bias: np.ndarray
    split_signs: np.ndarray


@dataclass(frozen=True)
class PatternVerdict:
    """``refuted`` when the LP's sound lower bound ``bound`` is above 0; otherwise ``point`` is the domain's
    deepest violation, clipped to the box (None if HiGHS gave none), and ``value`` its largest row
    ``max_r (C_r f(x) − d_r)`` there (no thresholds)."""

    refuted: bool
    bound: float
    point: np.ndarray | None = None
    value: float = float("nan")


class FixedPatternLP:
    """Decides fully split domains over one input box, given the root's ReLU input bounds [*shape]."""

    def __init__(self, graph: LayerGraph, root_bounds: dict[int, tuple[Tensor, Tensor]], lower: Tensor,
                 upper: Tensor, device: str | torch.device = "cpu"):
        self.engine = SplitBoundEngine(graph, dtype=torch.float64, device=device)
        self.root = {relu: tuple(bound.to(dtype=torch.float64, device=device) for bound in pair)
                     for relu, pair in root_bounds.items()}
        self.lower = lower.detach().to(torch.float64).cpu().numpy().reshape(-1)
        self.upper = upper.detach().to(torch.float64).cpu().numpy().reshape(-1)

    def affine_piece(self, C: Tensor, split_signs: dict[int, Tensor]) -> AffinePiece:
        """The maps of rows ``C`` [R, K] and of the split neurons on the pattern that ``split_signs`` (per ReLU,
        [*shape], ±1 split, 0 unsplit: must be root-stable) fixes."""
        engine, device = self.engine, self.engine.device
        pattern, split_neurons = {}, {}
        for relu in engine.relus:
            l, u = self.root[relu]
            sign = split_signs[relu].to(device)
            if bool(((sign == 0) & (l < 0) & (u > 0)).any()):
                raise ValueError(f"ReLU node {relu} has an unstable neuron without a split")
            active = (sign > 0) | ((sign == 0) & (l >= 0))
            fixed = torch.where(active, 1.0, -1.0).to(torch.float64)[None]
            pattern[relu] = (fixed, fixed)
            split_neurons[relu] = torch.nonzero(sign.reshape(-1)).reshape(-1)
        zero = torch.zeros(1, self.lower.size, dtype=torch.float64, device=device)
        with torch.no_grad():
            rows = engine.bound(C.to(device=device, dtype=torch.float64)[:, None], zero, zero, pattern)
            weights, biases, signs = [rows.input_coefficients[:, 0]], [rows.lower[:, 0]], []
            for relu, index in split_neurons.items():
                if not index.numel():
                    continue
                source = engine.relu_inputs[relu]
                shape = engine.graph.nodes[source].shape
                one_hot = torch.zeros(index.numel(), int(np.prod(shape)), dtype=torch.float64, device=device)
                one_hot[torch.arange(index.numel(), device=device), index] = 1.0
                split = engine.bound(one_hot.reshape(-1, 1, *shape), zero, zero, pattern, start=source)
                weights.append(split.input_coefficients[:, 0])
                biases.append(split.lower[:, 0])
                signs.append(split_signs[relu].reshape(-1).to(device)[index])
        count = C.shape[0]
        weight, bias = torch.cat(weights).cpu().numpy(), torch.cat(biases).cpu().numpy()
        split_sign = torch.cat(signs).cpu().numpy().astype(np.float64) if signs else np.zeros(0)
        return AffinePiece(weight[:count], bias[:count], weight[count:], bias[count:], split_sign)

    def decide(self, C: Tensor, offsets: Tensor, thresholds: Tensor, split_signs: dict[int, Tensor],
               time_limit: float) -> PatternVerdict:
        """Decide the domain of ``split_signs`` for the disjunct ``C y <= offsets`` ([R, K], [R]; module docstring).

        Where the domain is not refuted, the point returned is the domain's deepest violation instead of the
        common-slack LP's minimiser: ``min max_r (C_r f(x) − d_r)`` subject to the splits, a second LP."""
        started = time.monotonic()
        piece = self.affine_piece(C, split_signs)
        slack = (offsets.double() + thresholds.double()).cpu().numpy()
        # constraints g_k(x) = G_k·x + h_k <= t: rows first, then splits
        G = np.concatenate([piece.rows_weight, -piece.split_signs[:, None] * piece.splits_weight])
        h = np.concatenate([piece.rows_bias - slack, -piece.split_signs * piece.splits_bias])
        bound, point = solve_relaxation(self._max_row_program(G, h, G.shape[0]), time_limit)
        if bound > 0:
            return PatternVerdict(True, bound)
        rows = len(piece.rows_bias)
        h_rows = h.copy()
        h_rows[:rows] = piece.rows_bias - offsets.double().cpu().numpy()       # the rows without the thresholds
        _, deepest = solve_relaxation(self._max_row_program(G, h_rows, rows),
                                      time_limit - (time.monotonic() - started))
        point = deepest if deepest is not None else point
        if point is None:
            return PatternVerdict(False, bound)
        point = np.clip(point, self.lower, self.upper)
        return PatternVerdict(False, bound, point, float((G[:rows] @ point + h_rows[:rows]).max()))

    def _max_row_program(self, G: np.ndarray, h: np.ndarray, with_t: int) -> LinearRelaxation:
        """``min t`` over the box with ``G_k·x + h_k <= t`` for the first ``with_t`` constraints and
        ``G_k·x + h_k <= 0`` for the others; ``t`` gets finite interval bounds (needed by the sound bound)."""
        centre, radius = (self.upper + self.lower) / 2, (self.upper - self.lower) / 2
        low, up = G[:with_t] @ centre - np.abs(G[:with_t]) @ radius + h[:with_t], \
            G[:with_t] @ centre + np.abs(G[:with_t]) @ radius + h[:with_t]
        t_low, t_up = float(low.max()), float(up.max())
        t_column = -np.concatenate([np.ones(with_t), np.zeros(G.shape[0] - with_t)])[:, None]
        return LinearRelaxation(
            sparse.csr_matrix(np.hstack([G, t_column])), np.full(G.shape[0], -np.inf), -h,
            np.append(self.lower, t_low - RANGE_PAD * (1 + abs(t_low))),
            np.append(self.upper, t_up + RANGE_PAD * (1 + abs(t_up))),
            np.eye(1, G.shape[1] + 1, G.shape[1]).reshape(-1), self.lower.size)
