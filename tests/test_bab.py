"""Branch and bound on ReLU splits: sound bounds, and verdicts equal to the MILP's on random networks."""
from __future__ import annotations

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from helpers import residual_conv_graph
from maar_plugin.errors import MaarError
from maar_plugin.testing.dense import AffineLayer, ReluNetwork, interval_preactivation_bounds
from maar_plugin.testing.milp import milp_verdict, solve_disjunct, triangle_lp_minimum
from maar_plugin.testing.problems import branch_and_bound, dense_bab_problem, near_tie_problem
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.options import BRANCHING_NAMES, BabOptions
from maar_plugin.verification.search.bab import BabProblem, BranchAndBound, _Domains
from maar_plugin.verification.search.branching import BRANCHING_STRATEGIES

MEMORY = MemoryBudget(4e9)


def test_bounds_and_intermediate_bounds_contain_sampled_values():
    graph = residual_conv_graph(0)
    engine = SplitBoundEngine(graph)
    x = torch.rand(2, 36)
    lower, upper = x - 0.1, x + 0.1
    bounds = engine.intermediate_bounds(lower, upper)
    C = torch.randn(4, 2, 3)
    result = engine.bound(C, lower, upper, bounds)
    samples = lower + torch.rand(3000, 2, 36) * (upper - lower)
    with torch.no_grad():
        outputs = torch.stack([graph(samples[:, b]) for b in range(2)], dim=1)     # [N, B, K]
        values = torch.einsum("rbk,nbk->nrb", C, outputs)
        assert bool((values.min(dim=0).values >= result.lower - 1e-5).all())
        for b in range(2):
            nodes = graph.node_values(samples[:, b].reshape(-1, 1, 6, 6))
            for relu, (low, up) in bounds.items():
                z = nodes[engine.relu_inputs[relu]]
                assert bool((z >= low[b] - 1e-5).all()) and bool((z <= up[b] + 1e-5).all())
        corner = engine.forward(result.primal.reshape(-1, 36)).reshape(4, 2, 3)
        assert bool((torch.einsum("rbk,rbk->rb", C, corner) >= result.lower - 1e-5).all())


def random_problem(seed: int):
    rng = np.random.default_rng(seed)
    sizes = [6, 20, 20, 4]
    network = ReluNetwork(tuple(AffineLayer(rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.1)
                                for a, b in pairwise(sizes)), (1, 6))
    centre, eps = rng.uniform(size=6), rng.uniform(0.05, 0.4)
    lower, upper = centre - eps, centre + eps
    label = int(np.argmax(network.forward(centre[None])[0]))
    rows = []
    for j in range(4):
        if j != label:
            row = np.zeros(4)
            row[label], row[j] = 1.0, -1.0
            rows.append(row[None])                      # unsafe: y_label − y_j <= 0
    return network, lower, upper, np.stack(rows), np.zeros((len(rows), 1))


@pytest.mark.parametrize("seed", range(6))
def test_optimised_bounds_of_split_domains_reach_the_triangle_lp_and_never_pass_it(seed):
    """α,β-CROWN's bound of a domain is the dual of the triangle LP with the domain's splits over the same
    intermediate bounds (Wang et al. 2021): never above the LP's minimum, and close to it once α and β are
    optimised. Domains: half the unstable ReLUs split by their sign at a sampled point (never empty)."""
    network, lower, upper, C, d = random_problem(seed)
    engine, problem = dense_bab_problem(network, lower, upper, C, d, threshold=0.0)
    search = BranchAndBound(engine, problem, BabOptions(), MEMORY, lambda points: None)
    rng = np.random.default_rng(seed)
    values = engine.graph.node_values(torch.tensor(rng.uniform(lower, upper), dtype=torch.float32)[None])
    sign_at_point = torch.cat([values[engine.relu_inputs[r]].reshape(-1)[search.unstable[r]].sign()
                               for r in engine.relus]).to(torch.int8)
    split = torch.tensor(rng.uniform(size=search.num_unstable) < 0.5)
    signs = torch.where(split, sign_at_point, torch.zeros_like(sign_at_point)).repeat(len(C), 1)
    count, width = len(C), search.num_unstable
    domains = _Domains(torch.arange(count), signs, search._default_alpha(count).half(),
                       torch.zeros(count, 1, width).half(), None, None)
    open_domains, _ = search._bound(domains, 300, math.inf)
    bounds, _ = search._relu_bounds(signs)
    for k in range(count):
        lp = triangle_lp_minimum(network, [(bounds[r][0][k].reshape(-1).double().numpy(),
                                            bounds[r][1][k].reshape(-1).double().numpy()) for r in engine.relus],
                                 lower, upper, C[k], d[k])
        margin = open_domains.margin[open_domains.disjunct == k]
        if margin.numel() == 0:                 # refuted: its bound cleared 0, so the LP's minimum must too
            assert lp > 0, (seed, k, lp)
            continue
        assert float(margin) <= lp + 1e-4, (seed, k, float(margin), lp)
        assert float(margin) >= lp - 0.01 * (1 + abs(lp)), (seed, k, float(margin), lp)


@pytest.mark.parametrize("branching", sorted(BRANCHING_STRATEGIES))
def test_verdicts_equal_the_milp_reference(branching, seeds=range(0, 30)):
    decided = {"sat": 0, "unsat": 0}
    branched = 0
    for seed in seeds:
        network, lower, upper, C, d = random_problem(seed)
        expected = milp_verdict(network, lower, upper, C, d)
        _, outcome = branch_and_bound(network, lower, upper, C, d, BabOptions(branching=branching), timeout=30)
        if outcome.status == "counterexample":
            y = network.forward(outcome.point.double().numpy()[None])[0]
            assert any(np.all(C[k] @ y <= d[k]) for k in range(len(C))), seed
            assert np.all(outcome.point.numpy() >= lower - 1e-6) and np.all(outcome.point.numpy() <= upper + 1e-6)
        if outcome.status == "proved":
            assert expected != "sat", (seed, expected)        # soundness: never proved where MILP finds a violation
            branched += outcome.iterations > 0
        if expected != "ambiguous" and outcome.status in ("proved", "counterexample"):
            assert {"proved": "unsat", "counterexample": "sat"}[outcome.status] == expected, seed
            decided[expected] += 1
    assert decided["sat"] >= 8 and decided["unsat"] >= 8 and branched >= 1, (decided, branched)


def test_fsb_splits_an_unsplit_relu_whose_worse_child_beats_the_intercept_choice():
    """On domains with random splits of a residual conv net: FSB's neuron is unsplit and root-unstable, and
    where the intercept score's choice was among its candidates, FSB's worse child bounds at least as high."""
    graph = residual_conv_graph(3)
    engine = SplitBoundEngine(graph)
    torch.manual_seed(0)
    x = torch.rand(36)
    lower, upper = x - 0.15, x + 0.15
    root = engine.intermediate_bounds(lower[None], upper[None])
    label = int(graph(x[None]).argmax())
    C = torch.stack([torch.eye(3)[label] - torch.eye(3)[j] for j in range(3) if j != label])[:, None]   # [2, 1, 3]
    problem = BabProblem(C, torch.full((2, 1), 10.0), torch.full((2, 1), 1e-5), lower, upper,   # never refuted
                         {relu: (low[0], up[0]) for relu, (low, up) in root.items()})
    search = BranchAndBound(engine, problem, BabOptions(branching="fsb"), MEMORY, lambda points: None)
    assert search.num_unstable >= 10
    count = 40
    signs = torch.where(torch.rand(count, search.num_unstable) < 0.3,
                        torch.randint(0, 2, (count, search.num_unstable)) * 2 - 1, 0).to(torch.int8)
    alpha = search._default_alpha(count)
    domains = _Domains(torch.arange(count) % 2, signs, alpha, torch.zeros_like(alpha), None, None)
    asked = []
    child_margins = search._child_margins

    def recording(parents, neurons):
        asked.append(neurons)
        return child_margins(parents, neurons)

    search._child_margins = recording
    kept, _ = search._bound(domains, 3, math.inf)
    assert len(kept) == count and len(asked) == 1
    fsb = kept.choice
    assert bool((fsb >= 0).all())
    assert bool((kept.signs.gather(1, fsb[:, None]) == 0).all())
    assert bool((search.unstable_lower[fsb] < 0).all()) and bool((search.unstable_upper[fsb] > 0).all())
    search.options = BabOptions(branching="intercept")
    intercept = search._bound(domains, 3, math.inf)[0].choice
    worse = child_margins(kept, torch.stack([fsb, intercept], dim=1)).min(dim=2).values     # [B, 2]
    compared = (asked[0] == intercept[:, None]).any(dim=1)
    assert int(compared.sum()) >= len(kept) // 2
    assert bool((worse[compared, 0] >= worse[compared, 1] - 1e-5).all())
    assert bool((fsb != intercept).any())      # FSB's choice differs somewhere, so the comparison has teeth


def test_the_search_goes_on_while_the_domain_store_has_room_and_stops_when_it_is_full():
    """Seed 0 of the near ties holds (MILP: unsat); best first it keeps at most about 38 domains open. Room for
    40 proves it (depth first once the store is half full); room for fewer than two children is unknown."""
    problem = near_tie_problem(0, [6, 16, 16, 3])
    assert milp_verdict(*problem) == "unsat"
    options = BabOptions(batch_size=8)
    _, roomy = branch_and_bound(*problem, options, timeout=60, max_domains=40)
    assert roomy.status == "proved", roomy.message
    _, full = branch_and_bound(*problem, options, timeout=60, max_domains=1)
    assert full.status == "unknown" and "memory limit" in full.message


@pytest.mark.parametrize("max_domains", [1, 6])
def test_a_search_stopped_with_open_domains_bounds_every_disjuncts_exact_margin_from_below(max_domains):
    """Where the store fills on near ties, ``lowest`` is a lower bound of each disjunct's exact margin (MILP); a
    disjunct none of whose domains is open gets 0 (all refuted)."""
    checked = 0
    for seed in range(8):
        network, lower, upper, C, d = near_tie_problem(seed, [6, 16, 16, 3])
        _, outcome = branch_and_bound(network, lower, upper, C, d, BabOptions(batch_size=2), timeout=30,
                                      max_domains=max_domains)
        if outcome.status != "unknown":
            continue
        assert outcome.lowest is not None and outcome.lowest.shape == (len(C),)
        bounds = interval_preactivation_bounds(network, lower, upper)
        exact = [solve_disjunct(network, bounds, lower, upper, C[k], d[k], 60, required_margin=1e9,
                                refute_tolerance=1e9).objective for k in range(len(C))]
        for k, margin in enumerate(outcome.lowest.tolist()):
            assert margin <= exact[k] + 1e-5 * (1 + abs(exact[k])), (seed, k, margin, exact[k])
        checked += int((outcome.lowest < 0).any())
    assert checked >= 4


def test_depth_first_takes_the_most_split_domains_lowest_bound_first():
    signs = torch.tensor([[1, 0, 0], [1, -1, 0], [0, 0, 0], [1, 1, -1], [-1, 1, 0]], dtype=torch.int8)
    margin = torch.tensor([-1.0, -0.5, -3.0, -0.1, -2.0])
    alpha = torch.zeros(5, 1, 3, dtype=torch.float16)
    domains = _Domains(torch.zeros(5, dtype=torch.long), signs, alpha, alpha.clone(), margin, torch.zeros(5))
    taken = domains.pop_worst(3, deepest=True)
    assert sorted(taken.margin.tolist()) == [-2.0, -0.5, pytest.approx(-0.1)] and len(domains) == 2
    assert domains.pop_worst(1).margin.tolist() == [-3.0]


def test_the_options_name_every_branching_strategy():
    assert tuple(BRANCHING_STRATEGIES) == BRANCHING_NAMES


def test_unknown_branching_strategy_is_a_one_line_error():
    with pytest.raises(MaarError, match="unknown branching strategy 'fbs'"):
        BabOptions(branching="fbs")
