"""A feed-forward ReLU network as dense float64 affine maps: the form the exact MILP reference encodes.

``y = W_L relu(... relu(W_1 x + b_1) ...) + b_L`` on the flattened input (C order, as VNN-LIB numbers
``X_i``). :func:`dense_network` derives it from a LayerGraph that is a chain of layers; :meth:`ReluNetwork.to_graph`
turns one back into a LayerGraph of ``Linear`` and ``ReLU`` nodes, for tests that draw networks as matrices.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from maar_plugin.verification.network.layers import GraphNode, LayerGraph

Bounds = list[tuple[np.ndarray, np.ndarray]]   # per ReLU, flat (lower, upper) of its input, float64


@dataclass(frozen=True)
class AffineLayer:
    """``weight @ x + bias`` with weight [outputs, inputs], float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class ReluNetwork:
    """Affine layers with a ReLU after each but the last; ``input_shape`` is the network input's shape."""

    layers: tuple[AffineLayer, ...]
    input_shape: tuple[int, ...]

    @property
    def num_inputs(self) -> int:
        return int(self.layers[0].weight.shape[1])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for flat inputs x [batch, inputs] in float64 (the reference the MILP encodes)."""
        for layer in self.layers[:-1]:
            x = np.maximum(x @ layer.weight.T + layer.bias, 0.0)
        last = self.layers[-1]
        return x @ last.weight.T + last.bias

    def to_graph(self) -> LayerGraph:
        """The network as a LayerGraph of float32 ``Linear`` and ``ReLU`` nodes."""
        nodes = [GraphNode("input", (), (self.num_inputs,), None)]
        layers: list[nn.Module] = []
        for index, layer in enumerate(self.layers):
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(layer.weight, dtype=torch.float32))
                linear.bias.copy_(torch.as_tensor(layer.bias, dtype=torch.float32))
            layers.append(linear)
            nodes.append(GraphNode(f"linear{index}", (len(nodes) - 1,), (layer.weight.shape[0],), len(layers) - 1))
            if index < len(self.layers) - 1:
                layers.append(nn.ReLU())
                nodes.append(GraphNode(f"relu{index}", (len(nodes) - 1,), (layer.weight.shape[0],), len(layers) - 1))
        graph = LayerGraph(nodes, layers, (1, self.num_inputs)).eval()
        graph.requires_grad_(False)
        return graph


def dense_network(graph: LayerGraph) -> ReluNetwork:
    """The graph as a ReluNetwork: every affine segment between two ReLUs evaluated in float64 on the zero
    vector and the unit basis. Only for small graphs whose nodes form one chain (a ValueError otherwise)."""
    nodes = graph.nodes
    if any(node.inputs != (index - 1,) for index, node in enumerate(nodes[1:], start=1)):
        raise ValueError("the graph is not a chain of layers")
    if len(graph.activation_indices()) != len(graph.relu_indices()):
        raise ValueError("the graph has activations other than ReLU")
    exact = copy.deepcopy(graph).double()
    layers: list[AffineLayer] = []
    value = exact.to_graph_layout(_basis((graph.num_inputs,)))      # columns in the ONNX input's order
    with torch.no_grad():
        for index in range(1, len(nodes)):
            module = exact.module_of(index)
            if isinstance(module, nn.ReLU):
                layers.append(_affine(value))
                value = _basis(nodes[index].shape)
                continue
            value = module(value)
    layers.append(_affine(value))
    return ReluNetwork(tuple(layers), graph.input_shape)


def interval_preactivation_bounds(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray) -> Bounds:
    """Float64 interval bounds of every ReLU input over the box."""
    bounds: Bounds = []
    low, up = lower.astype(np.float64), upper.astype(np.float64)
    for layer in network.layers[:-1]:
        positive, negative = np.maximum(layer.weight, 0), np.minimum(layer.weight, 0)
        z_low = positive @ low + negative @ up + layer.bias
        z_up = positive @ up + negative @ low + layer.bias
        bounds.append((z_low, z_up))
        low, up = np.maximum(z_low, 0), np.maximum(z_up, 0)
    return bounds


def _basis(shape: tuple[int, ...]) -> torch.Tensor:
    size = int(torch.Size(shape).numel())
    basis = torch.cat([torch.zeros(1, size, dtype=torch.float64), torch.eye(size, dtype=torch.float64)])
    return basis.reshape(size + 1, *shape)


def _affine(value: torch.Tensor) -> AffineLayer:
    flat = value.reshape(value.shape[0], -1)
    bias = flat[0]
    weight = (flat[1:] - bias).T
    return AffineLayer(weight.contiguous().numpy(), bias.numpy().copy())
