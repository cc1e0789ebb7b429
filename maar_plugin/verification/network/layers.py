"""A network as a graph of torch layers, the form in which the verifier holds an ONNX model.

Layers stay layers: a convolution is an ``nn.Conv2d``, so memory grows with the parameters, not with
the neurons squared. Nodes are in topological order; node 0 is the input. Every other node applies
one module to the outputs of its input nodes, on a batch (dimension 0 is always the batch; shapes
below are per example). The same module is traced by auto_LiRPA, attacked by PGD and walked by the
branch-and-bound bound engine, so every stage sees one network.

Modules a node may hold (the converter emits nothing else):

- affine in one input: ``nn.Linear``, ``nn.Conv2d`` (BatchNorm, constant shifts and zero Pad folded
  in), ``nn.AvgPool2d``, :class:`Reshape`, :class:`Transpose`, :class:`ElementwiseAffine`;
- affine in two inputs: :class:`Add`, :class:`Sub` (residual connections);
- piecewise linear: ``nn.ReLU`` only. A MaxPool is rewritten exactly into one-hot convolutions and
  ``max(a, b) = a + relu(b − a)`` (see :mod:`maar_plugin.verification.network.onnx_import`), so every bound
  method and the branch-and-bound split only ReLUs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


class Reshape(nn.Module):
    """``x.reshape(batch, *shape)``: Flatten, Reshape, Squeeze and Unsqueeze of the example.

    Written with ``-1`` for the batch, so that a traced graph (auto_LiRPA) works for any batch size."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(-1, *self.shape)


class Transpose(nn.Module):
    """Permutes the example's dimensions (``perm`` does not include the batch dimension)."""

    def __init__(self, perm: tuple[int, ...]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *[p + 1 for p in self.perm])


class ElementwiseAffine(nn.Module):
    """``x * scale (+ shift)`` with constants of the example's shape (Add/Sub/Mul/Div/Neg by constants, a
    BatchNormalization). The converter folds the shift into a neighbouring Linear or Conv2d wherever it
    can: auto_LiRPA 0.3 cannot bound the sum of a computed tensor and a constant one."""

    scale: Tensor
    shift: Tensor | None

    def __init__(self, scale: Tensor, shift: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", None if shift is None else shift.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        scaled = x * self.scale
        return scaled if self.shift is None else scaled + self.shift


class Add(nn.Module):
    """Sum of two computed tensors (a residual connection)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class Sub(nn.Module):
    """Difference of two computed tensors."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a - b


AFFINE_MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, Reshape, Transpose, ElementwiseAffine, Add, Sub)


@dataclass(frozen=True)
class GraphNode:
    """One node: its ONNX tensor name, the indices of its input nodes and its per-example shape.

    ``module`` indexes ``LayerGraph.layers`` (None for the input node).
    """

    name: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    module: int | None


class LayerGraph(nn.Module):
    """The network ``f``: flat per-example outputs ``[batch, num_outputs]`` from inputs ``[batch, *example_shape]``.

    ``input_shape`` is the ONNX input's shape (batch dimension included, as VNN-LIB's ``X_i`` number it
    in C order); ``example_shape`` drops the leading batch dimension of 1.
    """

    def __init__(self, nodes: list[GraphNode], layers: list[nn.Module], input_shape: tuple[int, ...]) -> None:
        super().__init__()
        if not nodes or nodes[0].inputs or nodes[0].module is not None:
            raise ValueError("node 0 must be the input node")
        for index, node in enumerate(nodes[1:], start=1):
            if node.module is None or not all(0 <= i < index for i in node.inputs):
                raise ValueError(f"node {index} ({node.name}) is not in topological order or has no module")
        self.nodes = list(nodes)
        self.layers = nn.ModuleList(layers)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.example_shape = nodes[0].shape

    @property
    def num_inputs(self) -> int:
        return int(torch.Size(self.example_shape).numel())

    @property
    def num_outputs(self) -> int:
        return int(torch.Size(self.nodes[-1].shape).numel())

    def module_of(self, index: int) -> nn.Module:
        module = self.nodes[index].module
        assert module is not None, "the input node has no module"
        return self.layers[module]

    def relu_indices(self) -> list[int]:
        """Indices of the ReLU nodes, in topological order."""
        return [i for i in range(1, len(self.nodes)) if isinstance(self.module_of(i), nn.ReLU)]

    def multiply_adds(self) -> int:
        """Multiply-adds of one forward pass of one example (Linear and Conv2d layers; a measure of its cost)."""
        total = 0
        for index in range(1, len(self.nodes)):
            module = self.module_of(index)
            if isinstance(module, nn.Linear):
                total += module.weight.numel()
            elif isinstance(module, nn.Conv2d):
                total += module.weight.numel() * math.prod(self.nodes[index].shape[1:])
            else:
                total += math.prod(self.nodes[index].shape)
        return total

    def node_values(self, x: Tensor) -> list[Tensor]:
        """The value of every node for inputs ``x`` [batch, *example_shape]."""
        values: list[Tensor] = [x]
        for index, node in enumerate(self.nodes[1:], start=1):
            values.append(self.module_of(index)(*[values[i] for i in node.inputs]))
        return values

    def forward(self, x: Tensor) -> Tensor:
        """Outputs [batch, num_outputs] of inputs [batch, *example_shape] or flat [batch, num_inputs].

        The rank is checked in Python, so a trace (auto_LiRPA) of shaped inputs holds no reshape of the
        input, which auto_LiRPA 0.3 cannot bound in patches mode."""
        if x.dim() != len(self.example_shape) + 1:
            x = x.reshape(-1, *self.example_shape)
        output = self.node_values(x)[-1]
        return output if output.dim() == 2 else output.reshape(-1, self.num_outputs)
