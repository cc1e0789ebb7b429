"""Convert an ONNX model into a :class:`~maar_plugin.verification.network.layers.LayerGraph` of torch layers.

One pass over the (topologically sorted) ONNX nodes: a Conv becomes an ``nn.Conv2d``, a Gemm an
``nn.Linear``, so memory grows with the parameters. Constant subgraphs (``Shape → Gather → Concat →
Reshape``, the ``ConstantOfShape`` torch writes for pads) are folded by onnx's reference evaluator.
The graph is shaped so that auto_LiRPA 0.3 can trace it and every bound method sees the same network:

- a constant added to a computed tensor (Add/Sub by constants, BatchNormalization, a Gemm's bias)
  is folded into the Linear or Conv2d that produces the tensor, or else becomes a diagonal 1×1
  convolution (per channel) or a diagonal Linear (1-D, up to 4,096 entries): auto_LiRPA 0.3 cannot
  bound ``x + constant_tensor``;
- a zero Pad is folded into the Conv or pooling that reads it (auto_LiRPA 0.3 cannot trace ``F.pad``),
  and a padded AveragePool becomes a diagonal convolution (0.3's CROWN bound of it ignores the padding);
- a MaxPool is rewritten exactly: one one-hot (diagonal) convolution per kernel offset, then a
  balanced tree of ``max(a, b) = a + relu(b − a)``. Its padding (−∞ in ONNX) is exact as zero padding
  only on a non-negative input, so a padded MaxPool is accepted only after a ReLU or Sigmoid;
- a LeakyRelu of slope a becomes ``a·z + (1 − a)·relu(z)``: every bound method then relaxes it as a
  ReLU with slope a (chord above, a line of slope between a and 1 below), and branch and bound splits it;
- Sigmoid and Tanh stay ``nn.Sigmoid``/``nn.Tanh``: auto_LiRPA bounds them, and branch and bound keeps
  their relaxation (:mod:`maar_plugin.bounds.activations`) over the root bounds;
- Slice, Split and Gather with constant indices select entries of a computed tensor: a contiguous block
  becomes :class:`Narrow` modules (auto_LiRPA's patches mode carries them along channels only), any
  other selection a one-hot ``nn.Linear`` on the flattened tensor (up to ``MAX_SELECTION_ENTRIES``
  weights). Which entries each output takes is found by running the op itself on the entries' indices;
- Concat of computed tensors becomes :class:`Concat`;
- Transposes are folded into the network input and into neighbouring Linear layers where that is
  exact (:mod:`~maar_plugin.verification.network.layout`); the others stay :class:`Transpose` modules.

Anything else is a one-line :class:`MaarError` naming the op, raised before any bound is computed.
Why not onnx2torch: its fx ``GraphModule`` keeps ops (Pad, MaxPool, ``x + constant``) that auto_LiRPA
0.3's tracer cannot bound, and the verifier needs exactly the modules above.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.reference
import torch
from torch import Tensor, nn

from maar_plugin.errors import MaarError
from maar_plugin.verification.network.layers import (
    Add,
    Concat,
    ElementwiseAffine,
    GraphNode,
    LayerGraph,
    Narrow,
    Reshape,
    Sub,
    Transpose,
)
from maar_plugin.verification.network.layout import fold_transposes

MAX_DIAGONAL_LINEAR = 4096
MAX_SELECTION_ENTRIES = 1 << 24   # weights of the one-hot Linear that stands for a Gather or strided Slice
_PASS_THROUGH = {"Identity", "Dropout"}
_MULTI_INPUT = {"Add", "Sub", "Concat"}
_SUPPORTED = ("Gemm, MatMul, Conv, BatchNormalization, Pad, AveragePool, GlobalAveragePool, MaxPool, Flatten, "
              "Reshape, Transpose, Squeeze, Unsqueeze, Slice, Split, Gather (constant indices), Concat, "
              "Add/Sub/Mul/Div/Neg by constants, Add/Sub of two computed tensors, Relu, LeakyRelu, Sigmoid, Tanh")


def load_onnx_graph(path: str | Path) -> LayerGraph:
    """Read an ONNX file into a LayerGraph (float32, eval mode); a problem is a one-line MaarError."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise MaarError(f"{path}: no such ONNX file") from None
    except Exception as error:  # onnx raises DecodeError and others for malformed files
        raise MaarError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    try:
        return _Builder(model.graph).build()
    except MaarError as error:
        raise MaarError(f"{path}: {error}") from None


@dataclass
class _Computed:
    """A tensor computed from the network input: its node, its ONNX shape, a zero Pad still to be folded
    into the next Conv or pooling (top, left, bottom, right), and whether it is known to be ≥ 0."""

    node: int
    shape: tuple[int, ...]
    pads: tuple[int, int, int, int] | None = None
    nonnegative: bool = False

    @property
    def example(self) -> tuple[int, ...]:
        return _example_shape(self.shape)


@dataclass
class _Node:
    name: str
    inputs: list[int]
    shape: tuple[int, ...]
    module: nn.Module | None


def _example_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-example shape: the ONNX shape without its leading batch dimension of 1, where it has one."""
    return tuple(shape[1:]) if len(shape) >= 2 and shape[0] == 1 else tuple(shape)


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _float_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


class _Builder:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.constants: dict[str, np.ndarray] = {
            tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
        self.computed: dict[str, _Computed] = {}
        self.nodes: list[_Node] = []

    # -- the pass over the ONNX nodes ---------------------------------------------------------------------
    def build(self) -> LayerGraph:
        inputs = [value for value in self.graph.input if value.name not in self.constants]
        if len(inputs) != 1:
            raise MaarError(f"expected one network input, found {len(inputs)}")
        if len(self.graph.output) != 1:
            raise MaarError(f"expected one network output, found {len(self.graph.output)}")
        dims = inputs[0].type.tensor_type.shape.dim
        input_shape = tuple(dim.dim_value if dim.dim_value > 0 else 1 for dim in dims)
        if not input_shape:
            raise MaarError("the network input is a scalar")
        self.nodes.append(_Node(inputs[0].name, [], _example_shape(input_shape), None))
        self.computed[inputs[0].name] = _Computed(0, input_shape)
        for node in self.graph.node:
            self.convert(node)
        output = self.graph.output[0].name
        if output not in self.computed:
            raise MaarError("the network output is not computed from the network input")
        result = self.tensor(output)
        if result.node == 0:
            raise MaarError("the network has no layers")
        return self.assemble(result.node, input_shape)

    def convert(self, node: onnx.NodeProto) -> None:
        names = [name for name in node.input if name]
        computed = [name for name in names if name not in self.constants]
        if not computed:
            self.fold_constant(node)
            return
        for name in computed:
            if name not in self.computed:
                raise MaarError(f"{node.op_type} node {self.label(node)} reads {name!r}, "
                                "which no earlier node computes")
        op = node.op_type
        handler = getattr(self, f"op_{op}", None)
        if op in _PASS_THROUGH or op == "Cast":
            if op == "Cast" and _attributes(node).get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                raise MaarError(f"Cast node {self.label(node)} casts the computed tensor to a non-float type")
            self.computed[node.output[0]] = self.computed[computed[0]]
            return
        if handler is None:
            raise MaarError(f"unsupported ONNX op {op} (node {self.label(node)}); supported: {_SUPPORTED}")
        if len(computed) > 1 and op not in _MULTI_INPUT:
            raise MaarError(f"{op} node {self.label(node)} combines two computed tensors (not affine)")
        handler(node, computed, _attributes(node))

    def fold_constant(self, node: onnx.NodeProto) -> None:
        feeds = {name: self.constants[name] for name in node.input if name}
        try:
            outputs = onnx.reference.ReferenceEvaluator(node).run(None, feeds)
        except Exception as error:  # the reference evaluator's errors vary by op
            raise MaarError(f"cannot evaluate constant {node.op_type} node {self.label(node)} "
                            f"({type(error).__name__}: {error})") from None
        for name, output in zip(node.output, outputs):
            self.constants[name] = np.asarray(output)

    @staticmethod
    def label(node: onnx.NodeProto) -> str:
        return node.name or node.output[0]

    def tensor(self, name: str, allow_pads: bool = False) -> _Computed:
        value = self.computed[name]
        if value.pads is not None and not allow_pads:
            raise MaarError(f"a zero Pad of {name!r} must feed a Conv, AveragePool or MaxPool")
        return value

    def constant(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        if node.input[index] not in self.constants:
            raise MaarError(f"{node.op_type} node {self.label(node)}: input {index} must be a constant")
        return self.constants[node.input[index]]

    def required_constant(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        value = self.constant(node, index)
        if value is None:
            raise MaarError(f"{node.op_type} node {self.label(node)}: input {index} is missing")
        return value

    def add_node(self, name: str, module: nn.Module, inputs: list[int]) -> int:
        """Append a node; its example shape comes from running the module on zeros."""
        probes = [torch.zeros(1, *self.nodes[i].shape) for i in inputs]
        with torch.no_grad():
            output = module.eval()(*probes)
        self.nodes.append(_Node(name, list(inputs), tuple(output.shape[1:]), module))
        return len(self.nodes) - 1

    def emit(self, node: onnx.NodeProto, module: nn.Module, source: _Computed, shape: tuple[int, ...] | None = None,
             nonnegative: bool = False) -> None:
        index = self.add_node(node.output[0], module, [source.node])
        example = self.nodes[index].shape
        if shape is None:
            shape = (1, *example) if len(source.shape) >= 2 and source.shape[0] == 1 else example
        self.computed[node.output[0]] = _Computed(index, tuple(shape), nonnegative=nonnegative)

    # -- ops ----------------------------------------------------------------------------------------------
    def op_Relu(self, node, computed, attributes) -> None:
        self.emit(node, nn.ReLU(), self.tensor(computed[0]), nonnegative=True)

    def op_Sigmoid(self, node, computed, attributes) -> None:
        self.emit(node, nn.Sigmoid(), self.tensor(computed[0]), nonnegative=True)

    def op_Tanh(self, node, computed, attributes) -> None:
        self.emit(node, nn.Tanh(), self.tensor(computed[0]))

    def op_LeakyRelu(self, node, computed, attributes) -> None:
        """``a·z + (1 − a)·relu(z)``, exact for every slope a (see the module docstring)."""
        source = self.tensor(computed[0])
        slope = float(attributes.get("alpha", 0.01))
        name = node.output[0]
        relu = self.add_node(name if slope == 0 else f"{name}/relu", nn.ReLU(), [source.node])
        if slope != 0:
            example = self.nodes[source.node].shape
            linear = self.add_node(f"{name}/linear", ElementwiseAffine(torch.full(example, slope)), [source.node])
            rest = self.add_node(f"{name}/rest", ElementwiseAffine(torch.full(example, 1.0 - slope)), [relu])
            relu = self.add_node(name, Add(), [linear, rest])
        self.computed[name] = _Computed(relu, source.shape, nonnegative=slope == 0)

    def op_Concat(self, node, computed, attributes) -> None:
        if len(computed) != len([name for name in node.input if name]):
            raise MaarError(f"Concat node {self.label(node)} joins a constant to a computed tensor (not supported)")
        sources = [self.tensor(name) for name in node.input if name]
        rank = len(sources[0].shape)
        axis = int(attributes["axis"]) % rank
        batch = {len(source.shape) - len(source.example) for source in sources}
        if len(batch) != 1 or any(len(source.shape) != rank for source in sources) or axis < min(batch):
            raise MaarError(f"Concat node {self.label(node)}: only tensors of one rank, joined along a dimension "
                            "other than the batch, are supported")
        index = self.add_node(node.output[0], Concat(axis - min(batch)), [source.node for source in sources])
        shape = list(sources[0].shape)
        shape[axis] = sum(source.shape[axis] for source in sources)
        self.computed[node.output[0]] = _Computed(index, tuple(shape),
                                                  nonnegative=all(source.nonnegative for source in sources))

    def op_Slice(self, node, computed, attributes) -> None:
        self.select(node, computed)

    def op_Split(self, node, computed, attributes) -> None:
        self.select(node, computed)

    def op_Gather(self, node, computed, attributes) -> None:
        self.select(node, computed)

    def select(self, node: onnx.NodeProto, computed: list[str]) -> None:
        """Slice, Split, Gather: the op run on the computed tensor's entry indices says which entries each
        output takes; each output becomes a Reshape, Narrows or a one-hot Linear (module docstring)."""
        if node.input[0] != computed[0]:
            raise MaarError(f"{node.op_type} node {self.label(node)}: its indices must be constants")
        source = self.tensor(computed[0])
        feeds = {name: self.constants[name] for name in node.input[1:] if name}
        feeds[node.input[0]] = np.arange(int(np.prod(source.shape)), dtype=np.int64).reshape(source.shape)
        try:
            outputs = onnx.reference.ReferenceEvaluator(node).run(None, feeds)
        except Exception as error:  # the reference evaluator's errors vary by op
            raise MaarError(f"cannot evaluate {node.op_type} node {self.label(node)} "
                            f"({type(error).__name__}: {error})") from None
        for name, positions in zip(node.output, outputs):
            if name:
                self.emit_selection(node, name, source, np.asarray(positions))

    def emit_selection(self, node: onnx.NodeProto, name: str, source: _Computed, positions: np.ndarray) -> None:
        """The entries ``positions`` (flat indices into ``source``, in the output's ONNX shape) as tensor ``name``."""
        shape, flat = tuple(positions.shape), positions.reshape(-1)
        size, example = int(np.prod(source.shape)), _example_shape(tuple(positions.shape))
        if flat.size == 0:
            raise MaarError(f"{node.op_type} node {self.label(node)}: output {name!r} is empty")
        coordinates = np.unravel_index(flat, source.example)
        block = tuple(slice(int(c.min()), int(c.max()) + 1) for c in coordinates)
        grid = np.arange(size).reshape(source.example)[block]
        index = source.node
        if grid.size == flat.size and np.array_equal(grid.reshape(-1), flat):
            for dim, (extent, part) in enumerate(zip(source.example, block)):
                if part.stop - part.start != extent:
                    narrow = Narrow(dim, part.start, part.stop - part.start)
                    index = self.add_node(f"{name}/narrow{dim}", narrow, [index])
        else:
            if flat.size * size > MAX_SELECTION_ENTRIES:
                raise MaarError(f"{node.op_type} node {self.label(node)}: selecting {flat.size} of {size} entries "
                                f"needs a {flat.size}×{size} one-hot matrix, over {MAX_SELECTION_ENTRIES} entries")
            if len(source.example) != 1:
                index = self.add_node(f"{name}/flat", Reshape((size,)), [index])
            one_hot = np.zeros((flat.size, size))
            one_hot[np.arange(flat.size), flat] = 1.0
            index = self.add_node(f"{name}/select", _linear(one_hot, np.zeros(flat.size)), [index])
        if self.nodes[index].shape != example:
            index = self.add_node(f"{name}/reshape", Reshape(example), [index])
        if index != source.node:
            self.nodes[index].name = name
        self.computed[name] = _Computed(index, shape, nonnegative=source.nonnegative)

    def op_Shape(self, node, computed, attributes) -> None:
        shape = np.array(self.tensor(computed[0], allow_pads=True).shape, dtype=np.int64)
        start, end = int(attributes.get("start", 0)), attributes.get("end")
        self.constants[node.output[0]] = shape[start:None if end is None else int(end)]

    def op_Add(self, node, computed, attributes) -> None:
        self.binary(node, computed, attributes)

    def op_Sub(self, node, computed, attributes) -> None:
        self.binary(node, computed, attributes)

    def op_Mul(self, node, computed, attributes) -> None:
        self.binary(node, computed, attributes)

    def op_Div(self, node, computed, attributes) -> None:
        self.binary(node, computed, attributes)

    def op_Neg(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        self.affine(node, source, -np.ones(source.shape, dtype=np.float32), None)

    def binary(self, node: onnx.NodeProto, computed: list[str], attributes: dict) -> None:
        op = node.op_type
        if len(computed) == 2:
            first, second = (self.tensor(name) for name in node.input[:2])
            if first.shape != second.shape:
                raise MaarError(f"{op} node {self.label(node)} broadcasts {first.shape} with {second.shape}; "
                                "only equal shapes are supported for two computed tensors")
            module = Add() if op == "Add" else Sub()
            index = self.add_node(node.output[0], module, [first.node, second.node])
            self.computed[node.output[0]] = _Computed(index, first.shape)
            return
        source = self.tensor(computed[0])
        computed_first = node.input[0] == computed[0]
        other = self.constants[node.input[1] if computed_first else node.input[0]].astype(np.float64)
        try:
            if np.broadcast_shapes(source.shape, other.shape) != tuple(source.shape):
                raise ValueError
            constant = np.broadcast_to(other, source.shape)
        except ValueError:
            raise MaarError(f"{op} node {self.label(node)}: a constant of shape {other.shape} does not broadcast "
                            f"to the computed tensor's shape {source.shape}") from None
        ones = np.ones(source.shape)
        if op == "Add":
            scale, shift = ones, constant
        elif op == "Sub":
            scale, shift = (ones, -constant) if computed_first else (-ones, constant)
        elif op == "Mul":
            scale, shift = constant, None
        elif not computed_first:
            raise MaarError(f"Div node {self.label(node)} divides by the computed tensor (not affine)")
        else:
            scale, shift = 1.0 / constant, None
        self.affine(node, source, scale, shift)

    def affine(self, node: onnx.NodeProto, source: _Computed, scale: np.ndarray, shift: np.ndarray | None) -> None:
        example = source.example
        module = ElementwiseAffine(_float_tensor(scale).reshape(example),
                                   None if shift is None else _float_tensor(shift).reshape(example))
        self.emit(node, module, source, shape=source.shape)

    def op_BatchNormalization(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        if len(source.shape) < 2:
            raise MaarError(f"BatchNormalization node {self.label(node)} on a tensor of shape {source.shape}")
        scale, bias, mean, variance = (np.array(self.constant(node, i), dtype=np.float64) for i in range(1, 5))
        factor = scale / np.sqrt(variance + float(attributes.get("epsilon", 1e-5)))
        view = (1, -1) + (1,) * (len(source.shape) - 2)
        full = np.ones(source.shape)
        self.affine(node, source, full * factor.reshape(view), full * (bias - mean * factor).reshape(view))

    def op_Gemm(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        if node.input[0] != computed[0] or len(source.shape) != 2 or attributes.get("transA", 0):
            raise MaarError(f"Gemm node {self.label(node)}: only x·W (+ b) with x of shape [1, n] is supported")
        weight = np.array(self.constant(node, 1), dtype=np.float64)
        weight = weight if attributes.get("transB", 0) else weight.T                   # [out, in]
        weight = weight * float(attributes.get("alpha", 1.0))
        bias = self.constant(node, 2)
        bias = np.zeros(weight.shape[0]) if bias is None else \
            np.broadcast_to(np.array(bias, dtype=np.float64) * float(attributes.get("beta", 1.0)), (1, weight.shape[0]))
        self.emit(node, _linear(weight, np.asarray(bias).reshape(-1)), source, shape=(1, weight.shape[0]))

    def op_MatMul(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        other = np.array(self.constants[node.input[1] if node.input[0] == computed[0] else node.input[0]],
                         dtype=np.float64)
        if other.ndim != 2:
            raise MaarError(f"MatMul node {self.label(node)}: only products with a 2-D constant are supported")
        if node.input[0] == computed[0]:
            if source.shape[-1] != other.shape[0]:
                raise MaarError(f"MatMul node {self.label(node)}: shapes {source.shape} and {other.shape} do not match")
            linear = _linear(other.T, np.zeros(other.shape[1]))
            self.emit(node, linear, source, shape=(*source.shape[:-1], other.shape[1]))
            return
        # W · x on a column (x [..., n] or [..., n, 1]): a Linear on the flattened column.
        column = source.shape[-1:] if len(source.shape) == 1 else source.shape[-2:]
        if column[0] != other.shape[1] or (len(column) == 2 and column[1] != 1) or \
                int(np.prod(source.shape)) != other.shape[1]:
            raise MaarError(f"MatMul node {self.label(node)}: W·x is supported only for a column vector x, "
                            f"got shapes {other.shape} and {source.shape}")
        flat = self.nodes[source.node].shape != (other.shape[1],)
        index = self.add_node(f"{node.output[0]}/column", Reshape((other.shape[1],)), [source.node]) if flat \
            else source.node
        index = self.add_node(node.output[0] if not flat else f"{node.output[0]}/linear",
                              _linear(other, np.zeros(other.shape[0])), [index])
        shape = (*source.shape[:-2], other.shape[0], 1) if len(column) == 2 else (other.shape[0],)
        if _example_shape(shape) != (other.shape[0],):
            index = self.add_node(node.output[0], Reshape(_example_shape(shape)), [index])
        self.computed[node.output[0]] = _Computed(index, shape)

    def op_Conv(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0], allow_pads=True)
        self.require_image(node, source)
        weight = np.array(self.required_constant(node, 1), dtype=np.float32)
        bias = self.constant(node, 2)
        if weight.ndim != 4:
            raise MaarError(f"Conv node {self.label(node)}: only 2-D convolutions are supported")
        padding = self.symmetric_pads(node, source, attributes)
        group = int(attributes.get("group", 1))
        conv = nn.Conv2d(weight.shape[1] * group, weight.shape[0], (weight.shape[2], weight.shape[3]),
                         stride=self.pair(node, attributes, "strides"), padding=padding,
                         dilation=self.pair(node, attributes, "dilations"), groups=group, bias=True)
        assert conv.bias is not None  # bias=True
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(weight))
            conv.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else _float_tensor(bias))
        if source.example[0] != conv.in_channels:
            raise MaarError(f"Conv node {self.label(node)}: {conv.in_channels} input channels expected, the tensor "
                            f"has {source.example[0]}")
        self.emit(node, conv, source)

    def op_Pad(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0], allow_pads=True)
        mode = attributes.get("mode", b"constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pads = self.constant(node, 1)
        pads = np.array(attributes.get("pads", []) if pads is None else pads, dtype=np.int64)
        value_input = self.constant(node, 2)
        value = (float(attributes.get("value", 0.0)) if value_input is None
                 else float(np.asarray(value_input).reshape(-1)[0]))
        axes = self.constant(node, 3)
        rank = len(source.shape)
        if axes is not None:
            full = np.zeros(2 * rank, dtype=np.int64)
            for position, axis in enumerate(int(a) % rank for a in axes):
                full[axis], full[axis + rank] = pads[position], pads[position + len(axes)]
            pads = full
        if mode != "constant" or value != 0.0:
            raise MaarError(f"Pad node {self.label(node)}: only zero padding is supported "
                            f"(got mode {mode}, value {value})")
        if rank != 4 or len(pads) != 8 or pads[[0, 1, 4, 5]].any() or (pads < 0).any():
            raise MaarError(f"Pad node {self.label(node)}: only non-negative padding of the two spatial dimensions "
                            "of an image tensor is supported")
        top, left, bottom, right = (int(pads[i]) for i in (2, 3, 6, 7))
        before = source.pads or (0, 0, 0, 0)
        total = (before[0] + top, before[1] + left, before[2] + bottom, before[3] + right)
        padded_shape = (*source.shape[:2], source.shape[2] + top + bottom, source.shape[3] + left + right)
        self.computed[node.output[0]] = _Computed(source.node, padded_shape, total, source.nonnegative)

    def op_AveragePool(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0], allow_pads=True)
        self.require_image(node, source)
        own = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
        if any(own) and not attributes.get("count_include_pad", 0):
            raise MaarError(f"AveragePool node {self.label(node)}: count_include_pad=0 with padding is not supported")
        kernel = self.pair(node, attributes, "kernel_shape")
        padding = self.symmetric_pads(node, source, attributes)
        if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
            raise MaarError(f"AveragePool node {self.label(node)}: padding larger than half the kernel")
        strides = self.pair(node, attributes, "strides", kernel)
        pool = nn.AvgPool2d(kernel, stride=strides, padding=padding, count_include_pad=True)
        self.require_floor_mode(node, attributes, pool, source)
        if any(padding):   # auto_LiRPA 0.3's backward bound of a padded AvgPool ignores the padding: a conv instead
            channels = source.example[0]
            conv = nn.Conv2d(channels, channels, kernel, stride=strides, padding=padding, bias=False)
            with torch.no_grad():
                conv.weight.zero_()
                conv.weight[range(channels), range(channels)] = 1.0 / (kernel[0] * kernel[1])
            self.emit(node, conv, source, nonnegative=source.nonnegative)
        else:
            self.emit(node, pool, source, nonnegative=source.nonnegative)

    def op_GlobalAveragePool(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        self.require_image(node, source)
        self.emit(node, nn.AvgPool2d((source.example[1], source.example[2])), source, nonnegative=source.nonnegative)

    def op_MaxPool(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0], allow_pads=True)
        self.require_image(node, source)
        if len(node.output) > 1 and node.output[1]:
            raise MaarError(f"MaxPool node {self.label(node)}: the Indices output is not supported")
        kernel = self.pair(node, attributes, "kernel_shape")
        padding = self.symmetric_pads(node, source, attributes)
        if any(padding) and not source.nonnegative:
            raise MaarError(f"MaxPool node {self.label(node)}: padding is only supported on a non-negative input "
                            "(after a Relu)")
        channels = source.example[0]
        strides, dilations = self.pair(node, attributes, "strides", kernel), self.pair(node, attributes, "dilations")
        self.require_floor_mode(node, attributes, nn.MaxPool2d(kernel, strides, padding, dilations), source)
        values = []
        for row in range(kernel[0]):
            for column in range(kernel[1]):
                pick = nn.Conv2d(channels, channels, kernel, stride=strides, padding=padding, dilation=dilations,
                                 bias=False)
                with torch.no_grad():
                    pick.weight.zero_()
                    pick.weight[range(channels), range(channels), row, column] = 1.0
                values.append(self.add_node(f"{node.output[0]}/pick{row}_{column}", pick, [source.node]))
        level = 0
        while len(values) > 1:
            paired: list[int] = []
            for first, second in zip(values[0::2], values[1::2]):
                prefix = f"{node.output[0]}/max{level}_{len(paired)}"
                difference = self.add_node(f"{prefix}/sub", Sub(), [second, first])
                rectified = self.add_node(f"{prefix}/relu", nn.ReLU(), [difference])
                paired.append(self.add_node(f"{prefix}/add", Add(), [first, rectified]))
            values = paired + values[len(paired) * 2:]
            level += 1
        self.nodes[values[0]].name = node.output[0]
        self.computed[node.output[0]] = _Computed(values[0], (1, *self.nodes[values[0]].shape),
                                                  nonnegative=source.nonnegative)

    def op_Flatten(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        axis = int(attributes.get("axis", 1)) % max(len(source.shape), 1)
        self.reshape(node, source, (int(np.prod(source.shape[:axis])), int(np.prod(source.shape[axis:]))))

    def op_Reshape(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        target = [int(d) for d in self.required_constant(node, 1)]
        if not attributes.get("allowzero", 0):
            target = [source.shape[i] if d == 0 else d for i, d in enumerate(target)]
        if target.count(-1) == 1:
            known = int(np.prod([d for d in target if d != -1]))
            target[target.index(-1)] = int(np.prod(source.shape)) // max(known, 1)
        if int(np.prod(target)) != int(np.prod(source.shape)) or any(d < 0 for d in target):
            raise MaarError(f"Reshape node {self.label(node)}: cannot reshape {source.shape} to {tuple(target)}")
        self.reshape(node, source, tuple(target))

    def op_Squeeze(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        axes = self.axes(node, attributes)
        axes = [a % len(source.shape) for a in axes] if axes else [i for i, d in enumerate(source.shape) if d == 1]
        self.reshape(node, source, tuple(d for i, d in enumerate(source.shape) if i not in axes))

    def op_Unsqueeze(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        axes = self.axes(node, attributes)
        shape = list(source.shape)
        for axis in sorted(a % (len(shape) + len(axes)) for a in axes):
            shape.insert(axis, 1)
        self.reshape(node, source, tuple(shape))

    def op_Transpose(self, node, computed, attributes) -> None:
        source = self.tensor(computed[0])
        perm = [int(p) for p in attributes.get("perm", list(reversed(range(len(source.shape)))))]
        shape = tuple(source.shape[p] for p in perm)
        moved = [p for p in perm if source.shape[p] != 1]
        if moved == sorted(moved):        # only dimensions of size 1 move: the data order is kept
            self.reshape(node, source, shape)
        elif _example_shape(source.shape) != tuple(source.shape) and perm[0] == 0 and len(shape) >= 2:
            self.emit(node, Transpose(tuple(p - 1 for p in perm[1:])), source, shape=shape)
        elif _example_shape(source.shape) == tuple(source.shape) and _example_shape(shape) == shape:
            self.emit(node, Transpose(tuple(perm)), source, shape=shape)
        else:
            raise MaarError(f"Transpose node {self.label(node)}: moving the batch dimension is not supported")

    # -- helpers ------------------------------------------------------------------------------------------
    def reshape(self, node: onnx.NodeProto, source: _Computed, shape: tuple[int, ...]) -> None:
        if _example_shape(shape) == source.example:
            self.computed[node.output[0]] = _Computed(source.node, shape, nonnegative=source.nonnegative)
        else:
            self.emit(node, Reshape(_example_shape(shape)), source, shape=shape, nonnegative=source.nonnegative)

    def axes(self, node: onnx.NodeProto, attributes: dict) -> list[int]:
        given = self.constant(node, 1)
        return [int(a) for a in (given if given is not None else attributes.get("axes", []))]

    def require_image(self, node: onnx.NodeProto, source: _Computed) -> None:
        if len(source.shape) != 4 or source.shape[0] != 1:
            raise MaarError(f"{node.op_type} node {self.label(node)}: only 2-D images [1, C, H, W] are supported, "
                            f"got shape {source.shape}")

    def pair(self, node: onnx.NodeProto, attributes: dict, name: str,
             default: tuple[int, int] = (1, 1)) -> tuple[int, int]:
        """A 2-D op's attribute of two whole numbers (kernel_shape, strides, dilations)."""
        values = [int(v) for v in attributes.get(name, default)]
        if len(values) != 2:
            raise MaarError(f"{node.op_type} node {self.label(node)}: {name} {values} is not a pair (2-D ops only)")
        return values[0], values[1]

    def symmetric_pads(self, node: onnx.NodeProto, source: _Computed, attributes: dict) -> tuple[int, int]:
        """The op's own pads plus a pending zero Pad, as torch's symmetric (rows, columns) padding."""
        auto_pad = attributes.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad not in ("NOTSET", "VALID"):
            raise MaarError(f"{node.op_type} node {self.label(node)}: auto_pad={auto_pad} is not supported; "
                            "export with explicit pads")
        own = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
        extra = source.pads or (0, 0, 0, 0)
        top, left, bottom, right = own[0] + extra[0], own[1] + extra[1], own[2] + extra[2], own[3] + extra[3]
        if top != bottom or left != right:
            raise MaarError(f"{node.op_type} node {self.label(node)}: asymmetric padding "
                            f"({top}, {left}, {bottom}, {right}) is not supported")
        return top, left

    def require_floor_mode(self, node: onnx.NodeProto, attributes: dict, pool: nn.AvgPool2d | nn.MaxPool2d,
                           source: _Computed) -> None:
        if not attributes.get("ceil_mode", 0):
            return
        floor = pool(torch.zeros(1, *self.nodes[source.node].shape)).shape
        pool.ceil_mode = True
        ceil = pool(torch.zeros(1, *self.nodes[source.node].shape)).shape
        pool.ceil_mode = False
        if floor != ceil:
            raise MaarError(f"{node.op_type} node {self.label(node)}: ceil_mode=1 is not supported")

    # -- the LayerGraph -----------------------------------------------------------------------------------
    def assemble(self, output: int, input_shape: tuple[int, ...]) -> LayerGraph:
        input_order = fold_transposes(self.nodes, self.consumers(output))
        consumers = self.consumers(output)
        alias = list(range(len(self.nodes)))
        for index, node in enumerate(self.nodes):
            node.inputs = [alias[i] for i in node.inputs]
            if isinstance(node.module, ElementwiseAffine):
                alias[index] = self.place_affine(index, consumers)
        output = self.simplify_reshapes(alias[output])
        keep = self.ancestors(output)
        renumber = {old: new for new, old in enumerate(keep)}
        nodes, layers = [], []
        for old in keep:
            node = self.nodes[old]
            module_index = None
            if node.module is not None:
                layers.append(node.module)
                module_index = len(layers) - 1
            nodes.append(GraphNode(node.name, tuple(renumber[i] for i in node.inputs), node.shape, module_index))
        graph = LayerGraph(nodes, layers, input_shape,
                           None if input_order is None else torch.as_tensor(input_order)).eval()
        graph.requires_grad_(False)
        return graph

    def simplify_reshapes(self, output: int) -> int:
        """Move each Reshape that feeds only a ReLU after it (auto_LiRPA 0.3 optimises ReLUs on vectors and
        images only), then merge chains of Reshapes; returns the output node."""
        consumers = self.consumers(output)
        for node in self.nodes:
            if not node.inputs:
                continue
            source = node.inputs[0]
            if isinstance(node.module, nn.ReLU) and isinstance(self.nodes[source].module, Reshape) \
                    and consumers[source] == 1:
                reshape = self.nodes[source]
                relu_shape = self.nodes[reshape.inputs[0]].shape
                reshape.module, node.module = node.module, reshape.module
                reshape.shape, reshape.name, node.name = relu_shape, node.name, reshape.name
        alias = list(range(len(self.nodes)))
        consumers = self.consumers(output)
        for index, node in enumerate(self.nodes):
            node.inputs = [alias[i] for i in node.inputs]
            if isinstance(node.module, Reshape):
                source = node.inputs[0]
                if isinstance(self.nodes[source].module, Reshape) and consumers[source] == 1:
                    node.inputs = list(self.nodes[source].inputs)
                if self.nodes[node.inputs[0]].shape == node.shape:
                    alias[index] = node.inputs[0]
        return alias[output]

    def consumers(self, output: int) -> list[int]:
        """How often each node is read by the nodes the output depends on (and by the output itself)."""
        counts = [0] * len(self.nodes)
        for index in self.ancestors(output):
            for i in self.nodes[index].inputs:
                counts[i] += 1
        counts[output] += 1
        return counts

    def ancestors(self, output: int) -> list[int]:
        needed, stack = {0, output}, [output]
        while stack:
            for i in self.nodes[stack.pop()].inputs:
                if i not in needed:
                    needed.add(i)
                    stack.append(i)
        return sorted(needed)

    def place_affine(self, index: int, consumers: list[int]) -> int:
        """Fold the ElementwiseAffine node into its producer, or turn it into a module auto_LiRPA 0.3 bounds;
        returns the node that now stands for its output."""
        node = self.nodes[index]
        assert isinstance(node.module, ElementwiseAffine)
        scale, shift = node.module.scale, node.module.shift
        producer = self.nodes[node.inputs[0]]
        if isinstance(producer.module, ElementwiseAffine) and consumers[node.inputs[0]] == 1:
            inner_shift = producer.module.shift
            combined = scale * inner_shift if inner_shift is not None else None
            shift = combined if shift is None else (shift if combined is None else shift + combined)
            scale = scale * producer.module.scale
            node.inputs = list(producer.inputs)
            producer = self.nodes[node.inputs[0]]
        per_channel = len(node.shape) == 3 and _constant_over_space(scale) and \
            (shift is None or _constant_over_space(shift))
        base = node.inputs[0]
        while isinstance(self.nodes[base].module, Reshape) and consumers[base] == 1:
            base = self.nodes[base].inputs[0]      # a reshape keeps the data order: fold through it
        layer, shape = self.nodes[base].module, self.nodes[base].shape
        if consumers[base] == 1 and consumers[node.inputs[0]] == 1 and (
                (isinstance(layer, nn.Linear) and len(shape) == 1)
                or (isinstance(layer, nn.Conv2d) and _constant_over_space(scale.reshape(shape))
                and (shift is None or _constant_over_space(shift.reshape(shape))))):
            _fold_into(layer, scale.reshape(shape), None if shift is None else shift.reshape(shape))
            return node.inputs[0]
        if bool((scale == 1).all()) and (shift is None or bool((shift == 0).all())):
            return node.inputs[0]
        module: nn.Module
        if per_channel:
            channels = node.shape[0]
            conv = nn.Conv2d(channels, channels, 1, bias=True)
            assert conv.bias is not None  # bias=True
            with torch.no_grad():
                conv.weight.copy_(torch.diag(scale[:, 0, 0]).reshape(channels, channels, 1, 1))
                conv.bias.copy_(torch.zeros(channels) if shift is None else shift[:, 0, 0])
            module = conv
        elif shift is None or bool((shift == 0).all()):
            module = ElementwiseAffine(scale)
        elif len(node.shape) == 1 and node.shape[0] <= MAX_DIAGONAL_LINEAR:
            module = _linear(torch.diag(scale).double().numpy(), shift.double().numpy())
        else:
            raise MaarError(f"node {node.name}: adding a per-element constant to a tensor of shape {node.shape} that "
                            "no Linear or Conv produces is not supported")
        node.module = module
        return index


def _constant_over_space(values: Tensor) -> bool:
    return bool((values == values[:, :1, :1]).all())


def _fold_into(layer: nn.Linear | nn.Conv2d, scale: Tensor, shift: Tensor | None) -> None:
    """``scale * layer(x) + shift`` as one layer: scale its weight rows and bias, add the shift to the bias."""
    factor = scale.reshape(-1) if isinstance(layer, nn.Linear) else scale[:, 0, 0]
    offset = None if shift is None else (shift.reshape(-1) if isinstance(layer, nn.Linear) else shift[:, 0, 0])
    if layer.bias is None:
        layer.bias = nn.Parameter(torch.zeros(layer.weight.shape[0]), requires_grad=False)
    with torch.no_grad():
        layer.weight.mul_(factor.reshape(-1, *([1] * (layer.weight.dim() - 1))))
        layer.bias.mul_(factor)
        if offset is not None:
            layer.bias.add_(offset)


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(_float_tensor(weight))
        layer.bias.copy_(_float_tensor(bias))
    return layer
