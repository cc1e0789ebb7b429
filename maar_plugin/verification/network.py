"""A feed-forward ReLU network as alternating dense affine maps and ReLUs, in float64.

Every network the verifier accepts is reduced to this form: ``y = W_L relu(... relu(W_1 x + b_1) ...) + b_L``
on the flattened input (C order, as VNN-LIB numbers ``X_i``). The same matrices feed auto_LiRPA (as an
``nn.Sequential`` of ``Linear``/``ReLU``) and the MILP, so bounds and the exact stage see one network.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


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

    def to_torch(self, dtype: torch.dtype = torch.float32) -> nn.Sequential:
        """The network as ``nn.Sequential(Linear, ReLU, ..., Linear)`` on flat inputs, for auto_LiRPA and PGD."""
        modules: list[nn.Module] = []
        for index, layer in enumerate(self.layers):
            linear = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            with torch.no_grad():
                linear.weight.copy_(torch.as_tensor(layer.weight, dtype=dtype))
                linear.bias.copy_(torch.as_tensor(layer.bias, dtype=dtype))
            modules.append(linear.to(dtype))
            if index < len(self.layers) - 1:
                modules.append(nn.ReLU())
        return nn.Sequential(*modules).eval()
