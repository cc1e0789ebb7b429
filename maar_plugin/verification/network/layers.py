"""A network as a graph of torch layers, the form in which the verifier holds an ONNX model.

Layers stay layers: a convolution is an ``nn.Conv2d``, so memory grows with the parameters, not with
the neurons squared. Nodes are in topological order; node 0 is the input. Every other node applies
one module to the outputs of its input nodes, on a batch (dimension 0 is always the batch; shapes
below are per example). The same module is traced by auto_LiRPA, attacked by PGD and walked by the
branch-and-bound bound engine, so every stage sees one network.

Modules a node may hold (the converter emits nothing else):

- affine in one input: ``nn.Linear``, ``nn.Conv2d`` (BatchNorm, constant shifts and zero Pad folded
  in), ``nn.AvgPool2d``, :class:`Reshape`, :class:`Transpose`, :class:`Narrow`, :class:`ElementwiseAffine`;
- affine in several inputs: :class:`Add`, :class:`Sub` (residual connections), :class:`Concat`;
- piecewise linear: ``nn.ReLU``. A MaxPool is rewritten exactly into one-hot convolutions and
  ``max(a, b) = a + relu(b − a)``, a LeakyReLU of slope a into ``a·z + (1 − a)·relu(z)`` (see
  :mod:`maar_plugin.verification.network.onnx_import`), so every bound method and the branch and bound
  split only ReLUs;
- S-shaped: ``nn.Sigmoid``, ``nn.Tanh`` (:data:`S_SHAPED_MODULES`): bounded by linear relaxations over
  their input bounds, never split.

The graph's input may be a permutation of the ONNX input (a leading Transpose, e.g. NHWC → NCHW,
absorbed by the converter): node 0 then holds the input in the graph's layout, and ``input_order``
says where each of its elements sits in the ONNX input. Flat inputs (``[batch, num_inputs]``) are always
in the ONNX input's C order, VNN-LIB's numbering of ``X_i``; only shaped inputs are in the graph's layout.
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


class Narrow(nn.Module):
    """``length`` entries from ``start`` along one dimension of the example (a Slice, Split or Gather of a
    contiguous range)."""

    def __init__(self, dim: int, start: int, length: int) -> None:
        super().__init__()
        self.dim, self.start, self.length = int(dim), int(start), int(length)

    def forward(self, x: Tensor) -> Tensor:
        return x.narrow(self.dim + 1, self.start, self.length)


class Concat(nn.Module):
    """Concatenation of computed tensors along one dimension of the example."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, *tensors: Tensor) -> Tensor:
        return torch.cat(tensors, dim=self.dim + 1)


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


AFFINE_MODULES = (nn.Linear, nn.Conv2d, nn.AvgPool2d, Reshape, Transpose, Narrow, ElementwiseAffine, Add, Sub, Concat)
S_SHAPED_MODULES = (nn.Sigmoid, nn.Tanh)


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
    in C order); ``example_shape`` is node 0's shape, the input in the graph's layout. ``input_order``
    (None: the same order) maps the layouts: element ``i`` of the flattened graph input is element
    ``input_order[i]`` of the flattened ONNX input.
    """

    def __init__(self, nodes: list[GraphNode], layers: list[nn.Module], input_shape: tuple[int, ...],
                 input_order: Tensor | None = None) -> None:
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
        if input_order is not None:
            input_order = torch.as_tensor(input_order, dtype=torch.long)
            if sorted(input_order.tolist()) != list(range(self.num_inputs)) or len(self.example_shape) < 2:
                raise ValueError("input_order must permute the entries of an input of rank 2 or more")
        self.input_order: Tensor | None
        self.register_buffer("input_order", input_order)

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

    def activation_indices(self) -> list[int]:
        """Indices of the nodes whose input bounds a linear bound pass needs (ReLU and S-shaped), in order."""
        return [i for i in range(1, len(self.nodes)) if isinstance(self.module_of(i), (nn.ReLU, *S_SHAPED_MODULES))]

    def node_values(self, x: Tensor) -> list[Tensor]:
        """The value of every node for inputs ``x`` [batch, *example_shape]."""
        values: list[Tensor] = [x]
        for index, node in enumerate(self.nodes[1:], start=1):
            values.append(self.module_of(index)(*[values[i] for i in node.inputs]))
        return values

    def to_graph_layout(self, flat: Tensor) -> Tensor:
        """Flat inputs [batch, num_inputs] in the ONNX input's order as inputs [batch, *example_shape]."""
        flat = flat.reshape(-1, self.num_inputs)
        if self.input_order is not None:
            flat = flat[:, self.input_order]
        return flat.reshape(-1, *self.example_shape)

    def to_input_order(self, values: Tensor) -> Tensor:
        """Values [..., num_inputs] indexed by the flattened graph input, re-indexed in the ONNX input's order
        (e.g. a linear bound's coefficients on the input)."""
        if self.input_order is None:
            return values
        return values.index_select(-1, torch.argsort(self.input_order))

    def forward(self, x: Tensor) -> Tensor:
        """Outputs [batch, num_outputs] of inputs [batch, *example_shape] (the graph's layout) or flat
        [batch, num_inputs] (the ONNX input's order).

        The rank is checked in Python, so a trace (auto_LiRPA) of shaped inputs holds no reshape or
        permutation of the input, which auto_LiRPA 0.3 cannot bound in patches mode."""
        if x.dim() != len(self.example_shape) + 1:
            x = self.to_graph_layout(x)
        output = self.node_values(x)[-1]
        return output if output.dim() == 2 else output.reshape(-1, self.num_outputs)
