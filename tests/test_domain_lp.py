"""The exact LP of a fully split domain: its value against an independent LP and sampled points, on
dense, conv and residual graphs; contradictory splits; and branch and bound's verdicts on networks
where it used to stop with `unknown`."""
from __future__ import annotations

import time
from itertools import pairwise

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from helpers import residual_conv_graph
from maar_plugin.testing.dense import AffineLayer, ReluNetwork
from maar_plugin.testing.milp import milp_verdict
from maar_plugin.testing.problems import branch_and_bound, near_tie_problem
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.network.layers import GraphNode, LayerGraph, Reshape
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.search.bab import BabProblem, BranchAndBound
from maar_plugin.verification.search.pattern_lp import FixedPatternLP


def mlp_graph(seed: int) -> LayerGraph:
    rng = np.random.default_rng(seed)
    sizes = [5, 8, 8, 3]
    return ReluNetwork(tuple(AffineLayer(rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.1)
                             for a, b in pairwise(sizes)), (1, 5)).to_graph()


def conv_graph(seed: int) -> LayerGraph:
    torch.manual_seed(seed)
    nodes = [GraphNode("x", (), (1, 5, 5), None), GraphNode("c1", (0,), (2, 5, 5), 0),
             GraphNode("r1", (1,), (2, 5, 5), 1), GraphNode("c2", (2,), (2, 3, 3), 2),
             GraphNode("r2", (3,), (2, 3, 3), 3), GraphNode("flat", (4,), (18,), 4), GraphNode("out", (5,), (3,), 5)]
    layers = [nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(),
              Reshape((18,)), nn.Linear(18, 3)]
    return LayerGraph(nodes, layers, (1, 1, 5, 5)).eval()


def split_values(graph: LayerGraph, relus: list[int], x: torch.Tensor) -> torch.Tensor:
    """Every ReLU's input, flat and concatenated, for inputs x [N, n] (the network's own forward)."""
    with torch.no_grad():
        values = graph.node_values(x.reshape(-1, *graph.example_shape))
    return torch.cat([values[graph.nodes[relu].inputs[0]].flatten(1) for relu in relus], dim=1)


def reference_minimum(graph: LayerGraph, relus: list[int], active: torch.Tensor, split: torch.Tensor,
                      signs: torch.Tensor, C: torch.Tensor, slack: torch.Tensor, lower: np.ndarray,
                      upper: np.ndarray, hard_splits: bool = False) -> float:
    """min t over the box s.t. C f(x) − slack <= t and −s z(x) <= t (<= 0 with ``hard_splits``: the deepest
    violation inside the domain), with f and z the network with every ReLU replaced by its fixed 0/1 mask:
    their Jacobians by autograd, the LP by scipy (an independent path); +inf where the domain is empty."""
    def masked(x: torch.Tensor) -> torch.Tensor:
        values, mask_start = [x.reshape(1, *graph.example_shape)], 0
        for index, node in enumerate(graph.nodes[1:], start=1):
            if index in relus:
                size = values[node.inputs[0]][0].numel()
                mask = active[mask_start:mask_start + size].reshape(values[node.inputs[0]].shape)
                values.append(values[node.inputs[0]] * mask)
                mask_start += size
            else:
                values.append(graph.module_of(index)(*[values[i] for i in node.inputs]))
        z = torch.cat([values[graph.nodes[relu].inputs[0]].flatten() for relu in relus])
        return torch.cat([C @ values[-1].flatten() - slack, -signs * z[split]])

    zero = torch.zeros(lower.size, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(masked, zero).numpy()
    constant = masked(zero).detach().numpy()
    t_column = -np.ones((jacobian.shape[0], 1))
    if hard_splits:
        t_column[len(C):] = 0.0
    A = np.hstack([jacobian, t_column])
    result = linprog(np.eye(1, lower.size + 1, lower.size).reshape(-1), A_ub=A, b_ub=-constant,
                     bounds=[*zip(lower, upper), (None, None)], method="highs")
    if hard_splits and result.status == 2:
        return float("inf")
    assert result.status == 0
    return float(result.fun)


@pytest.mark.parametrize("make_graph, eps", [(mlp_graph, 0.15), (conv_graph, 0.15), (residual_conv_graph, 0.03)])
def test_fixed_pattern_lp_equals_an_independent_lp_and_no_sample_beats_it(make_graph, eps):
    graph = make_graph(0)
    graph64 = SplitBoundEngine(graph, dtype=torch.float64).graph
    engine = SplitBoundEngine(graph)
    relus = engine.relus
    n = graph.num_inputs
    rng = np.random.default_rng(1)
    centre = torch.tensor(rng.uniform(size=n))
    lower, upper = (centre - eps).float(), (centre + eps).float()
    root = {relu: (low[0], up[0]) for relu, (low, up) in engine.intermediate_bounds(lower[None], upper[None]).items()}
    root_lower = torch.cat([root[relu][0].flatten() for relu in relus]).double()
    root_upper = torch.cat([root[relu][1].flatten() for relu in relus]).double()
    unstable = (root_lower < 0) & (root_upper > 0)
    assert 3 <= int(unstable.sum()) <= 40
    exact = FixedPatternLP(graph, root, lower, upper)

    samples = lower.double() + torch.rand(20000, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64) \
        * (upper - lower).double()
    with torch.no_grad():
        sample_outputs = graph64(samples)
    sample_z = split_values(graph64, relus, samples)
    K = sample_outputs.shape[1]
    C = torch.tensor(rng.normal(size=(2, K)))
    patterns = [torch.where(sample_z[0] > 0, 1, -1)] + [torch.tensor(rng.choice([-1, 1], size=unstable.numel()))
                                                        for _ in range(3)]
    outcomes = set()
    for pattern in patterns:
        signs = torch.where(unstable, pattern, 0)
        split_signs, start = {}, 0
        for relu in relus:
            size = root[relu][0].numel()
            split_signs[relu] = signs[start:start + size].reshape(root[relu][0].shape).to(torch.int8)
            start += size
        active = (signs > 0) | ((signs == 0) & (root_lower >= 0))
        inside = ((torch.where(unstable, pattern, 0) * sample_z >= 0) | ~unstable).all(dim=1)
        assert pattern is not patterns[0] or int(inside.sum()) >= 20
        for shift in (0.05, -0.3):
            offsets = C @ sample_outputs[0] + shift
            thresholds = torch.full((2,), 1e-5, dtype=torch.float64)
            verdict = exact.decide(C, offsets, thresholds, split_signs, time_limit=30)
            reference = reference_minimum(graph64, relus, active.double(), unstable, signs[unstable].double(), C,
                                          offsets + thresholds, lower.double().numpy(), upper.double().numpy())
            assert reference - 1e-6 <= verdict.bound <= reference + 1e-9
            assert abs(reference) < 1e-7 or verdict.refuted == (reference > 0)
            objective = torch.maximum((sample_outputs @ C.T - offsets - thresholds).max(dim=1).values,
                                      (-signs[unstable] * sample_z[:, unstable]).max(dim=1).values)
            assert bool((objective[inside] >= verdict.bound - 1e-9).all())
            outcomes.add(verdict.refuted)
            if verdict.refuted:
                assert not bool((objective[inside] <= 0).any())
                continue
            # the point is the domain's deepest violation: inside it, its largest row as low as any
            deepest = reference_minimum(graph64, relus, active.double(), unstable, signs[unstable].double(), C,
                                        offsets, lower.double().numpy(), upper.double().numpy(), hard_splits=True)
            point = torch.tensor(verdict.point)[None]
            with torch.no_grad():
                z = split_values(graph64, relus, point)[0]
                rows = C @ graph64(point)[0] - offsets
            assert bool((signs[unstable] * z[unstable] >= -1e-7).all())
            assert abs(float(rows.max()) - deepest) <= 1e-6 and abs(verdict.value - float(rows.max())) <= 1e-9
            if reference < 0:           # a domain within the thresholds holds a violation within them too
                assert deepest <= reference + 1e-6
    assert outcomes == {True, False}


def test_contradictory_splits_refute_the_domain():
    """z1 = x and z2 = x − 0.5 on [−1, 1]: z1 <= 0 and z2 >= 0 together are empty, although y <= 10 everywhere."""
    network = ReluNetwork((AffineLayer(np.array([[1.0], [1.0]]), np.array([0.0, -0.5])),
                           AffineLayer(np.array([[1.0, 1.0]]), np.array([0.0]))), (1, 1))
    graph = network.to_graph()
    relu = graph.relu_indices()[0]
    root = {relu: (torch.tensor([-1.0, -1.5]), torch.tensor([1.0, 0.5]))}
    exact = FixedPatternLP(graph, root, torch.tensor([-1.0]), torch.tensor([1.0]))
    C, offsets, thresholds = torch.tensor([[1.0]]), torch.tensor([10.0]), torch.tensor([1e-5])
    empty = exact.decide(C, offsets, thresholds, {relu: torch.tensor([-1, 1], dtype=torch.int8)}, 10)
    assert empty.refuted and empty.bound > 0
    feasible = exact.decide(C, offsets, thresholds, {relu: torch.tensor([1, 1], dtype=torch.int8)}, 10)
    assert not feasible.refuted and feasible.point[0] >= 0.5 and feasible.value < 0


NEAR_TIES_THAT_ENDED_UNKNOWN = [15, 23, 26, 30]   # 2 unsat, 2 sat: branch and bound without the pattern LP said unknown


@pytest.mark.parametrize("seed", NEAR_TIES_THAT_ENDED_UNKNOWN)
def test_bab_decides_near_ties_with_fully_split_domains_as_the_milp(seed):
    problem = near_tie_problem(seed, [6, 10, 10, 3])
    expected = milp_verdict(*problem)
    search, outcome = branch_and_bound(*problem, BabOptions(), timeout=30)
    assert search.exact is not None                       # a domain with every unstable ReLU split was decided
    assert {"proved": "unsat", "counterexample": "sat"}.get(outcome.status) == expected, (outcome, expected)


def test_bab_proves_a_conjunction_no_single_row_refutes():
    """y = (x, −x) on [−1, 1] with every ReLU stable: y1 <= −0.5 and y2 <= −0.5 cannot both hold, yet each row
    alone reaches −1, so only the LP over both rows (min of the max row) proves it."""
    network = ReluNetwork((AffineLayer(np.array([[1.0]]), np.array([5.0])),
                           AffineLayer(np.array([[1.0], [-1.0]]), np.array([-5.0, 5.0]))), (1, 1))
    engine = SplitBoundEngine(network.to_graph())
    lower, upper = torch.tensor([-1.0]), torch.tensor([1.0])
    root = {relu: (low[0], up[0]) for relu, (low, up) in engine.intermediate_bounds(lower[None], upper[None]).items()}
    problem = BabProblem(torch.eye(2)[None], torch.full((1, 2), -0.5), torch.full((1, 2), 1e-5), lower, upper, root)
    search = BranchAndBound(engine, problem, BabOptions(), MemoryBudget(4e9), confirm=lambda points: None)
    assert search.run(time.monotonic() + 30).status == "proved"
    assert search.exact is not None
