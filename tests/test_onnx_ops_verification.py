"""`maar verify` on networks with the newer ONNX ops, against exact references.

Every counterexample reproduces in onnxruntime in the VNN-LIB order, and every ``unsat`` agrees with:
- NHWC conv networks (a Transpose of the input): the MILP of the NCHW network whose first layer's columns
  this test permutes itself;
- LeakyReLU networks (branch and bound splits them): the MILP of the same function as a chain of ReLU
  layers (leaky(z) = relu(z) − a·relu(−z));
- Sigmoid/Tanh networks with two inputs: a grid search whose Lipschitz bound makes it exact at the
  margins used (there every verdict must be the grid's);
- ReLU networks with a Sigmoid output (branch and bound splits the ReLUs only): the MILP of the ReLU part.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from helpers import FAST, check_counterexample
from maar_plugin.testing.dense import AffineLayer, ReluNetwork, dense_network, interval_preactivation_bounds
from maar_plugin.testing.milp import exact_verdict, milp_verdict, solve_disjunct
from maar_plugin.testing.problems import export_onnx, mlp, robustness_property, write_vnnlib
from maar_plugin.verification import load_onnx_graph, verify_instance
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages
from maar_plugin.verification.options import BabOptions
from maar_plugin.vnnlib.reader import read_vnnlib_cases

BAB = replace(FAST, timeout=60, bab=BabOptions(input_split_max_inputs=0))


def nchw_conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class Nhwc(nn.Module):
    """The NCHW network on NHWC inputs, as TensorFlow exports it: a Transpose first."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 3, 1, 2))


def tally_verdict(tally: dict, result, expected: Callable[[], str], onnx_path, prop) -> None:
    """Check one verdict: ``expected()`` (the exact reference, called only where needed) must not contradict
    it, and a counterexample must reproduce in onnxruntime in the VNN-LIB order."""
    assert result.verdict in ("sat", "unsat"), (result.verdict, result.message)
    (case,) = read_vnnlib_cases(prop)
    if result.verdict == "sat":
        check_counterexample(result, onnx_path, case.input_lower, case.input_upper,
                             [(c.coefficients, c.bounds) for c in case.unsafe])
    else:
        assert expected() in ("unsat", "ambiguous"), result.stage
    tally[result.verdict] += 1
    tally["branched"] += result.stage == "BaB"


def nhwc_verdicts(tmp_path, cases: list[tuple[int, float]]) -> dict:
    """Verify robustness of NHWC networks; every ``unsat`` is checked against the MILP of the NCHW network
    whose first layer's columns are permuted here, independently of the converter."""
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    nchw = np.arange(2 * 8 * 8).reshape(2, 8, 8).transpose(1, 2, 0).reshape(-1)   # NHWC entry j is NCHW entry nchw[j]
    for seed, eps in cases:
        rng = np.random.default_rng(seed)
        inner = nchw_conv_net(seed)
        onnx_path = export_onnx(Nhwc(inner).eval(), tmp_path / f"nhwc{seed}.onnx", (1, 8, 8, 2))
        dense = dense_network(load_onnx_graph(export_onnx(inner, tmp_path / f"nchw{seed}.onnx", (1, 2, 8, 8))))
        reference = ReluNetwork((AffineLayer(dense.layers[0].weight[:, nchw], dense.layers[0].bias), *dense.layers[1:]),
                                (1, 8, 8, 2))
        prop = robustness_property(tmp_path / f"p{seed}.vnnlib", Nhwc(inner), (1, 8, 8, 2), rng, eps)
        (case,) = read_vnnlib_cases(prop)
        C, d = np.stack([c.coefficients for c in case.unsafe]), np.stack([c.bounds for c in case.unsafe])
        tally_verdict(tally, verify_instance(onnx_path, prop, options=BAB),
                      partial(milp_verdict, reference, case.input_lower, case.input_upper, C, d), onnx_path, prop)
    return tally


def test_nhwc_verdicts_agree_with_the_milp_of_the_nchw_network(tmp_path):
    tally = nhwc_verdicts(tmp_path, [(3, 0.3), (6, 0.15)])
    assert tally == {"sat": 1, "unsat": 1, "branched": 1}, tally


@pytest.mark.slow
def test_more_nhwc_verdicts_agree_with_the_milp(tmp_path):
    tally = nhwc_verdicts(tmp_path, [(1, 0.15), (2, 0.15), (4, 0.25), (5, 0.25), (8, 0.25), (9, 0.25)])
    assert tally["sat"] >= 1 and tally["unsat"] >= 4 and tally["branched"] >= 4, tally


class LeakyNet(nn.Module):
    """``W3 leaky(W2 leaky(W1 x + b1) + b2) + b3`` on 5 inputs, slope 0.1."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList([nn.Linear(5, 10), nn.Linear(10, 10), nn.Linear(10, 3)])
        self.eval()

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = nn.functional.leaky_relu(layer(x), 0.1)
        return self.layers[-1](x)

    def as_chain(self) -> nn.Sequential:
        """The same function with ReLUs only: leaky(z) = relu(z) − 0.1·relu(−z)."""
        modules, previous = [], None
        for layer in self.layers:
            weight, bias = layer.weight.detach(), layer.bias.detach()
            if previous is not None:                          # read [relu(z); relu(−z)] of the layer before
                weight = torch.cat([weight, -0.1 * weight], dim=1)
            linear = nn.Linear(weight.shape[1], weight.shape[0] * (2 if layer is not self.layers[-1] else 1))
            with torch.no_grad():
                if layer is self.layers[-1]:
                    linear.weight.copy_(weight)
                    linear.bias.copy_(bias)
                else:
                    linear.weight.copy_(torch.cat([weight, -weight]))
                    linear.bias.copy_(torch.cat([bias, -bias]))
            modules += [linear] if layer is self.layers[-1] else [linear, nn.ReLU()]
            previous = layer
        return nn.Sequential(*modules).eval()


def test_leaky_relu_chain_is_the_same_function():
    model = LeakyNet(0)
    x = torch.randn(64, 5)
    with torch.no_grad():
        assert torch.allclose(model(x), model.as_chain()(x), atol=1e-5)


def test_leaky_relu_verdicts_agree_with_the_milp(tmp_path):
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    for seed, eps in [(0, 0.5), (1, 0.5), (2, 0.5), (5, 0.5), (8, 1.0), (9, 0.5)]:
        rng = np.random.default_rng(seed)
        model = LeakyNet(seed)
        onnx_path = export_onnx(model, tmp_path / f"net{seed}.onnx", (1, 5))
        chain = load_onnx_graph(export_onnx(model.as_chain(), tmp_path / f"chain{seed}.onnx", (1, 5)))
        prop = robustness_property(tmp_path / f"p{seed}.vnnlib", model, (1, 5), rng, eps)
        cases = read_vnnlib_cases(prop, chain.num_inputs, chain.num_outputs)
        tally_verdict(tally, verify_instance(onnx_path, prop, options=BAB), partial(exact_verdict, chain, cases),
                      onnx_path, prop)
    assert tally["sat"] >= 1 and tally["unsat"] >= 1 and tally["branched"] >= 1, tally


def s_shaped_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)).eval()


def grid_minimum(model: nn.Sequential, lower: np.ndarray, upper: np.ndarray, row: np.ndarray) -> tuple[float, float]:
    """(min over a 401×401 grid of row·f, a bound on how far below it the true minimum over the box can be):
    Lipschitz constant (spectral norms, Sigmoid' ≤ 1/4, Tanh' ≤ 1) times the distance to the nearest grid point."""
    axes = [np.linspace(lo, up, 401) for lo, up in zip(lower, upper)]
    points = torch.as_tensor(np.stack(np.meshgrid(*axes), -1).reshape(-1, 2), dtype=torch.float64)
    double = model.double()
    with torch.no_grad():
        values = double(points).numpy() @ row
    weights = [m.weight.detach().double() for m in double if isinstance(m, nn.Linear)]
    lipschitz = float(torch.linalg.norm(torch.as_tensor(row) @ weights[2]) * torch.linalg.matrix_norm(weights[1], 2)
                      * 0.25 * torch.linalg.matrix_norm(weights[0], 2))
    model.float()
    return float(values.min()), lipschitz * float(np.linalg.norm((upper - lower) / 400)) / 2


def test_sigmoid_tanh_verdicts_equal_a_lipschitz_grid(tmp_path):
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        model = s_shaped_net(seed)
        onnx_path = export_onnx(model, tmp_path / f"net{seed}.onnx", (1, 2))
        lower = rng.uniform(-1, 0.5, size=2)
        upper = lower + 0.5
        row = np.array([1.0, -1.0])
        minimum, slack = grid_minimum(model, lower, upper, row)
        assert slack < 0.005, slack
        offset = 0.02 if seed % 2 else -0.02          # row·y <= minimum + offset: reached iff offset > 0
        prop = write_vnnlib(tmp_path / f"p{seed}.vnnlib", lower, upper, 2,
                            [(row[None], np.array([minimum + offset]))])
        expected = "unsat" if offset < 0 else "sat"
        tally_verdict(tally, verify_instance(onnx_path, prop, options=FAST), partial(str, expected), onnx_path, prop)
    assert tally["sat"] == 3 and tally["unsat"] == 3, tally            # the sat ones are reached: all decided


def test_without_relus_to_split_alpha_crown_gets_the_time_branch_and_bound_cannot_use(tmp_path):
    """A Tanh network has nothing for branch and bound to split, so alpha-CROWN is its last bound stage and
    optimises for most of the time left, past ``--alpha-iterations``: here CROWN and one step leave the property
    open, a long optimisation proves it (the offset lies between the sound bounds)."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 48), *[module for _ in range(5) for module in (nn.Tanh(), nn.Linear(48, 48))],
                          nn.Tanh(), nn.Linear(48, 2)).eval()
    onnx_path = export_onnx(model, tmp_path / "tanh.onnx", (1, 4))
    lower = np.random.default_rng(4).uniform(-1, 0, 4)
    upper, row = lower + 1.0, np.array([[1.0, -1.0]])
    stages = LirpaBoundStages(load_onnx_graph(onnx_path), alpha_iterations=1)
    short = max(float(stages.spec_lower_bounds(lower, upper, row, method)[0]) for method in ("CROWN", "alpha-CROWN"))
    long = float(stages.spec_lower_bounds(lower, upper, row, "alpha-CROWN", iterations=300)[0])
    assert long > short + 5e-4, (short, long)
    prop = write_vnnlib(tmp_path / "p.vnnlib", lower, upper, 2, [(row, np.array([(short + long) / 2]))])
    result = verify_instance(onnx_path, prop, options=replace(FAST, alpha_iterations=1, timeout=30))
    assert (result.verdict, result.stage) == ("unsat", "alpha-CROWN"), (result.verdict, result.message)


def test_relu_network_with_a_sigmoid_output_agrees_with_the_milp(tmp_path):
    """Branch and bound splits the ReLUs and keeps the output Sigmoid's root relaxation. Its exact answer
    comes from the MILP of the ReLU part: sigmoid(z) <= d exactly where z <= logit(d)."""
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    for seed in range(6):
        rng = np.random.default_rng(seed)
        relu_part = mlp(seed, (5, 16, 16, 1))
        model = nn.Sequential(*relu_part, nn.Sigmoid()).eval()
        onnx_path = export_onnx(model, tmp_path / f"net{seed}.onnx", (1, 5))
        centre, eps = rng.uniform(0.2, 0.8, size=5), float(rng.uniform(0.3, 0.6))
        lower, upper = centre - eps, centre + eps
        network = dense_network(load_onnx_graph(export_onnx(relu_part, tmp_path / f"relu{seed}.onnx", (1, 5))))
        bounds = interval_preactivation_bounds(network, lower, upper)
        minimum = solve_disjunct(network, bounds, lower, upper, np.ones((1, 1)), np.zeros(1), 60,
                                 required_margin=1e9, refute_tolerance=1e9).objective      # min of z over the box
        offset = 0.01 if seed % 2 else -0.01
        prop = write_vnnlib(tmp_path / f"p{seed}.vnnlib", lower, upper, 1,
                            [(np.ones((1, 1)), np.array([1 / (1 + np.exp(-(minimum + offset)))]))])
        expected = "unsat" if offset < 0 else "sat"
        tally_verdict(tally, verify_instance(onnx_path, prop, options=BAB), partial(str, expected), onnx_path, prop)
    assert tally["sat"] == 3 and tally["unsat"] == 3 and tally["branched"] >= 1, tally
