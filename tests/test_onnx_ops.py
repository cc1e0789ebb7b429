"""Networks as other tools export them: NHWC layouts, Slice/Split/Gather/Concat, Sigmoid/Tanh/LeakyRelu.

The converted graph computes what onnxruntime computes (on flat inputs in the ONNX input's C order, as
VNN-LIB numbers them), and every bound (auto_LiRPA's stages and the branch-and-bound engine) contains the
network's values at sampled points of the box."""
from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.testing.problems import export_onnx
from maar_plugin.verification.bounding.linear import SplitBoundEngine
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages, patches_blocker
from maar_plugin.verification.network.layers import Narrow, Transpose
from maar_plugin.verification.network.onnx_import import load_onnx_graph


class NhwcConvNet(nn.Module):
    """A Keras-style network: NHWC input, normalisation, Transpose to NCHW, convolutions, Transpose back, Dense."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(4, 5, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(5 * 4 * 4, 12), nn.Linear(12, 3)
        self.register_buffer("mean", torch.tensor([0.4, 0.5, 0.6]))
        self.register_buffer("std", torch.tensor([0.2, 0.25, 0.3]))

    def forward(self, x):
        x = ((x - self.mean) / self.std).permute(0, 3, 1, 2)
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(y.permute(0, 2, 3, 1).reshape(1, -1))))


class FlatToImage(nn.Module):
    """A flat input reshaped to NHWC and transposed; a Dense layer whose output is reshaped to NHWC and
    transposed before a convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.out = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 2, 3)
        self.fc = nn.Linear(3 * 4 * 4, 2 * 4 * 4)

    def forward(self, x):
        y = torch.relu(self.conv(x.reshape(1, 4, 4, 2).permute(0, 3, 1, 2)))
        z = torch.relu(self.fc(y.reshape(1, -1))).reshape(1, 4, 4, 2).permute(0, 3, 1, 2)
        return self.out(z).reshape(1, -1)


class SpatialTranspose(nn.Module):
    """A Transpose between two convolutions (rows and columns swapped): it stays a Transpose."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(2, 3, 3), nn.Conv2d(3, 4, 3), nn.Linear(4 * 3 * 2, 3)

    def forward(self, x):
        y = torch.relu(self.a(x)).permute(0, 1, 3, 2)
        return self.fc(torch.relu(self.b(y)).reshape(1, -1))


class Selections(nn.Module):
    """LeakyRelu, a Split, Sigmoid and Tanh, a Slice, Concat of computed tensors, a Gather with repeated indices."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.a, self.b, self.out = nn.Linear(6, 10), nn.Linear(6, 8), nn.Linear(4, 8), nn.Linear(10, 3)

    def forward(self, x):
        first, second = torch.split(nn.functional.leaky_relu(self.c(x), 0.1), [6, 4], dim=1)
        y = torch.cat([torch.sigmoid(self.a(first)), torch.tanh(self.b(second))[:, 2:7]], 1)
        return self.out(torch.cat([y[:, [0, 3, 3, 1, 5]], torch.relu(y[:, 8:])], 1))


class ChannelSlices(nn.Module):
    """Channel slices and a channel Concat of images (patches mode carries them), a LeakyRelu on images."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 3, 3), nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        y = nn.functional.leaky_relu(self.a(x), 0.2)
        y = torch.cat([y[:, 2:], torch.relu(y[:, :2])], 1)
        return self.fc(torch.sigmoid(self.b(y)).reshape(1, -1))


MODELS = [(NhwcConvNet, (1, 8, 8, 3)), (FlatToImage, (1, 32)), (SpatialTranspose, (1, 2, 6, 7)),
          (Selections, (1, 6)), (ChannelSlices, (1, 1, 6, 6))]


def onnxruntime_outputs(path, inputs: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
    return np.stack([session.run(None, {name: x.reshape(shape)})[0].reshape(-1) for x in inputs])


@pytest.mark.parametrize("make, shape", MODELS)
def test_graph_matches_onnxruntime_on_flat_inputs(tmp_path, make, shape):
    torch.manual_seed(0)
    path = export_onnx(make().eval(), tmp_path / "net.onnx", shape)
    graph = load_onnx_graph(path)
    assert graph.input_shape == shape
    inputs = np.random.default_rng(0).uniform(0, 1, size=(16, int(np.prod(shape)))).astype(np.float32)
    with torch.no_grad():
        outputs = graph(torch.from_numpy(inputs)).numpy()
    assert np.allclose(outputs, onnxruntime_outputs(path, inputs), atol=1e-5)


@pytest.mark.parametrize("make, shape, transposes, permuted_input", [
    (NhwcConvNet, (1, 8, 8, 3), 0, True), (FlatToImage, (1, 32), 0, True), (SpatialTranspose, (1, 2, 6, 7), 1, False)])
def test_transposes_are_folded_where_exact(tmp_path, make, shape, transposes, permuted_input):
    graph = load_onnx_graph(export_onnx(make().eval(), tmp_path / "net.onnx", shape))
    assert sum(isinstance(layer, Transpose) for layer in graph.layers) == transposes
    assert (graph.input_order is not None) == permuted_input
    assert (patches_blocker(graph) is not None) == bool(transposes)      # auto_LiRPA's matrix mode only there


def hand_built_model(path) -> None:
    """Ops torch does not export this way: a Slice with a negative step, a Gather with 2-D repeated and
    negative indices, a Split by a given ``split`` input, a Concat of four computed tensors."""
    rng = np.random.default_rng(1)
    w1, w2 = rng.normal(size=(5, 10)).astype(np.float32), rng.normal(size=(18, 4)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("LeakyRelu", ["h"], ["a"], alpha=0.2),
        helper.make_node("Slice", ["a", "starts", "ends", "axes", "steps"], ["reversed"]),
        helper.make_node("Gather", ["a", "indices"], ["picked"], axis=1),
        helper.make_node("Flatten", ["picked"], ["picked_flat"], axis=1),
        helper.make_node("Split", ["a", "split"], ["left", "right"], axis=1),
        helper.make_node("Tanh", ["right"], ["bent"]),
        helper.make_node("Concat", ["reversed", "picked_flat", "bent", "left"], ["joined"], axis=1),
        helper.make_node("MatMul", ["joined", "w2"], ["y"]),
    ]
    constants = [
        helper.make_tensor("w1", TensorProto.FLOAT, w1.shape, w1.reshape(-1)),
        helper.make_tensor("w2", TensorProto.FLOAT, w2.shape, w2.reshape(-1)),
        *(helper.make_tensor(name, TensorProto.INT64, [1], [value])
          for name, value in (("starts", 8), ("ends", 1), ("axes", 1), ("steps", -2))),
        helper.make_tensor("indices", TensorProto.INT64, [2, 2], [0, -1, 3, 3]),
        helper.make_tensor("split", TensorProto.INT64, [2], [3, 7]),
    ]
    graph = helper.make_graph(nodes, "hand", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], constants)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def test_hand_built_graph_matches_onnxruntime(tmp_path):
    hand_built_model(tmp_path / "hand.onnx")
    graph = load_onnx_graph(tmp_path / "hand.onnx")
    inputs = np.random.default_rng(2).normal(size=(32, 5)).astype(np.float32)
    with torch.no_grad():
        outputs = graph(torch.from_numpy(inputs)).numpy()
    assert np.allclose(outputs, onnxruntime_outputs(tmp_path / "hand.onnx", inputs), atol=1e-5)
    assert sum(isinstance(layer, Narrow) for layer in graph.layers) == 2          # the Split's outputs


def sampled_box(graph, seed: int, eps: float) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """A box in the ONNX input's order and points in it (its corners' worth of extremes first)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, size=graph.num_inputs)
    lower, upper = centre - eps, centre + eps
    samples = rng.uniform(lower, upper, size=(2000, graph.num_inputs))
    samples[:16] = np.where(rng.uniform(size=(16, graph.num_inputs)) < 0.5, lower, upper)
    return lower, upper, torch.as_tensor(samples, dtype=torch.float32)


@pytest.mark.parametrize("make, shape", [*MODELS, (None, (1, 5))])
def test_bounds_contain_sampled_values(tmp_path, make, shape):
    torch.manual_seed(1)
    if make is None:
        hand_built_model(tmp_path / "net.onnx")
    else:
        export_onnx(make().eval(), tmp_path / "net.onnx", shape)
    graph = load_onnx_graph(tmp_path / "net.onnx")
    lower, upper, samples = sampled_box(graph, 0, 0.05)
    with torch.no_grad():
        outputs = graph(samples).double().numpy()
        values = graph.node_values(graph.to_graph_layout(samples))
    spec = np.concatenate([np.eye(graph.num_outputs), -np.eye(graph.num_outputs)])
    stages = LirpaBoundStages(graph, alpha_iterations=5)
    for method in ("IBP", "CROWN", "alpha-CROWN"):
        bounds = stages.spec_lower_bounds(lower, upper, spec, method)
        assert np.all((outputs @ spec.T).min(axis=0) >= bounds - 1e-5), method
        for index, (low, up) in stages.preactivation_bounds().items():
            z = values[graph.nodes[index].inputs[0]].reshape(len(samples), -1).double().numpy()
            assert np.all(z >= low) and np.all(z <= up), (method, graph.nodes[index].name)
    engine = SplitBoundEngine(graph)
    box_lower, box_upper = (torch.as_tensor(bound[None], dtype=torch.float32) for bound in (lower, upper))
    intermediate = engine.intermediate_bounds(box_lower, box_upper)
    assert sorted(intermediate) == graph.activation_indices()
    for index, (low, up) in intermediate.items():
        z = values[graph.nodes[index].inputs[0]]
        assert bool((z >= low - 1e-5).all()) and bool((z <= up + 1e-5).all()), graph.nodes[index].name
    C = torch.as_tensor(spec, dtype=torch.float32)[:, None]
    result = engine.bound(C, box_lower, box_upper, intermediate)
    assert np.all((outputs @ spec.T).min(axis=0) >= result.lower[:, 0].numpy() - 1e-4)
    with torch.no_grad():        # the bound's minimiser is a point of the box (ONNX order), where the bound holds
        at_primal = (engine.forward(result.primal[:, 0]) * C[:, 0]).sum(-1)
    assert bool((at_primal >= result.lower[:, 0] - 1e-4).all())


def test_layout_follows_the_onnx_input_order(tmp_path):
    """The engine's linear bound of one output, as a function of the flat input, equals the network's exact
    affine map on a box where every ReLU is stable; checked by finite differences in the ONNX order."""
    torch.manual_seed(3)
    path = export_onnx(NhwcConvNet().eval(), tmp_path / "net.onnx", (1, 8, 8, 3))
    graph = load_onnx_graph(path)
    centre = np.random.default_rng(3).uniform(0.2, 0.8, size=graph.num_inputs)
    lower, upper = torch.as_tensor(centre - 1e-7)[None].float(), torch.as_tensor(centre + 1e-7)[None].float()
    engine = SplitBoundEngine(graph, dtype=torch.float64)
    bounds = engine.intermediate_bounds(lower.double(), upper.double())
    result = engine.bound(torch.eye(3, dtype=torch.float64)[:, None], lower.double(), upper.double(), bounds)
    step = np.zeros(graph.num_inputs)
    for index in np.random.default_rng(4).choice(graph.num_inputs, 6, replace=False):
        step[:] = 0
        step[index] = 1e-3
        points = np.stack([centre + step, centre - step]).astype(np.float32)
        difference = onnxruntime_outputs(path, points)
        slope = (difference[0] - difference[1]) / 2e-3
        assert np.allclose(slope, result.input_coefficients[:, 0, index].numpy(), rtol=1e-2, atol=5e-5), index


@pytest.mark.parametrize("model, shape, message", [
    (nn.Sequential(nn.Linear(3, 4), nn.Softplus(), nn.Linear(4, 2)), (1, 3), "unsupported ONNX op Softplus"),
])
def test_unsupported_ops_fail_in_one_line(tmp_path, model, shape, message):
    path = export_onnx(model, tmp_path / "net.onnx", shape)
    started = time.monotonic()
    with pytest.raises(MaarError, match=message) as error:
        load_onnx_graph(path)
    assert time.monotonic() - started < 5 and "\n" not in str(error.value)


def test_constant_concat_and_integer_casts_are_refused(tmp_path):
    class ConstantConcat(nn.Module):
        def forward(self, x):
            return torch.cat([x, torch.ones(1, 2)], 1)

    with pytest.raises(MaarError, match=r"Concat node .* joins a constant"):
        load_onnx_graph(export_onnx(ConstantConcat(), tmp_path / "concat.onnx", (1, 3)))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Cast", ["r"], ["i"], to=TensorProto.INT64),
             helper.make_node("Gather", ["table", "i"], ["y"], axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [helper.make_tensor("table", TensorProto.FLOAT, [4], [1, 2, 3, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "gather.onnx"))
    with pytest.raises(MaarError, match=r"Cast node .* non-float") as error:       # computed Gather indices
        load_onnx_graph(tmp_path / "gather.onnx")
    assert "\n" not in str(error.value)
