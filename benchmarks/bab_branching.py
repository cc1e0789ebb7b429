"""Branch and bound settings side by side: verdict, domains, iterations and seconds per instance.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bab_branching.py --variants intercept fsb \\
        fsb:branching_candidates=1:iterations=4 [--suites conv residual 256x2 256x4] \\
        [--mnist PATH/mnist_fc] [--instances CSV] [--timeout 30] [--out DIR]

A variant is a branching strategy, optionally followed by ``:option=value`` overrides of BabOptions.

Suites: ``conv`` and ``residual``, the 16 seeded networks and properties of ``maar_plugin.testing.problems``
that the tests use (branch and bound forced, as there); ``256x2``, the ten VNN-COMP 2022 mnist_fc 256x2 instances our
cascade branches on; ``256x4``, all 30 of instances_256x4.csv (``--mnist`` is the benchmark's folder;
nothing is downloaded); ``own``, every row of an ``instances.csv`` of your own (``--instances``, e.g. one
``maar export`` wrote), at the timeout given here. Each instance runs through `maar verify`'s cascade once
per variant, the variants one after the other per instance, so that load on the machine hits them alike. Domains and
iterations are branch and bound's own counts (summed over the instance's input boxes), seconds the
BaB stage's. A ``!`` marks an instance where two variants decided opposite verdicts (must not happen).
``--out`` writes the rows as CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import statistics
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from unittest import mock

import numpy as np

from maar_plugin.atomic import atomic_write_text
from maar_plugin.testing.problems import ResidualNet, conv_net, export_onnx, robustness_property
from maar_plugin.verification import ModelCache, VerifyOptions, verify_instance
from maar_plugin.verification.instances import read_instances_csv
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.run import cascade
from maar_plugin.verification.search.bab import BranchAndBound

REPO = Path(__file__).resolve().parent.parent
MNIST_256X2 = ("prop_4_0.03", "prop_6_0.03", "prop_8_0.03", "prop_0_0.05", "prop_4_0.05", "prop_9_0.05",
               "prop_10_0.05", "prop_11_0.05", "prop_13_0.05", "prop_14_0.05")


@dataclass
class Case:
    suite: str
    name: str
    onnx: Path
    vnnlib: Path
    options: VerifyOptions


@dataclass
class Measured:
    verdict: str
    stage: str | None
    domains: int
    iterations: int
    bab_seconds: float
    seconds: float


def seeded_cases(folder: Path, timeout: float) -> list[Case]:
    """The tests' 16 conv and 16 residual networks with their properties, exported into ``folder``."""
    options = VerifyOptions(timeout=timeout, pgd_steps=10, pgd_restarts=2, alpha_iterations=5,
                            bab=BabOptions(input_split_max_inputs=0))
    cases = []
    for suite, make, shape in (("conv", conv_net, (1, 1, 8, 8)), ("residual", ResidualNet, (1, 6))):
        for seed in range(16):
            rng = np.random.default_rng(seed)
            model = make(seed)
            onnx_path = export_onnx(model, folder / f"{suite}{seed}.onnx", shape)
            prop = robustness_property(folder / f"{suite}{seed}.vnnlib", model, shape, rng,
                                       float(rng.uniform(0.05, 0.3)))
            cases.append(Case(suite, f"{suite} seed {seed}", onnx_path, prop, options))
    return cases


def mnist_cases(root: Path, suite: str, timeout: float) -> list[Case]:
    """The suite's rows of the mnist_fc benchmark in either VNN-COMP layout (2022: instances.csv with onnx/ and
    vnnlib/ folders; 2021: mnistfc_instances.csv)."""
    options = VerifyOptions(timeout=timeout)
    listing = next((root / name for name in (f"instances_{suite}.csv", "instances.csv", "mnistfc_instances.csv")
                    if (root / name).is_file()), None)
    if listing is None:
        raise SystemExit(f"{root}: no instances.csv or mnistfc_instances.csv (is it VNN-COMP's mnist_fc folder?)")
    return [Case(suite, f"{suite} {row.vnnlib.stem}", row.onnx, row.vnnlib, options)
            for row in read_instances_csv(listing)
            if row.onnx.stem.endswith(suite) and (suite == "256x4" or row.vnnlib.stem in MNIST_256X2)]


def own_cases(csv_path: Path, timeout: float) -> list[Case]:
    options = VerifyOptions(timeout=timeout)
    return [Case("own", row.vnnlib.stem, row.onnx, row.vnnlib, options) for row in read_instances_csv(csv_path)]


def bab_options(base: BabOptions, variant: str) -> BabOptions:
    """``strategy[:option=value...]`` applied to ``base``."""
    strategy, *overrides = variant.split(":")
    changes = {"branching": strategy}
    for override in overrides:
        name, value = override.split("=")
        changes[name] = type(getattr(base, name))(value)
    return replace(base, **changes)


def measure(case: Case, variant: str, cache: ModelCache) -> Measured:
    """One cascade run with ``variant``, counting branch and bound's domains and iterations."""
    outcomes = []

    class Recording(BranchAndBound):
        def run(self, deadline):
            outcome = super().run(deadline)
            outcomes.append(outcome)
            return outcome

    options = replace(case.options, bab=bab_options(case.options.bab, variant))
    with mock.patch.object(cascade, "BranchAndBound", Recording), contextlib.redirect_stderr(io.StringIO()):
        result = verify_instance(case.onnx, case.vnnlib, options=options, cache=cache)
    return Measured(result.verdict, result.stage, sum(o.domains for o in outcomes),
                    sum(o.iterations for o in outcomes), result.stage_seconds.get("BaB", 0.0), result.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["intercept", "fsb"])
    parser.add_argument("--suites", nargs="+", default=["conv", "residual", "256x2", "256x4"],
                        choices=["conv", "residual", "256x2", "256x4", "own"])
    parser.add_argument("--mnist", type=Path, help="VNN-COMP 2022 mnist_fc folder (for 256x2, 256x4)")
    parser.add_argument("--instances", type=Path, help="an instances.csv of your own (the suite 'own')")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if {"256x2", "256x4"} & set(args.suites) and args.mnist is None:
        parser.error("--mnist is needed for the suites 256x2 and 256x4")
    if "own" in args.suites and args.instances is None:
        parser.error("--instances is needed for the suite own")
    with tempfile.TemporaryDirectory() as folder:
        cases = [case for case in seeded_cases(Path(folder), args.timeout) if case.suite in args.suites]
        for suite in ("256x2", "256x4"):
            if suite in args.suites:
                cases += mnist_cases(args.mnist, suite, args.timeout)
        if "own" in args.suites:
            cases += own_cases(args.instances, args.timeout)
        print("   ".join(f"[{index}] {variant}" for index, variant in enumerate(args.variants)))
        header = f"{'instance':24}" + "".join(f" | [{i}] {'verdict':>7} {'domains':>7} {'iter':>5} {'BaB s':>6}"
                                                for i in range(len(args.variants)))
        print(header)
        print("-" * len(header))
        rows, totals = [], {s: [] for s in args.variants}
        cache = ModelCache()
        for case in cases:
            measured = {s: measure(case, s, cache) for s in args.variants}
            decided = {m.verdict for m in measured.values() if m.verdict in ("sat", "unsat")}
            flag = "!" if len(decided) > 1 else " "
            print(f"{case.name:23}{flag}" + "".join(
                f" | {m.verdict:>11} {m.domains:7d} {m.iterations:5d} {m.bab_seconds:6.2f}" for m in measured.values()),
                flush=True)
            for variant, m in measured.items():
                totals[variant].append((case.suite, m))
                rows.append({"suite": case.suite, "instance": case.name, "variant": variant, "verdict": m.verdict,
                             "stage": m.stage, "domains": m.domains, "iterations": m.iterations,
                             "bab_seconds": m.bab_seconds, "seconds": m.seconds})
    print()
    print("per suite and variant: decided, domains (sum), BaB seconds (sum), BaB seconds (median where it branched)")
    for suite in args.suites:
        for variant in args.variants:
            runs = [m for s, m in totals[variant] if s == suite]
            branched = [m.bab_seconds for m in runs if m.iterations > 0]
            decided = sum(m.verdict in ('sat', 'unsat') for m in runs)
            print(f"{suite:9} {variant:24} decided {decided:3d}/{len(runs):<3d}"
                  f" domains {sum(m.domains for m in runs):9d}  BaB s {sum(m.bab_seconds for m in runs):8.2f}"
                  f"  median {statistics.median(branched) if branched else 0.0:6.2f}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(args.out / "bab_branching.csv", buffer.getvalue())


if __name__ == "__main__":
    main()
