"""Convert an ONNX graph of affine ops and ReLUs into a :class:`ReluNetwork` of dense float64 matrices.

Our own converter instead of onnx2torch: auto_LiRPA 0.3 traces models with torch.jit, which an fx
GraphModule of onnx2torch does not reliably survive, and the MILP needs the affine maps as matrices
anyway. Between two ReLUs every supported op is affine in the one computed tensor, so the segment is
evaluated in float64 on the zero vector and the unit basis (a batch of n+1 inputs), giving ``W`` and
``b`` exactly up to float64 rounding. Constant subgraphs (Shape → Gather → Concat → Reshape, as
``torch.onnx.export`` writes ``x.view(x.size(0), -1)``) are folded with onnx's reference evaluator.
Dense maps suit MNIST-scale networks; a segment over ``MAX_SEGMENT_ENTRIES`` entries is refused.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.reference
import torch
import torch.nn.functional as F
from torch import Tensor

from maar_plugin.errors import MaarError
from maar_plugin.verification.network import AffineLayer, ReluNetwork

MAX_SEGMENT_ENTRIES = 60_000_000
_PASS_THROUGH = {"Identity", "Dropout"}
_SUPPORTED = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Neg", "Conv", "BatchNormalization", "AveragePool",
              "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Cast", "Relu",
              "Shape", "Constant"} | _PASS_THROUGH


def load_onnx_network(path: str | Path) -> ReluNetwork:
    """Read an ONNX file into a ReluNetwork; any unsupported construct is a one-line MaarError."""
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise MaarError(f"{path}: no such ONNX file") from None
    except Exception as error:  # onnx raises DecodeError and others for malformed files
        raise MaarError(f"{path}: not a readable ONNX model ({type(error).__name__})") from None
    try:
        return _Converter(model.graph).convert()
    except MaarError as error:
        raise MaarError(f"{path}: {error}") from None


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


class _Converter:
    """Walks the (topologically sorted) nodes, folding constants and pushing the basis batch through."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.constants: dict[str, np.ndarray] = {
            tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in graph.initializer}
        self.computed: dict[str, tuple[int, Tensor]] = {}  # name -> (segment index, basis-batch value)
        self.layers: list[AffineLayer] = []
        self.segment_input: Tensor | None = None

    def convert(self) -> ReluNetwork:
        inputs = [value for value in self.graph.input if value.name not in self.constants]
        if len(inputs) != 1:
            raise MaarError(f"expected one network input, found {len(inputs)}")
        if len(self.graph.output) != 1:
            raise MaarError(f"expected one network output, found {len(self.graph.output)}")
        dims = inputs[0].type.tensor_type.shape.dim
        input_shape = tuple(dim.dim_value if dim.dim_value > 0 else 1 for dim in dims)
        self.start_segment(inputs[0].name, input_shape)
        for node in self.graph.node:
            self.convert_node(node)
        output = self.graph.output[0].name
        if output not in self.computed or self.computed[output][0] != len(self.layers):
            raise MaarError("the network output is not computed from the input by a chain of supported ops")
        self.end_segment(self.computed[output][1])
        return ReluNetwork(tuple(self.layers), input_shape)

    def start_segment(self, name: str, shape: tuple[int, ...]) -> None:
        size = int(np.prod(shape))
        basis = torch.cat([torch.zeros(1, size, dtype=torch.float64), torch.eye(size, dtype=torch.float64)])
        self.computed[name] = (len(self.layers), basis.reshape(size + 1, *shape))

    def end_segment(self, value: Tensor) -> None:
        flat = value.reshape(value.shape[0], -1)
        bias = flat[0]
        weight = (flat[1:] - bias).T
        self.layers.append(AffineLayer(weight.contiguous().numpy(), bias.numpy().copy()))

    def convert_node(self, node: onnx.NodeProto) -> None:
        names = [name for name in node.input if name]
        computed = [name for name in names if name not in self.constants]
        if node.op_type not in _SUPPORTED:
            raise MaarError(f"unsupported ONNX op {node.op_type} (node {node.name or node.output[0]}); "
                            "supported: affine ops (Gemm, MatMul, Conv, BatchNormalization, AveragePool, "
                            "Add/Sub/Mul/Div by constants, reshapes) and Relu")
        if not computed:
            self.fold_constant(node)
            return
        if len(computed) > 1:
            raise MaarError(f"{node.op_type} node {node.name or node.output[0]} combines two computed tensors "
                            "(branches, residual connections and products are not supported)")
        if computed[0] not in self.computed:
            raise MaarError(f"{node.op_type} node reads {computed[0]!r}, which no earlier node computes")
        segment, value = self.computed[computed[0]]
        if segment != len(self.layers):
            raise MaarError(f"{node.op_type} node reads a tensor from before a later ReLU "
                            "(skip connections are not supported)")
        if node.op_type == "Shape":
            self.constants[node.output[0]] = np.array(value.shape[1:], dtype=np.int64)
            return
        if node.op_type == "Relu":
            self.end_segment(value)
            self.start_segment(node.output[0], tuple(value.shape[1:]))
            return
        result = self.apply(node, value, computed[0], _attributes(node))
        self.computed[node.output[0]] = (segment, result)
        if result.numel() > MAX_SEGMENT_ENTRIES:
            raise MaarError(f"layer {node.op_type} is too large for the dense affine representation "
                            f"({result.numel()} entries > {MAX_SEGMENT_ENTRIES})")

    def fold_constant(self, node: onnx.NodeProto) -> None:
        feeds = {name: self.constants[name] for name in node.input if name}
        try:
            outputs = onnx.reference.ReferenceEvaluator(node).run(None, feeds)
        except Exception as error:  # the reference evaluator's errors vary by op
            raise MaarError(f"cannot evaluate constant {node.op_type} node ({type(error).__name__}: {error})") from None
        for name, output in zip(node.output, outputs):
            self.constants[name] = np.asarray(output)

    def constant(self, node: onnx.NodeProto, index: int) -> np.ndarray | None:
        if index >= len(node.input) or not node.input[index]:
            return None
        return self.constants.get(node.input[index])

    def apply(self, node: onnx.NodeProto, x: Tensor, name: str, attributes: dict) -> Tensor:
        """The op on the basis batch x [n+1, *onnx_shape]; the leading dimension is never mixed."""
        op = node.op_type
        shape = tuple(x.shape[1:])
        if op in _PASS_THROUGH or op == "Cast":
            if op == "Cast" and attributes.get("to") not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
                raise MaarError("Cast of the computed tensor to a non-float type is not supported")
            return x
        if op == "Neg":
            return -x
        if op in ("Add", "Sub", "Mul", "Div"):
            return self.elementwise(op, x, name == node.input[0], self.other_constant(node, name))
        if op == "MatMul":
            return self.matmul(x, name == node.input[0], self.other_constant(node, name))
        if op == "Gemm":
            return self.gemm(node, x, name, attributes)
        if op == "Flatten":
            axis = int(attributes.get("axis", 1)) % max(len(shape), 1)
            return x.reshape(x.shape[0], int(np.prod(shape[:axis])), int(np.prod(shape[axis:])))
        if op == "Reshape":
            return x.reshape(x.shape[0], *self.reshape_target(shape, self.constants[node.input[1]], attributes))
        if op == "Transpose":
            perm = attributes.get("perm", list(reversed(range(len(shape)))))
            return x.permute(0, *[int(axis) + 1 for axis in perm])
        if op in ("Squeeze", "Unsqueeze"):
            return self.squeeze(op, node, x, shape, attributes)
        if op == "Conv":
            return self.conv(node, x, attributes)
        if op == "BatchNormalization":
            scale, bias, mean, variance = (torch.from_numpy(np.array(self.constants[n], dtype=np.float64))
                                           for n in node.input[1:5])
            factor = scale / torch.sqrt(variance + float(attributes.get("epsilon", 1e-5)))
            view = (1, -1) + (1,) * (len(shape) - 2)
            return x * factor.reshape(view) + (bias - mean * factor).reshape(view)
        if op in ("AveragePool", "GlobalAveragePool"):
            return self.average_pool(op, x, attributes)
        raise MaarError(f"unsupported use of ONNX op {op}")

    def other_constant(self, node: onnx.NodeProto, name: str) -> Tensor:
        other = node.input[1] if node.input[0] == name else node.input[0]
        return torch.from_numpy(np.array(self.constants[other], dtype=np.float64))

    @staticmethod
    def elementwise(op: str, x: Tensor, computed_first: bool, constant: Tensor) -> Tensor:
        rank = max(x.dim() - 1, constant.dim())
        x = x.reshape(x.shape[0], *([1] * (rank - (x.dim() - 1))), *x.shape[1:])
        if op == "Add":
            return x + constant
        if op == "Mul":
            return x * constant
        if op == "Sub":
            return x - constant if computed_first else constant - x
        if not computed_first:
            raise MaarError("Div by a computed tensor is not affine")
        return x / constant

    @staticmethod
    def matmul(x: Tensor, computed_first: bool, constant: Tensor) -> Tensor:
        if constant.dim() != 2:
            raise MaarError(f"MatMul with a {constant.dim()}-D constant is not supported")
        if computed_first:
            return torch.matmul(x, constant)
        if x.dim() == 2:  # W @ v for a 1-D v
            return torch.matmul(x, constant.T)
        return torch.matmul(constant, x)

    def gemm(self, node: onnx.NodeProto, x: Tensor, name: str, attributes: dict) -> Tensor:
        if node.input[0] != name:
            raise MaarError("Gemm with a computed second operand is not supported")
        if x.dim() != 3:
            raise MaarError(f"Gemm expects a 2-D input, got shape {tuple(x.shape[1:])}")
        if attributes.get("transA", 0):
            x = x.transpose(1, 2)
        weight = torch.from_numpy(np.array(self.constants[node.input[1]], dtype=np.float64))
        if attributes.get("transB", 0):
            weight = weight.T
        result = float(attributes.get("alpha", 1.0)) * torch.matmul(x, weight)
        bias = self.constant(node, 2)
        if bias is not None:
            result = result + float(attributes.get("beta", 1.0)) * torch.from_numpy(np.array(bias, dtype=np.float64))
        return result

    @staticmethod
    def reshape_target(shape: tuple[int, ...], target: np.ndarray, attributes: dict) -> list[int]:
        resolved = [int(d) for d in target]
        if not attributes.get("allowzero", 0):
            resolved = [shape[i] if d == 0 else d for i, d in enumerate(resolved)]
        if -1 in resolved:
            known = int(np.prod([d for d in resolved if d != -1]))
            resolved[resolved.index(-1)] = int(np.prod(shape)) // max(known, 1)
        if int(np.prod(resolved)) != int(np.prod(shape)):
            raise MaarError(f"Reshape of {shape} to {tuple(int(d) for d in target)} changes the element count")
        return resolved

    def squeeze(self, op: str, node: onnx.NodeProto, x: Tensor, shape: tuple[int, ...], attributes: dict) -> Tensor:
        axes_input = self.constant(node, 1)
        axes = [int(a) for a in (axes_input if axes_input is not None else attributes.get("axes", []))]
        if op == "Squeeze":
            axes = [a % len(shape) for a in axes] or [i for i, d in enumerate(shape) if d == 1]
            return x.reshape(x.shape[0], *[d for i, d in enumerate(shape) if i not in axes])
        new_shape = list(shape)
        for axis in sorted(a % (len(shape) + len(axes)) for a in axes):
            new_shape.insert(axis, 1)
        return x.reshape(x.shape[0], *new_shape)

    def conv(self, node: onnx.NodeProto, x: Tensor, attributes: dict) -> Tensor:
        if x.dim() != 5:
            raise MaarError(f"only 2-D Conv is supported, got input shape {tuple(x.shape[1:])}")
        if attributes.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise MaarError("Conv with auto_pad is not supported; export with explicit pads")
        weight = torch.from_numpy(np.array(self.constants[node.input[1]], dtype=np.float64))
        bias = self.constant(node, 2)
        pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
        batch, images = x.shape[0], x.shape[1]
        flat = F.pad(x.reshape(batch * images, *x.shape[2:]), (pads[1], pads[3], pads[0], pads[2]))
        result = F.conv2d(flat, weight, None if bias is None else torch.from_numpy(np.array(bias, dtype=np.float64)),
                          stride=[int(s) for s in attributes.get("strides", [1, 1])],
                          dilation=[int(d) for d in attributes.get("dilations", [1, 1])],
                          groups=int(attributes.get("group", 1)))
        return result.reshape(batch, images, *result.shape[1:])

    @staticmethod
    def average_pool(op: str, x: Tensor, attributes: dict) -> Tensor:
        if x.dim() != 5:
            raise MaarError(f"only 2-D {op} is supported, got input shape {tuple(x.shape[1:])}")
        batch, images = x.shape[0], x.shape[1]
        flat = x.reshape(batch * images, *x.shape[2:])
        if op == "GlobalAveragePool":
            result = flat.mean(dim=(2, 3), keepdim=True)
        else:
            pads = [int(p) for p in attributes.get("pads", [0, 0, 0, 0])]
            if pads[0] != pads[2] or pads[1] != pads[3]:
                raise MaarError("AveragePool with asymmetric pads is not supported")
            result = F.avg_pool2d(flat, [int(k) for k in attributes["kernel_shape"]],
                                  stride=[int(s) for s in attributes.get("strides", attributes["kernel_shape"])],
                                  padding=pads[:2], ceil_mode=bool(attributes.get("ceil_mode", 0)),
                                  count_include_pad=bool(attributes.get("count_include_pad", 0)))
        return result.reshape(batch, images, *result.shape[1:])
