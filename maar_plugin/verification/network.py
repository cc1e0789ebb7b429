"""A feed-forward ReLU network as alternating dense affine maps and ReLUs, in float64.

Every network the verifier accepts is reduced to this form: ``y = W_L relu(... relu(W_1 x + b_1) ...) + b_L``
on the flattened input (C order, as VNN-LIB numbers ``X_i``): the form the LP and MILP stages need
(:mod:`maar_plugin.verification.dense` derives it from a LayerGraph that is a chain of layers).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from maar_plugin.verification.graph import GraphNode, LayerGraph


@dataclass(frozen=True)
class AffineLayer:
    """``weight @ x + bias`` with weight [outputs, inputs], float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class ReluNetwork:
    """Affine layers with a ReLU after each but the last; ``input_shape`` is the ONNX input's shape."""

    layers: tuple[AffineLayer, ...]
    input_shape: tuple[int, ...]

    @property
    def num_inputs(self) -> int:
        return int(self.layers[0].weight.shape[1])

    @property
    def num_outputs(self) -> int:
        return int(self.layers[-1].weight.shape[0])

    @property
    def hidden_sizes(self) -> list[int]:
        return [int(layer.weight.shape[0]) for layer in self.layers[:-1]]

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Outputs for flat inputs x [batch, inputs] in float64 (the reference the MILP encodes)."""
        for layer in self.layers[:-1]:
            x = np.maximum(x @ layer.weight.T + layer.bias, 0.0)
        last = self.layers[-1]
        return x @ last.weight.T + last.bias

    def to_graph(self) -> LayerGraph:
        """The network as a LayerGraph of float32 ``Linear`` and ``ReLU`` nodes (for auto_LiRPA, PGD and
        branch and bound)."""
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
