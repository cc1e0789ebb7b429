"""ONNX loading for verification: supported ops reproduce onnxruntime, unsupported ones fail in one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.testing.dense import dense_network
from maar_plugin.verification import VerifyOptions, read_log, verify_instance, verify_instances
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages
from maar_plugin.verification.network.onnx_import import load_onnx_graph

FAST = VerifyOptions(timeout=20, pgd_steps=5, pgd_restarts=1, alpha_iterations=3)


class Normalised(nn.Module):
    """(x - mean) / std, written as Sub and Div nodes like VNN-COMP MNIST models."""

    def forward(self, x):
        return (x - 0.1307) / 0.3081


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.pool = nn.AvgPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 2, padding=0)
        self.fc = nn.Linear(4 * 1 * 1, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.norm(self.conv(Normalised()(x))))
        x = torch.relu(self.conv2(self.pool(x)))
        x = x.view(x.size(0), -1)
        return self.out(torch.relu(self.fc(x)))


class ColumnInput(nn.Module):
    """Input [1, n, 1] multiplied from the left, as some VNN-COMP ACAS-style files do."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(6, 5))
        self.w2 = nn.Parameter(torch.randn(2, 6))

    def forward(self, x):
        return torch.matmul(self.w2, torch.relu(torch.matmul(self.w1, x) + 0.5))


def export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    torch.onnx.export(model.eval(), torch.zeros(shape), str(path), input_names=["input"], dynamo=False)
    return path


def onnxruntime_outputs(path: Path, flat: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.stack([session.run(None, {"input": x.reshape(shape).astype(np.float32)})[0].reshape(-1) for x in flat])


@pytest.mark.parametrize("model, shape", [
    (nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)), (1, 12)),
    (ConvNet(), (1, 1, 8, 8)),
    (ColumnInput(), (1, 5, 1)),
    (nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 4)), (1, 1, 4, 4)),
])
def test_converted_network_matches_onnxruntime(tmp_path, model, shape):
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = export(model, tmp_path / "net.onnx", shape)
    graph = load_onnx_graph(path)
    assert graph.input_shape == shape
    inputs = np.random.default_rng(0).uniform(0, 1, size=(20, int(np.prod(shape))))
    reference = onnxruntime_outputs(path, inputs, shape)
    with torch.no_grad():
        assert np.allclose(graph(torch.as_tensor(inputs, dtype=torch.float32)).numpy(), reference, atol=1e-4)
    # auto_LiRPA takes the graph that is verified, and its bounds hold at the sampled points
    lower, upper = inputs.min(axis=0), inputs.max(axis=0)
    spec = np.eye(graph.num_outputs)
    stages = LirpaBoundStages(graph, alpha_iterations=2)
    for method in ("IBP", "CROWN"):
        bounds = stages.spec_lower_bounds(lower, upper, spec, method)
        assert np.all(reference >= bounds - 1e-4), method


@pytest.mark.parametrize("activation, name", [(nn.Softplus(), "Softplus"), (nn.ELU(), "Elu")])
def test_unsupported_op_is_named(tmp_path, activation, name):
    path = export(nn.Sequential(nn.Linear(3, 4), activation, nn.Linear(4, 2)), tmp_path / "net.onnx", (1, 3))
    with pytest.raises(MaarError, match=f"unsupported ONNX op {name}") as error:
        load_onnx_graph(path)
    assert "\n" not in str(error.value)


def test_residual_connection_has_a_graph_but_no_dense_form_for_the_milp_reference(tmp_path):
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    path = export(Residual(), tmp_path / "net.onnx", (1, 3))
    assert len(load_onnx_graph(path).relu_indices()) == 1
    with pytest.raises(ValueError, match="not a chain"):
        dense_network(load_onnx_graph(path))


def write_box_property(path: Path, inputs: int, outputs: int) -> Path:
    lines = [f"(declare-const X_{i} Real)" for i in range(inputs)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    lines += [f"(assert (>= X_{i} 0.0))\n(assert (<= X_{i} 0.1))" for i in range(inputs)]
    lines.append("(assert (>= Y_1 Y_0))")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_models_mark_error_and_the_batch_goes_on(tmp_path):
    good = export(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), tmp_path / "good.onnx", (1, 3))
    softplus = export(nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)), tmp_path / "soft.onnx", (1, 3))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    prop = write_box_property(tmp_path / "p.vnnlib", 3, 2)
    wrong_size = write_box_property(tmp_path / "q.vnnlib", 5, 2)
    instances = [(garbage, prop, 5), (softplus, prop, 5), (good, wrong_size, 5), (good, prop, 5)]
    results = verify_instances(instances, tmp_path / "out", options=FAST, progress=False)
    assert [r.verdict for r in results[:3]] == ["error"] * 3
    assert results[3].verdict in ("sat", "unsat")
    assert "garbage.onnx" in results[0].message and "\n" not in results[0].message
    assert "Softplus" in results[1].message
    assert "X_" in results[2].message or "input" in results[2].message
    assert (tmp_path / "out" / "results" / "garbage__p.txt").read_text() == "error\n"
    assert len(read_log(tmp_path / "out")) == 4


def test_single_instance_error_does_not_raise(tmp_path):
    result = verify_instance(tmp_path / "missing.onnx", tmp_path / "missing.vnnlib", options=FAST)
    assert result.verdict == "error" and "missing.onnx" in result.message


def test_timeouts_are_reported(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 2))
    path = export(model, tmp_path / "net.onnx", (1, 6))
    prop = write_box_property(tmp_path / "p.vnnlib", 6, 2)
    assert verify_instance(path, prop, timeout=1e-6, options=FAST).verdict == "timeout"
