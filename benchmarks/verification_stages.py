"""Per-stage figures of `maar verify` on an instances.csv: proved per stage, time and unstable ReLUs per instance.

    python benchmarks/verification_stages.py vnnlib_specs/NAME/instances.csv --out results/NAME [--timeout 60]

Runs (or resumes) the verification into --out, reusing whatever its log already holds, then prints the
stage table, the cumulative certified counts (IBP / CROWN / alpha-CROWN / LP / complete) and one line per
instance with its verdict, deciding stage, seconds and number of unstable ReLUs.
"""
from __future__ import annotations

import argparse
import statistics

from maar_plugin.verification import (
    BOUND_STAGES,
    VerifyOptions,
    certified_by,
    instance_table,
    read_instances_csv,
    stage_table,
    verify_instances,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instances", help="VNN-COMP instances.csv")
    parser.add_argument("--out", required=True, help="results folder (resumed if it holds a log)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per instance where the csv gives none")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    results = verify_instances(read_instances_csv(args.instances), args.out, resume=True,
                               options=VerifyOptions(timeout=args.timeout, device=args.device))
    print(instance_table(results))
    print()
    print(stage_table(results))
    print()
    total = len(results)
    for stage in (*BOUND_STAGES, "BaB"):
        label = "complete (BaB)" if stage == "BaB" else stage
        print(f"certified by {label:<16} or earlier: {certified_by(results, stage):4d} / {total}")
    unstable = [r.unstable_relus for r in results if r.unstable_relus is not None]
    if unstable:
        print(f"unstable ReLUs: median {statistics.median(unstable)}, mean {statistics.fmean(unstable):.1f}, "
              f"max {max(unstable)}")


if __name__ == "__main__":
    main()
