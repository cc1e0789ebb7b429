"""The dense form of a LayerGraph that is a chain of layers: float64 affine maps between its ReLUs.

The LP and MILP stages need every affine segment between two ReLUs as a matrix. A segment is
evaluated in float64 on the zero vector and the unit basis (a batch of n+1 inputs), giving ``W`` and
``b`` exactly up to float64 rounding. Only graphs whose nodes form one chain (no residual
connection, no rewritten MaxPool) have this form, and only small ones are worth it: a segment whose
basis batch would exceed ``max_entries`` values gives no dense form (branch and bound decides
those networks instead).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.verification.graph import LayerGraph
from maar_plugin.verification.network import AffineLayer, ReluNetwork
from maar_plugin.verification.onnx_graph import load_onnx_graph

MAX_DENSE_ENTRIES = 20_000_000


def dense_network(graph: LayerGraph, max_entries: int = MAX_DENSE_ENTRIES) -> ReluNetwork | None:
    """The graph as a ReluNetwork, or None when it is not a chain or a segment is too large."""
    nodes = graph.nodes
    if any(node.inputs != (index - 1,) for index, node in enumerate(nodes[1:], start=1)):
        return None
    relus = set(graph.relu_indices())
    boundaries = [0] + sorted(relus) + [len(nodes) - 1]
    for start, end in zip(boundaries[:-1], boundaries[1:]):
        width = graph.num_inputs if start == 0 else _size(nodes[start].shape)
        if (width + 1) * max(_size(nodes[i].shape) for i in range(start, end + 1)) > max_entries:
            return None
    exact = copy.deepcopy(graph).double()
    layers: list[AffineLayer] = []
    value = _basis(nodes[0].shape)
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


def load_onnx_network(path: str | Path) -> ReluNetwork:
    """An ONNX file's dense form; a MaarError if it has none (see :func:`dense_network`)."""
    network = dense_network(load_onnx_graph(path))
    if network is None:
        raise MaarError(f"{path}: the network is not a chain of layers small enough for the dense form")
    return network


def _size(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


def _basis(shape: tuple[int, ...]) -> torch.Tensor:
    size = _size(shape)
    basis = torch.cat([torch.zeros(1, size, dtype=torch.float64), torch.eye(size, dtype=torch.float64)])
    return basis.reshape(size + 1, *shape)


def _affine(value: torch.Tensor) -> AffineLayer:
    flat = value.reshape(value.shape[0], -1)
    bias = flat[0]
    weight = (flat[1:] - bias).T
    return AffineLayer(weight.contiguous().numpy(), bias.numpy().copy())
