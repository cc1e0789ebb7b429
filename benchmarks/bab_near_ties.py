"""Branch and bound against the MILP on tiny random MLPs whose margins sit near zero: outcome counts.

    python benchmarks/bab_near_ties.py [--seeds 40] [--sizes 6,10,10,3] [--iterations 0] [--timeout 30]

Each seed draws an MLP, an input box and the unsafe set "the label's logit is not the largest" (one
conjunction or one disjunct per other class), then moves the offsets to the exact minimum (MILP) plus
a random δ with 2e-4 <= |δ| <= 2e-2, so about half the properties hold and the violations are small.
``--iterations N`` (N > 0) runs branch and bound with N α/β steps per bound pass and batch 8, which
leaves β unconverged and provokes domains with every unstable ReLU split; 0 keeps the defaults. The
table counts outcomes; ``WRONG`` (must stay 0) is a verdict that contradicts the MILP's.
tests/test_domain_lp.py takes its end-to-end problems from here.
"""
from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch

from maar_plugin.verification.bab import BabOptions, BabProblem, BranchAndBound
from maar_plugin.verification.bounds import interval_preactivation_bounds
from maar_plugin.verification.milp import solve_disjunct
from maar_plugin.verification.network import AffineLayer, ReluNetwork
from maar_plugin.verification.split_bounds import SplitBoundEngine


def near_tie_problem(seed: int, sizes: list[int]):
    """(network, lower, upper, C [D, R, K], d [D, R]) with d at the exact minimum plus a small δ."""
    rng = np.random.default_rng(seed)
    network = ReluNetwork(tuple(AffineLayer(rng.normal(size=(b, a)) / np.sqrt(a), rng.normal(size=b) * 0.1)
                                for a, b in zip(sizes[:-1], sizes[1:])), (1, sizes[0]))
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


def milp_verdict(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray) -> str:
    bounds = interval_preactivation_bounds(network, lower, upper)
    verdict = "unsat"
    for k in range(len(C)):
        outcome = solve_disjunct(network, bounds, lower, upper, C[k], d[k], 30)
        if outcome.status == "candidate" and outcome.objective < -1e-4:
            return "sat"
        if outcome.status != "refuted":
            verdict = "ambiguous"
    return verdict


def branch_and_bound(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray,
                     options: BabOptions, timeout: float) -> tuple[BranchAndBound, object]:
    """The search (for inspection) and its outcome; counterexamples are confirmed on the float64 network."""
    engine = SplitBoundEngine(network.to_graph())
    box_lower, box_upper = torch.tensor(lower, dtype=torch.float32), torch.tensor(upper, dtype=torch.float32)
    root = engine.intermediate_bounds(box_lower[None], box_upper[None])
    problem = BabProblem(torch.tensor(C, dtype=torch.float32), torch.tensor(d, dtype=torch.float32),
                         torch.full(d.shape, 1e-5), box_lower, box_upper,
                         {relu: (low[0], up[0]) for relu, (low, up) in root.items()})

    def confirm(points: torch.Tensor) -> torch.Tensor | None:
        for point in points:
            y = network.forward(point.double().numpy()[None])[0]
            if any(np.all(C[k] @ y <= d[k]) for k in range(len(C))):
                return point
        return None

    search = BranchAndBound(engine, problem, options, confirm)
    return search, search.run(time.monotonic() + timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--sizes", default="6,10,10,3", help="layer widths, input first")
    parser.add_argument("--iterations", type=int, default=0, help="α/β steps per pass (0: BabOptions' defaults)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(size) for size in args.sizes.split(",")]
    options = (BabOptions(batch_size=8, iterations=args.iterations, root_iterations=args.iterations)
               if args.iterations else BabOptions())
    counts: collections.Counter = collections.Counter()
    for seed in range(args.seeds):
        problem = near_tie_problem(seed, sizes)
        expected = milp_verdict(*problem)
        start = time.monotonic()
        _, outcome = branch_and_bound(*problem, options, args.timeout)
        verdict = {"proved": "unsat", "counterexample": "sat"}.get(outcome.status)
        key = outcome.status
        if verdict is not None and expected != "ambiguous" and verdict != expected:
            key = "WRONG"
        counts[key] += 1
        print(f"seed {seed:3d}  MILP {expected:9s}  BaB {key:14s} {outcome.domains:6d} domains "
              f"{time.monotonic() - start:6.2f} s  {outcome.message}", flush=True)
    print("\n" + "  ".join(f"{key}: {count}" for key, count in sorted(counts.items())))


if __name__ == "__main__":
    main()
