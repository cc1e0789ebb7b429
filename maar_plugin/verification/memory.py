"""The verifier's memory: how the limit is shared between its parts, and what a network needs.

:class:`MemoryBudget` is the one place that splits ``--memory-limit``: half for the bound stages (the
model, its per-neuron state and CROWN's intermediate bounds), a quarter for the children of one branch-
and-bound pass, a quarter for the stored domains (or input boxes). :func:`memory_plan` estimates the
bound stages' working memory on a LayerGraph before anything is bounded:

auto_LiRPA's CROWN pass bounds each activation's input by a backward pass of linear coefficients from all
of that activation's neurons at once. Through convolutions the coefficients are patches, one row of
``channels × receptive field²`` values per neuron, the receptive field growing layer by layer
backwards; after a Linear layer they are dense rows as wide as each layer. The largest
``neurons × widest row``, times a factor for the lower/upper copies and temporaries, is the full
CROWN pass's peak (dm-large: about 9 GB). Where that exceeds the limit, the CROWN and alpha-CROWN
stages take IBP's intermediate bounds and run CROWN from the specification rows only (the bounds
CROWN-IBP trains with), which needs one row set, not one per neuron. (auto_LiRPA 0.3's own
``crown_batch_size`` keeps every batch's coefficients until the end, so it does not bound the peak.)
The parameters and the per-node values and interval bounds come on top. The estimate tells a
network that fits from one that does not; it does not predict the resident size to the megabyte.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from maar_plugin.errors import MaarError
from maar_plugin.verification.network.layers import LayerGraph, Reshape, Transpose

BYTES_PER_VALUE = 4
COPIES = 6                  # lower and upper coefficients, their products with the next layer, slack
VALUES_PER_NEURON = 8       # forward values, interval and CROWN bounds, α slopes, gradients
SPEC_ROWS = 64              # rows of a specification bounded at once (all disjuncts of a property)


@dataclass(frozen=True)
class MemoryBudget:
    """Shares of ``limit`` bytes (see the module docstring)."""

    limit: float

    @property
    def bound_stages(self) -> float:
        return self.limit / 2

    @property
    def search_pass(self) -> float:
        """For the children of one branch-and-bound pass (or one batch of input boxes)."""
        return self.limit / 4

    @property
    def search_store(self) -> float:
        """For the domains (or input boxes) branch and bound keeps."""
        return self.limit / 4

    def check(self, plan: MemoryPlan, what: str) -> None:
        """A one-line MaarError when ``plan`` cannot fit the bound stages' share."""
        if plan.minimum > self.bound_stages:
            needed = plan.minimum * self.limit / self.bound_stages
            raise MaarError(f"{what}: verifying this network needs about {size_text(needed)}, over the memory limit "
                            f"of {size_text(self.limit)} (--memory-limit)")


def size_text(size: float) -> str:
    """Bytes as ``12.0 MB`` or ``1.3 GB``."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes for the parameters and per-neuron state (``fixed``), for CROWN's intermediate bounds of every
    ReLU (``intermediate``) and for one pass from the specification rows (``final``)."""

    fixed: float
    intermediate: float
    final: float

    def full_crown(self, limit: float) -> bool:
        """Whether CROWN may compute every ReLU's intermediate bounds within ``limit`` bytes."""
        return self.fixed + self.intermediate <= limit

    @property
    def minimum(self) -> float:
        """Bytes needed with IBP intermediate bounds and CROWN from the rows only."""
        return self.fixed + self.final


def memory_plan(graph: LayerGraph, patches: bool = True) -> MemoryPlan:
    """The memory estimate of ``graph`` (see the module docstring); without ``patches`` (auto_LiRPA's
    matrix mode) every coefficient row is dense."""
    parameters = sum(p.numel() for p in graph.parameters()) + sum(b.numel() for b in graph.buffers())
    neurons = sum(_size(node.shape) for node in graph.nodes)
    intermediate = max((_size(graph.nodes[relu].shape) * _widest_row(graph, graph.nodes[relu].inputs[0], patches)
                        for relu in graph.activation_indices()), default=0)
    final = SPEC_ROWS * _widest_row(graph, len(graph.nodes) - 1, patches)
    return MemoryPlan(float(BYTES_PER_VALUE * (parameters + VALUES_PER_NEURON * neurons)),
                      float(BYTES_PER_VALUE * COPIES * intermediate), float(BYTES_PER_VALUE * COPIES * final))


def _size(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


def _pair(value) -> tuple[int, int]:
    return value if isinstance(value, tuple) else (value, value)


def _widest_row(graph: LayerGraph, start: int, patches: bool) -> int:
    """The widest coefficient row of a backward pass from one neuron of node ``start`` to the input."""
    widest = 0
    # (node, receptive field, dense width: once past a Linear, or from the start in matrix mode)
    stack: list[tuple[int, int, int | None]] = [(start, 1, None if patches else _size(graph.nodes[start].shape))]
    seen: set[tuple[int, int, int | None]] = set()
    while stack:
        state = stack.pop()
        if state in seen:
            continue
        seen.add(state)
        index, field, dense = state
        shape = graph.nodes[index].shape
        if dense is not None or len(shape) != 3:
            width = dense if dense is not None else _size(shape)
        else:
            width = shape[0] * min(field, shape[1]) * min(field, shape[2])
        widest = max(widest, width)
        if index == 0:
            continue
        module = graph.module_of(index)
        for source in graph.nodes[index].inputs:
            if dense is None and isinstance(module, (nn.Conv2d, nn.AvgPool2d)):
                kernel, stride = max(_pair(module.kernel_size)), max(_pair(module.stride))
                dilation = max(_pair(getattr(module, "dilation", 1)))
                stack.append((source, (field - 1) * stride + dilation * (kernel - 1) + 1, None))
            elif dense is not None or isinstance(module, (nn.Linear, Reshape, Transpose)):
                stack.append((source, field, _size(graph.nodes[source].shape)))
            else:                        # ReLU, Add, Sub, ElementwiseAffine keep the representation
                stack.append((source, field, None))
    return widest
