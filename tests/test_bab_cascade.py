"""The branch-and-bound stage in `maar verify`: its verdicts equal the MILP's on conv and residual networks."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime
import torch
from torch import nn

import maar_plugin  # noqa: F401
from maar_plugin.verification import verify_instance
from maar_plugin.verification.bab import BabOptions
from tests.test_verification_soundness import FAST, export, write_vnnlib

BAB = replace(FAST, milp_max_unstable=0, timeout=120, bab=BabOptions(input_split_max_inputs=0))
INPUT_SPLIT = replace(FAST, milp_max_unstable=0, timeout=120)
MILP = replace(FAST, milp_max_unstable=10**6, timeout=120)


def conv_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3)).eval()


class ResidualNet(nn.Module):
    """``W3 relu(W2 relu(W1 x + b1) + b2 + x) + b3``."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.first, self.second, self.out = nn.Linear(6, 12), nn.Linear(12, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.out(torch.relu(self.second(torch.relu(self.first(x))) + x))

    def as_chain(self) -> nn.Sequential:
        """The same function as a chain of Linear/ReLU layers: the skip carried as relu(x) − relu(−x)."""
        identity = torch.eye(6)
        first = nn.Linear(6, 24)
        second = nn.Linear(24, 6)
        with torch.no_grad():
            first.weight.copy_(torch.cat([self.first.weight, identity, -identity]))
            first.bias.copy_(torch.cat([self.first.bias, torch.zeros(12)]))
            second.weight.copy_(torch.cat([self.second.weight, identity, -identity], dim=1))
            second.bias.copy_(self.second.bias)
        return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), self.out).eval()


def robustness_property(path, model: nn.Module, shape: tuple[int, ...], rng: np.random.Generator, eps: float):
    """Every other class scores below the predicted one on an ε-box around a random point."""
    x = rng.uniform(0, 1, int(np.prod(shape)))
    with torch.no_grad():
        label = int(model(torch.tensor(x, dtype=torch.float32).reshape(shape)).argmax())
    disjuncts = []
    for j in range(3):
        if j != label:
            row = np.zeros((1, 3))
            row[0, label], row[0, j] = 1.0, -1.0
            disjuncts.append((row, np.array([0.0])))
    return write_vnnlib(path, np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1), 3, disjuncts)


def check_counterexample(onnx_path, result, shape) -> None:
    x, y = result.counterexample
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": np.asarray(x, dtype=np.float32).reshape(shape)})[0].reshape(-1)
    assert np.allclose(output, y, atol=1e-5)


def compare(tmp_path, seeds, make, shape, reference_model=None, options=BAB, eps_range=(0.05, 0.3)):
    tally = {"sat": 0, "unsat": 0, "branched": 0}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        model = make(seed)
        onnx_path = export(model, tmp_path / f"net{seed}.onnx", shape)
        reference_path = onnx_path if reference_model is None else \
            export(reference_model(model), tmp_path / f"chain{seed}.onnx", shape)
        prop = robustness_property(tmp_path / f"p{seed}.vnnlib", model, shape, rng, float(rng.uniform(*eps_range)))
        branched = verify_instance(onnx_path, prop, options=options)
        exact = verify_instance(reference_path, prop, options=MILP)
        assert branched.verdict in ("sat", "unsat"), (seed, branched.verdict, branched.message)
        if exact.verdict in ("sat", "unsat"):
            assert branched.verdict == exact.verdict, (seed, branched.stage, exact.stage)
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
    every robust instance of radius up to 0.3 without branching (measured: 0 of 16 branched; 3 of 24 here)."""
    tally = compare(tmp_path, range(24), ResidualNet, (1, 6), reference_model=lambda model: model.as_chain(),
                    eps_range=(0.05, 0.45))
    assert tally["sat"] >= 2 and tally["unsat"] >= 2 and tally["branched"] >= 2, tally


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3)).eval()


def test_input_splitting_equals_milp_on_low_dimensional_networks(tmp_path):
    tally = compare(tmp_path, range(16), mlp, (1, 4), options=INPUT_SPLIT)
    assert tally["sat"] >= 2 and tally["unsat"] >= 2 and tally["branched"] >= 2, tally
