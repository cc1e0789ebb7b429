"""Seeded networks and properties on which a verifier's verdicts can be checked against the exact MILP.

Shared by the test suite and the benchmarks (``benchmarks/bab_near_ties.py``, ``bab_branching.py``), so that
both judge the verifier on the same problems.
"""
from __future__ import annotations

import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

from maar_plugin.testing.dense import AffineLayer, ReluNetwork, interval_preactivation_bounds
from maar_plugin.testing.milp import solve_disjunct
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.search.bab import BabOutcome, BabProblem, BranchAndBound

# ---------------------------------------------------------------- networks


def mlp(seed: int, sizes: tuple[int, ...] = (4, 24, 24, 3)) -> nn.Sequential:
    """A seeded fully connected ReLU network with these layer widths (input first)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def conv_net(seed: int) -> nn.Sequential:
    """A seeded small convolutional ReLU network on 1×8×8 inputs with 3 outputs."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class ResidualNet(nn.Module):
    """``W3 relu(W2 relu(W1 x + b1) + b2 + x) + b3`` on 6 inputs, 3 outputs."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first, self.second, self.out = nn.Linear(6, 12), nn.Linear(12, 6), nn.Linear(6, 3)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.second(torch.relu(self.first(x))) + x))

    def as_chain(self) -> nn.Sequential:
        """The same function as a chain of Linear/ReLU layers (the form the MILP takes): the skip carried as
        relu(x) − relu(−x)."""
        identity = torch.eye(6)
        first, second = nn.Linear(6, 24), nn.Linear(24, 6)
        with torch.no_grad():
            first.weight.copy_(torch.cat([self.first.weight, identity, -identity]))
            first.bias.copy_(torch.cat([self.first.bias, torch.zeros(12)]))
            second.weight.copy_(torch.cat([self.second.weight, identity, -identity], dim=1))
            second.bias.copy_(self.second.bias)
        return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), self.out).eval()


def export_onnx(model: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """``model`` as an ONNX file with input ``input`` of ``input_shape`` (batch included)."""
    torch.onnx.export(model, (torch.zeros(input_shape),), str(path), input_names=["input"], output_names=["output"],
                      dynamo=False)
    return path


# ---------------------------------------------------------------- properties


def write_vnnlib(path: Path, lower: np.ndarray, upper: np.ndarray, outputs: int,
                 disjuncts: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """A VNN-LIB file: the box, then (or (and rows...)...) with rows ``C y <= d`` written as sums."""
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    for i, (lo, up) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {float(lo)!r}))", f"(assert (<= X_{i} {float(up)!r}))"]
    conjunctions = []
    for C, d in disjuncts:
        rows = []
        for coefficients, bound in zip(C, d):
            terms = " ".join(f"(* {float(c)!r} Y_{j})" for j, c in enumerate(coefficients) if c != 0)
            rows.append(f"(<= (+ {terms} 0.0) {float(bound)!r})")
        conjunctions.append("(and " + " ".join(rows) + ")")
    lines.append("(assert (or " + " ".join(conjunctions) + "))")
    path.write_text("\n".join(lines) + "\n")
    return path


def robustness_property(path: Path, model: nn.Module, shape: tuple[int, ...], rng: np.random.Generator,
                        eps: float) -> Path:
    """Some other class scores at least the predicted one somewhere in an ε-box (clipped to [0, 1]) around
    a random point: one disjunct per other class."""
    x = rng.uniform(0, 1, int(np.prod(shape)))
    with torch.no_grad():
        outputs = model(torch.tensor(x, dtype=torch.float32).reshape(shape)).reshape(-1)
    label = int(outputs.argmax())
    disjuncts = []
    for j in range(outputs.numel()):
        if j != label:
            row = np.zeros((1, outputs.numel()))
            row[0, label], row[0, j] = 1.0, -1.0
            disjuncts.append((row, np.array([0.0])))
    return write_vnnlib(path, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1), outputs.numel(), disjuncts)


def near_tie_problem(seed: int, sizes: list[int]) -> tuple[ReluNetwork, np.ndarray, np.ndarray, np.ndarray,
                                                           np.ndarray]:
    """(network, lower, upper, C [D, R, K], d [D, R]): a random MLP, a box, and "the label's logit is not the
    largest" (one conjunction, or one disjunct per other class) with the offsets moved to the exact minimum
    (MILP) plus a random δ, 2e-4 <= |δ| <= 2e-2, so that about half hold and the violations are small."""
    rng = np.random.default_rng(seed)
    network = ReluNetwork(tuple(AffineLayer(rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.1)
                                for a, b in pairwise(sizes)), (1, sizes[0]))
    centre, eps = rng.uniform(size=sizes[0]), rng.uniform(0.05, 0.4)
    lower, upper = centre - eps, centre + eps
    label = int(np.argmax(network.forward(centre[None])[0]))
    rows = np.stack([np.eye(sizes[-1])[label] - np.eye(sizes[-1])[j] for j in range(sizes[-1]) if j != label])
    C = rows[None] if rng.uniform() < 0.5 else rows[:, None]
    bounds = interval_preactivation_bounds(network, lower, upper)
    d = np.zeros(C.shape[:2])
    for k in range(len(C)):
        minimum = solve_disjunct(network, bounds, lower, upper, C[k], d[k], 60, required_margin=1e9,
                                 refute_tolerance=1e9).objective
        d[k] += minimum + rng.choice([-1, 1]) * rng.uniform(2e-4, 2e-2)
    return network, lower, upper, C, d


def dense_bab_problem(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray,
                      threshold: float = 1e-5) -> tuple[SplitBoundEngine, BabProblem]:
    """The bound engine of a dense problem and its branch and bound problem, from CROWN's root bounds;
    every row must clear ``threshold`` to be refuted."""
    engine = SplitBoundEngine(network.to_graph())
    box_lower, box_upper = torch.tensor(lower, dtype=torch.float32), torch.tensor(upper, dtype=torch.float32)
    root = engine.intermediate_bounds(box_lower[None], box_upper[None])
    problem = BabProblem(torch.tensor(C, dtype=torch.float32), torch.tensor(d, dtype=torch.float32),
                         torch.full(d.shape, threshold), box_lower, box_upper,
                         {relu: (low[0], up[0]) for relu, (low, up) in root.items()})
    return engine, problem


def branch_and_bound(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray,
                     options: BabOptions, timeout: float, memory_limit: float = 4e9, max_domains: int | None = None
                     ) -> tuple[BranchAndBound, BabOutcome]:
    """Branch and bound alone on a dense problem, from CROWN's root bounds: the search (for inspection) and
    its outcome; counterexamples are confirmed on the float64 network. ``max_domains`` overrides the store's
    capacity that the memory limit gives."""
    engine, problem = dense_bab_problem(network, lower, upper, C, d)

    def confirm(points: torch.Tensor) -> torch.Tensor | None:
        for point in points:
            y = network.forward(point.double().numpy()[None])[0]
            if any(np.all(C[k] @ y <= d[k]) for k in range(len(C))):
                return point
        return None

    search = BranchAndBound(engine, problem, options, MemoryBudget(memory_limit), confirm)
    if max_domains is not None:
        search.max_domains = max_domains
    return search, search.run(time.monotonic() + timeout)
