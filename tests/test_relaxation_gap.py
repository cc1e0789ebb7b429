"""benchmarks/relaxation_gap.py's measurement on a stopped search: every bound it reports lies below the
triangle LP's minimum it compares with (the LP is the best any α and β give)."""
from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

from maar_plugin.testing.problems import dense_bab_problem, near_tie_problem
from maar_plugin.verification.memory import MemoryBudget
from maar_plugin.verification.options import BabOptions

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "relaxation_gap.py"


def load_script():
    spec = importlib.util.spec_from_file_location("relaxation_gap", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reported_bounds_lie_below_the_lp_of_the_same_domain():
    gap = load_script()
    measured = 0
    for seed in range(6):
        network, lower, upper, C, d = near_tie_problem(seed, [4, 16, 16, 3])
        engine, problem = dense_bab_problem(network, lower, upper, C, d)
        search = gap.Recording(engine, problem, BabOptions(), MemoryBudget(4e9), lambda points: None)
        outcome = search.run(time.monotonic())     # stops after bounding the roots (one step)
        if outcome.status != "timeout":
            continue
        for row in gap.measure(search, domains=2, refine=True):
            measured += 1
            assert math.isfinite(row["lp"]), row
            assert row["bound"] <= row["lp"] + 1e-4, (seed, row)
            if row["depth"] == 0 and row["refined"] != "refuted":     # no split: the same bounds as the LP's
                assert row["refined"] <= row["lp"] + 1e-4, (seed, row)
    assert measured >= 3, measured
