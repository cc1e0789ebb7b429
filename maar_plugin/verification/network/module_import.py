"""Convert a torch ``nn.Sequential`` classifier straight into a :class:`LayerGraph`, without an ONNX file.

The module is first brought into the form ``maar export`` writes to ONNX
(:func:`~maar_plugin.export.onnx_export.exportable`: BatchNorm folded into the Conv2d or Linear before it,
:class:`~maar_plugin.models.Normalize` as a depthwise 1×1 convolution), so that the graph equals the one
the ONNX converter builds from the exported file, weight for weight, and the cascade decides the same
instances the same way. Nested ``nn.Sequential`` containers are flattened; ``nn.Identity`` and
``nn.Dropout`` (the identity in eval mode) are dropped. Any other module is a one-line MaarError naming
it, raised before any bound is computed.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.export.onnx_export import exportable
from maar_plugin.models import Normalize
from maar_plugin.verification.network.layers import GraphNode, LayerGraph, Reshape

_DROPPED = (nn.Identity, nn.Dropout)
_ACTIVATIONS = (nn.ReLU, nn.Sigmoid, nn.Tanh)
_KINDS = (Normalize, nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten, nn.AvgPool2d, *_ACTIVATIONS,
          *_DROPPED)
SUPPORTED = "Normalize, Conv2d, Linear, BatchNorm1d/2d (after a Linear/Conv2d), ReLU, Sigmoid, Tanh, Flatten, " \
            "AvgPool2d (unpadded), Identity, Dropout, nested Sequential"


def module_graph(model: nn.Module, input_shape: tuple[int, ...]) -> LayerGraph:
    """``model`` (an ``nn.Sequential``) for inputs of per-example shape ``input_shape`` as a LayerGraph:
    float32, on the CPU, eval mode; the model itself is not changed."""
    if not isinstance(model, nn.Sequential):
        raise MaarError(f"the model must be an nn.Sequential of layers ({SUPPORTED}), got {type(model).__name__}")
    layers = _flattened(model)
    for index, layer in enumerate(layers):
        if type(layer) not in _KINDS:
            raise MaarError(f"unsupported module {type(layer).__name__} (layer {index}); supported: {SUPPORTED}")
    prepared = exportable(nn.Sequential(*copy.deepcopy(layers))).float()
    shape = tuple(int(d) for d in input_shape)
    nodes = [GraphNode("input", (), shape, None)]
    modules: list[nn.Module] = []
    for index, layer in enumerate(prepared):
        converted = _converted(layer, shape, index)
        if converted is None:
            continue
        try:
            with torch.no_grad():
                shape = tuple(converted.eval()(torch.zeros(1, *shape)).shape[1:])
        except RuntimeError as error:   # torch's message for a weight that does not fit the input
            raise MaarError(f"layer {index} ({type(layer).__name__}) cannot read an input of shape {shape} "
                            f"({str(error).splitlines()[0]})") from None
        nodes.append(GraphNode(f"{index}:{type(layer).__name__}", (len(nodes) - 1,), shape, len(modules)))
        modules.append(converted)
    if len(nodes) == 1:
        raise MaarError("the model has no layers")
    graph = LayerGraph(nodes, modules, (1, *input_shape)).eval()
    graph.requires_grad_(False)
    return graph


def _flattened(model: nn.Sequential) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for layer in model:
        layers += _flattened(layer) if isinstance(layer, nn.Sequential) else [layer]
    return layers


def _converted(layer: nn.Module, shape: tuple[int, ...], index: int) -> nn.Module | None:
    """The graph's module for one layer of the exportable model reading a tensor of ``shape`` (None: dropped)."""
    where = f"layer {index} ({type(layer).__name__})"
    if isinstance(layer, _DROPPED):
        return None
    if isinstance(layer, _ACTIVATIONS):
        return type(layer)()
    if isinstance(layer, nn.Flatten):
        with torch.no_grad():
            return Reshape(tuple(layer(torch.zeros(1, *shape)).shape[1:]))
    if isinstance(layer, nn.Linear):
        if len(shape) != 1:
            raise MaarError(f"{where} reads a tensor of shape {shape}; flatten it first (a Linear of a vector only)")
        return layer
    if len(shape) != 3:
        raise MaarError(f"{where} reads a tensor of shape {shape}; only images [C, H, W] are supported there")
    if isinstance(layer, nn.Conv2d):
        return _zero_padded(layer, where)
    if isinstance(layer, nn.AvgPool2d):
        if layer.padding not in (0, (0, 0)) or layer.ceil_mode:
            raise MaarError(f"{where}: only AvgPool2d without padding and with ceil_mode=False is supported")
        return layer
    raise MaarError(f"{where} is not supported; supported: {SUPPORTED}")


def _zero_padded(conv: nn.Conv2d, where: str) -> nn.Conv2d:
    """The convolution with explicit symmetric zero padding (a string padding resolved)."""
    if conv.padding_mode != "zeros":
        raise MaarError(f"{where}: padding_mode={conv.padding_mode!r} is not supported (zero padding only)")
    if conv.padding == "valid":
        conv.padding = (0, 0)
    elif conv.padding == "same":
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(total % 2 for total in totals):
            raise MaarError(f"{where}: padding='same' is asymmetric for this kernel; give the padding explicitly")
        conv.padding = tuple(total // 2 for total in totals)
    return conv
