"""Branch and bound inside `maar verify`: its verdicts equal the exact MILP's on conv, residual and
low-dimensional networks, and its counterexamples reproduce in onnxruntime."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime
import torch
from torch import nn

from helpers import FAST
from maar_plugin.testing.milp import exact_verdict
from maar_plugin.testing.problems import ResidualNet, conv_net, export_onnx, mlp, robustness_property
from maar_plugin.verification import load_onnx_graph, verify_instance
from maar_plugin.verification.options import BabOptions
from maar_plugin.verification.result import STAGES
from maar_plugin.vnnlib.reader import read_vnnlib_cases

BAB = replace(FAST, timeout=120, bab=BabOptions(input_split_max_inputs=0))
INPUT_SPLIT = replace(FAST, timeout=120)


def check_counterexample(onnx_path, result, shape) -> None:
    x, y = result.counterexample
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": np.asarray(x, dtype=np.float32).reshape(shape)})[0].reshape(-1)
    assert np.allclose(output, y, atol=1e-5)


def compare(tmp_path, seeds, make, shape, reference_model=None, options=BAB, eps_range=(0.05, 0.3)):
    """Verify a robustness property of each seeded network; the exact MILP on the network (or on
    ``reference_model(network)``, the same function as a chain of layers) must agree with every verdict."""
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        model = make(seed)
        onnx_path = export_onnx(model, tmp_path / f"net{seed}.onnx", shape)
        reference = model if reference_model is None else reference_model(model)
        reference_graph = load_onnx_graph(export_onnx(reference, tmp_path / f"chain{seed}.onnx", shape))
        prop = robustness_property(tmp_path / f"p{seed}.vnnlib", model, shape, rng, float(rng.uniform(*eps_range)))
        branched = verify_instance(onnx_path, prop, options=options)
        exact = exact_verdict(reference_graph, read_vnnlib_cases(prop, reference_graph.num_inputs,
                                                                 reference_graph.num_outputs))
        assert branched.verdict in ("sat", "unsat"), (seed, branched.verdict, branched.message)
        if exact in ("sat", "unsat"):
            assert branched.verdict == exact, (seed, branched.stage, exact)
        if branched.verdict == "sat":
            check_counterexample(onnx_path, branched, shape)
        tally[branched.verdict] += 1
        tally["branched"] += branched.stage == "BaB"
    return tally


def test_bab_equals_milp_on_conv_networks(tmp_path):
    tally = compare(tmp_path, range(16), conv_net, (1, 1, 8, 8))
    assert tally["sat"] >= 2 and tally["unsat"] >= 2 and tally["branched"] >= 2, tally


def test_bab_equals_milp_on_residual_networks(tmp_path):
    """Radii up to 0.45: auto_LiRPA 0.7's CROWN bounds these residual blocks tighter than 0.3's and proves
    every robust instance of radius up to 0.3 without branching."""
    tally = compare(tmp_path, range(24), ResidualNet, (1, 6), reference_model=lambda model: model.as_chain(),
                    eps_range=(0.05, 0.45))
    assert tally["sat"] >= 2 and tally["unsat"] >= 2 and tally["branched"] >= 2, tally


def test_input_splitting_equals_milp_on_low_dimensional_networks(tmp_path):
    tally = compare(tmp_path, range(16), mlp, (1, 4), options=INPUT_SPLIT)
    assert tally["sat"] >= 2 and tally["unsat"] >= 2 and tally["branched"] >= 2, tally


def test_residual_chain_is_the_same_function():
    model = ResidualNet(0)
    x = torch.randn(32, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), model.as_chain()(x), atol=1e-5)
    assert isinstance(model.as_chain(), nn.Sequential)


def test_crown_runs_before_the_attack_and_alpha_crown_after(tmp_path):
    """Stages run in STAGES order; an instance CROWN proves never pays for PGD, and a counterexample PGD
    finds was first tried by CROWN (which cannot refute a satisfiable disjunct)."""
    decided_by: dict[str | None, int] = {}
    for seed in range(12):
        rng = np.random.default_rng(seed)
        model = mlp(seed)
        onnx_path = export_onnx(model, tmp_path / f"net{seed}.onnx", (1, 4))
        prop = robustness_property(tmp_path / f"p{seed}.vnnlib", model, (1, 4), rng, float(rng.uniform(0.05, 0.4)))
        result = verify_instance(onnx_path, prop, options=BAB)
        ran = list(result.stage_verdicts)
        assert ran == list(STAGES[:len(ran)]), ran
        assert ("pgd" in ran) == (result.stage not in ("centre", "IBP", "CROWN")), (result.stage, ran)
        decided_by[result.stage] = decided_by.get(result.stage, 0) + 1
    assert decided_by.get("CROWN", 0) >= 1 and decided_by.get("pgd", 0) >= 1, decided_by
