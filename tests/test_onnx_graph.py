"""ONNX → LayerGraph: the graph computes what onnxruntime computes, and auto_LiRPA's bounds on it hold."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from maar_plugin.bounds.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm  # auto_LiRPA, patched
from maar_plugin.errors import MaarError
from maar_plugin.verification.network.onnx_import import load_onnx_graph


def export(model: nn.Module, path: Path, shape: tuple[int, ...]) -> Path:
    torch.onnx.export(model.eval(), torch.zeros(shape), str(path), input_names=["input"], dynamo=False)
    return path


class ResidualPoolNet(nn.Module):
    """Normalisation, BatchNorm, a residual block, MaxPool, ZeroPad2d, a padded MaxPool and Gemm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.norm = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.pool, self.pad, self.conv3 = nn.MaxPool2d(2), nn.ZeroPad2d(1), nn.Conv2d(6, 5, 3)
        self.padded_pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc = nn.Linear(5 * 2 * 2, 4)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        y = torch.relu(self.norm(self.conv1(x)))
        y = self.pool(torch.relu(self.conv2(y) + y))
        y = self.padded_pool(torch.relu(self.conv3(self.pad(y))))
        return self.fc(torch.flatten(y, 1))


class GlobalPoolNet(nn.Module):
    """Sub of two computed tensors, AvgPool with a Pad before it, GlobalAveragePool, a Transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(2, 4, 1)
        self.pad, self.avg = nn.ZeroPad2d(1), nn.AvgPool2d(3, stride=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.a(x) - self.b(x))
        y = torch.relu(self.avg(self.pad(y)) * 2.0)
        y = nn.functional.adaptive_avg_pool2d(y, 1).permute(0, 2, 3, 1)
        return self.fc(y.reshape(1, 4))


MODELS = [
    (ResidualPoolNet, (1, 3, 8, 8)),
    (GlobalPoolNet, (1, 2, 6, 6)),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 3)), (1, 1, 3, 4)),
]


def randomise_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("make, shape", MODELS)
def test_graph_matches_onnxruntime(tmp_path, make, shape):
    torch.manual_seed(0)
    model = make()
    randomise_batchnorm(model)
    path = export(model, tmp_path / "net.onnx", shape)
    graph = load_onnx_graph(path)
    assert graph.input_shape == shape
    inputs = np.random.default_rng(0).uniform(0, 1, size=(16, *shape[1:])).astype(np.float32)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = np.stack([session.run(None, {"input": x[None]})[0].reshape(-1) for x in inputs])
    with torch.no_grad():
        flat = graph(torch.from_numpy(inputs).reshape(16, -1)).numpy()
        shaped = graph(torch.from_numpy(inputs)).numpy()
    assert np.allclose(flat, reference, atol=1e-5) and np.allclose(shaped, reference, atol=1e-5)


@pytest.mark.parametrize("make, shape", MODELS)
@pytest.mark.parametrize("seed", [0, 1])
def test_lirpa_bounds_on_the_graph_contain_sampled_outputs(tmp_path, make, shape, seed):
    torch.manual_seed(seed)
    model = make()
    randomise_batchnorm(model)
    graph = load_onnx_graph(export(model, tmp_path / "net.onnx", shape))
    centre = torch.rand(1, *shape[1:])
    eps = 0.02
    bounded = BoundedModule(graph, torch.zeros_like(centre))
    x = BoundedTensor(centre, PerturbationLpNorm(norm=np.inf, x_L=centre - eps, x_U=centre + eps))
    samples = centre + (torch.rand(3000, *shape[1:]) * 2 - 1) * eps
    samples[:8] = centre + eps * torch.sign(torch.randn(8, *shape[1:]))       # corners
    with torch.no_grad():
        outputs = graph(samples)
    for method in ("IBP", "backward", "CROWN-Optimized"):
        lower, upper = bounded.compute_bounds(x=(x,), method=method)
        assert bool((lower.detach() <= outputs.min(dim=0).values + 1e-5).all()), method
        assert bool((upper.detach() >= outputs.max(dim=0).values - 1e-5).all()), method


class PaddedPoolOnSigned(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.pool = nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1)

    def forward(self, x):
        return torch.flatten(self.pool(self.conv(x)), 1)


@pytest.mark.parametrize("model, shape, message", [
    (nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)), (1, 3), "unsupported ONNX op Softplus"),
    (PaddedPoolOnSigned(), (1, 1, 6, 6), "non-negative input"),
    (nn.Sequential(nn.ZeroPad2d(1), nn.ReLU(), nn.Flatten()), (1, 1, 3, 3), "Pad"),
    (nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 1, 2), nn.Flatten()), (1, 1, 4, 4), "asymmetric"),
    (nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(1, 1, 3), nn.Flatten()), (1, 1, 4, 4), "zero padding"),
])
def test_unsupported_constructs_fail_in_one_line_quickly(tmp_path, model, shape, message):
    path = export(model, tmp_path / "net.onnx", shape)
    started = time.monotonic()
    with pytest.raises(MaarError, match=message) as error:
        load_onnx_graph(path)
    assert time.monotonic() - started < 5 and "\n" not in str(error.value) and "net.onnx" in str(error.value)


def test_residual_product_is_refused(tmp_path):
    class Product(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            return self.a(x) * x

    with pytest.raises(MaarError, match="two computed tensors"):
        load_onnx_graph(export(Product(), tmp_path / "net.onnx", (1, 3)))
