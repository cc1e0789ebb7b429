"""Branch and bound against the MILP on tiny random MLPs whose margins sit near zero: outcome counts.

    python benchmarks/bab_near_ties.py [--seeds 40] [--sizes 6,10,10,3] [--iterations 0] [--timeout 30]

Each seed draws an MLP, an input box and the unsafe set "the label's logit is not the largest" (one
conjunction or one disjunct per other class), then moves the offsets to the exact minimum (MILP) plus
a random δ with 2e-4 <= |δ| <= 2e-2, so about half the properties hold and the violations are small.
``--iterations N`` (N > 0) runs branch and bound with N α/β steps per bound pass and batch 8, which
leaves β unconverged and provokes domains with every unstable ReLU split; 0 keeps the defaults. The
table counts outcomes; ``WRONG`` (must stay 0) is a verdict that contradicts the MILP's.
The problems are ``maar_plugin.testing.problems.near_tie_problem``, which the tests use too.
"""
from __future__ import annotations

import argparse
import collections
import time

import torch

from maar_plugin.testing.milp import milp_verdict
from maar_plugin.testing.problems import branch_and_bound, near_tie_problem
from maar_plugin.verification.options import BabOptions


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
