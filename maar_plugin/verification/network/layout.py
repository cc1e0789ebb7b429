"""Transposes folded into the layers around them, so that auto_LiRPA meets as few as possible.

Networks exported from TensorFlow/Keras take NHWC images and transpose them (NHWC → NCHW) before the
first convolution, and back (NCHW → NHWC) before the Flatten and the first dense layer. auto_LiRPA 0.3
cannot carry patches-mode bounds through a permutation, so the converter removes such Transposes where
that is exact, rewriting its node list (each node: ``name``, ``inputs``, ``shape``, ``module``):

- a Transpose of an :class:`ElementwiseAffine` map's output (a normalisation) moves before the map, whose
  constants are permuted with it;
- a Transpose of the network input (maybe after Reshapes) is absorbed into the input: node 0 takes the
  transposed layout, and the permutation is returned as the graph's ``input_order`` (element ``i`` of
  the flattened graph input is element ``input_order[i]`` of the flattened ONNX input). Boxes then
  enter every stage through ``LayerGraph.to_graph_layout`` and bounds' input coefficients leave it
  through ``LayerGraph.to_input_order``, so the VNN-LIB box and every counterexample stay in the ONNX
  input's C order;
- a Transpose read (through Reshapes) by an ``nn.Linear`` on a vector becomes a Reshape, its permutation
  moved into the Linear's columns; one that reads a Linear's vector output (through Reshapes and
  elementwise maps: a bias Add, an activation) moves into the Linear's rows.

Each tensor on the way must have no other reader. Every other Transpose stays a :class:`Transpose` module.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from maar_plugin.verification.network.layers import S_SHAPED_MODULES, ElementwiseAffine, Reshape, Transpose

_ORDER_KEEPING = (Reshape, ElementwiseAffine, nn.ReLU, *S_SHAPED_MODULES)   # elementwise, or a reshape


class LayoutNode(Protocol):
    """A node of the converter's list: its module acts on ``inputs`` (node indices) and gives ``shape``."""

    name: str
    inputs: list[int]
    shape: tuple[int, ...]
    module: nn.Module | None


def fold_transposes(nodes: Sequence[LayoutNode], consumers: list[int]) -> np.ndarray | None:
    """Apply the rewrites of the module docstring in place; return the input order (None: unchanged).

    ``consumers[i]`` counts the readers of node ``i`` (the network output counts as one)."""
    readers: list[list[int]] = [[] for _ in nodes]
    for index, node in enumerate(nodes):
        for source in node.inputs:
            readers[source].append(index)
    order: np.ndarray | None = None
    for index, node in enumerate(nodes):
        if not isinstance(node.module, Transpose) or consumers[index] == 0:
            continue
        index = _hoist_over_affine(nodes, index, consumers)
        absorbed = _absorb_into_input(nodes, index, consumers)
        if absorbed is not None:
            order = absorbed if order is None else order[absorbed]
        elif not _fold_into_next_linear(nodes, index, consumers, readers):
            _fold_into_previous_linear(nodes, index, consumers)
    return order


def _permutation(shape: tuple[int, ...], perm: tuple[int, ...]) -> np.ndarray:
    """``P`` with ``flatten(x.permute(perm))[j] = flatten(x)[P[j]]`` for an example ``x`` of ``shape``."""
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(perm).reshape(-1)


def _hoist_over_affine(nodes: Sequence[LayoutNode], index: int, consumers: list[int]) -> int:
    """Swap the Transpose with the ElementwiseAffine maps it reads, while each has no other reader;
    returns the Transpose's new index (the swapped nodes keep their places in the list)."""
    while True:
        transpose, source = nodes[index], nodes[index].inputs[0]
        affine = nodes[source]
        elementwise = affine.module
        if not isinstance(elementwise, ElementwiseAffine) or consumers[source] != 1:
            return index
        perm = _transpose_of(transpose).perm
        scale, shift = elementwise.scale, elementwise.shift
        moved = ElementwiseAffine(scale.permute(perm), None if shift is None else shift.permute(perm))
        affine.module, affine.shape = transpose.module, transpose.shape
        transpose.module, transpose.inputs = moved, [source]
        affine.name, transpose.name = f"{transpose.name}/moved", transpose.name
        index = source


def _transpose_of(node: LayoutNode) -> Transpose:
    """The node's module, known to be a Transpose."""
    assert isinstance(node.module, Transpose)     # the rewrites are called on Transpose nodes only
    return node.module


def _through_reshapes(nodes: Sequence[LayoutNode], index: int, consumers: list[int]) -> int:
    """The first node before ``index`` (following first inputs) that is not a Reshape with one reader."""
    while isinstance(nodes[index].module, Reshape) and consumers[index] == 1:
        index = nodes[index].inputs[0]
    return index


def _absorb_into_input(nodes: Sequence[LayoutNode], index: int, consumers: list[int]) -> np.ndarray | None:
    """Absorb a Transpose of the input (through Reshapes): returns its permutation of the input's entries."""
    transpose = nodes[index]
    source = transpose.inputs[0]
    if _through_reshapes(nodes, source, consumers) != 0 or consumers[0] != 1:
        return None
    permutation = _permutation(nodes[source].shape, _transpose_of(transpose).perm)
    nodes[0].shape = transpose.shape
    transpose.module, transpose.inputs = Reshape(transpose.shape), [0]     # the identity: dropped later
    return permutation


def _fold_into_next_linear(nodes: Sequence[LayoutNode], index: int, consumers: list[int],
                           readers: list[list[int]]) -> bool:
    """Permute the columns of the Linear that reads the Transpose's output (through Reshapes) as a vector."""
    reader = index
    while consumers[reader] == 1 and len(readers[reader]) == 1:
        reader = readers[reader][0]
        if not isinstance(nodes[reader].module, Reshape):
            break
    linear = nodes[reader].module
    if reader == index or not isinstance(linear, nn.Linear) or len(nodes[nodes[reader].inputs[0]].shape) != 1:
        return False
    transpose = nodes[index]
    permutation = _permutation(nodes[transpose.inputs[0]].shape, _transpose_of(transpose).perm)
    with torch.no_grad():
        linear.weight.copy_(linear.weight[:, torch.as_tensor(np.argsort(permutation))])
    transpose.module = Reshape(transpose.shape)
    return True


def _fold_into_previous_linear(nodes: Sequence[LayoutNode], index: int, consumers: list[int]) -> bool:
    """Permute the rows of the Linear whose vector output the Transpose reads through Reshapes and
    elementwise maps (a Dense layer's bias Add, its activation); the ElementwiseAffine maps' constants too."""
    transpose = nodes[index]
    source, affines = transpose.inputs[0], []
    while consumers[source] == 1 and isinstance(nodes[source].module, _ORDER_KEEPING):
        module = nodes[source].module
        if isinstance(module, ElementwiseAffine):
            affines.append(module)
        source = nodes[source].inputs[0]
    linear = nodes[source].module
    if not isinstance(linear, nn.Linear) or len(nodes[source].shape) != 1 or consumers[source] != 1:
        return False
    rows = torch.as_tensor(_permutation(nodes[transpose.inputs[0]].shape, _transpose_of(transpose).perm))
    with torch.no_grad():
        linear.weight.copy_(linear.weight[rows])
        if linear.bias is not None:
            linear.bias.copy_(linear.bias[rows])
        for affine in affines:            # elementwise on data in the Linear's output order
            for constant in (affine.scale, affine.shift):
                if constant is not None:
                    constant.copy_(constant.reshape(-1)[rows].reshape(constant.shape))
    transpose.module = Reshape(transpose.shape)
    return True
