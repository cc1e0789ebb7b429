"""Batched α,β-CROWN lower bounds of specification rows over branch-and-bound domains of a LayerGraph.

A domain is the input box with some ReLUs fixed active (z ≥ 0) or inactive (z ≤ 0). Its bound is one
backward pass of linear relaxations (CROWN; Zhang et al. 2018) from the rows ``C`` to the input,
with every ReLU's input bounds fixed (those of the root, with each split neuron's bound moved to 0):
an unstable ReLU is relaxed from below by ``a ≥ α z`` (α ∈ [0, 1], optimised: α-CROWN, Xu et al.
2021) and from above by the chord ``a ≤ u (z − l) / (u − l)``. A split enters the bound as a
Lagrangian term (β-CROWN, Wang et al. 2021): for ``s z ≥ 0`` (s = ±1) and any β ≥ 0,
``min_D c·f ≥ min_box (c·f − β s z)``, so the backward pass subtracts ``β s`` from the coefficient of
that z, and β is optimised with α by projected gradient ascent on the bound. Every ``(row, domain)``
pair is bounded independently, all in one batched pass; the pass also gives the input point that
minimises the final linear bound (a counterexample candidate) and, per ReLU, the coefficients the
branching heuristic scores.

Sigmoid and Tanh nodes are relaxed by CROWN's tangent and chord lines over their input bounds
(:mod:`maar_plugin.bounds.activations`; their bounds are passed with the ReLUs'), never split: on a network
with them a domain with every ReLU split is not affine, and branch and bound leaves it undecided.
Concat, Narrow and the other affine modules are carried through exactly; the input coefficients leave
the pass in the ONNX input's order (``LayerGraph.to_input_order``), as the boxes are given.

Why our own pass instead of auto_LiRPA's β-CROWN: auto_LiRPA's split constraints are private state
(``sparse_beta``/``sparse_beta_loc`` in 0.3, ``SparseBeta`` objects in 0.7) with no API common to both
versions; this pass needs only the layer graph. The bound stages before branch and bound (IBP,
CROWN, α-CROWN with intermediate bounds in patches mode) stay auto_LiRPA's, and give the root bounds.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from maar_plugin.bounds.activations import s_shaped_relaxation
from maar_plugin.bounds.layers import ReluRelaxation, conv2d_backward, relu_relaxation
from maar_plugin.errors import MaarError
from maar_plugin.verification.network.layers import AFFINE_MODULES, S_SHAPED_MODULES, Add, Concat, LayerGraph, Sub

_S_SHAPED_KINDS = {nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


@dataclass
class SplitBound:
    """Result of one pass for R rows × B domains.

    ``lower`` [R, B]: lower bounds of the rows; ``primal`` [R, B, n]: the input minimising each row's
    final linear bound; ``relu_coefficients``: per ReLU node, the coefficients [R, B, *shape] of its
    output in the bound (for branching); ``magnitude`` [R, B]: the sum of absolute values of the
    terms added up into ``lower`` (scales the float32 rounding allowance); ``input_coefficients``
    [R, B, n]: the final linear bound's coefficients on the input (``lower`` is their minimum over the
    box plus a constant; with every ReLU stable the bound is the rows' exact affine map).
    """

    lower: Tensor
    primal: Tensor
    relu_coefficients: dict[int, Tensor]
    magnitude: Tensor
    input_coefficients: Tensor


@dataclass(frozen=True)
class ReluLines:
    """A ReLU's relaxation over fixed input bounds, made once for the many passes of an optimisation that
    change only the lower slopes α (``default`` has CROWN's adaptive lower slope)."""

    unstable: Tensor
    active: Tensor
    default: ReluRelaxation

    @staticmethod
    def over(lower: Tensor, upper: Tensor) -> ReluLines:
        return ReluLines((lower < 0) & (upper > 0), (lower >= 0).to(upper.dtype), relu_relaxation(lower, upper))

    def lower_slope(self, alpha: Tensor | None) -> Tensor:
        """α on the unstable neurons, the exact slope (1 or 0) on the stable ones."""
        return self.default.lower_slope if alpha is None else torch.where(self.unstable, alpha, self.active)


ActivationBounds = Mapping[int, "tuple[Tensor, Tensor] | ReluLines"]


class SplitBoundEngine:
    """Bounds of rows of a LayerGraph's output over batches of domains; see the module docstring."""

    def __init__(self, graph: LayerGraph, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        for index in range(1, len(graph.nodes)):
            module = graph.module_of(index)
            if not isinstance(module, (*AFFINE_MODULES, *S_SHAPED_MODULES, nn.ReLU)):
                raise MaarError(f"branch and bound does not support {type(module).__name__} (node "
                                f"{graph.nodes[index].name})")
        self.graph = _copy_to(graph, dtype, device)
        self.dtype, self.device = dtype, torch.device(device)
        self.relus = self.graph.relu_indices()
        self.relu_inputs = {index: self.graph.nodes[index].inputs[0] for index in self.relus}
        self.s_shaped = {index: _S_SHAPED_KINDS[type(self.graph.module_of(index))]
                         for index in self.graph.activation_indices() if index not in self.relus}
        with torch.no_grad():
            self.constants = {index: self._constant_part(index) for index in range(1, len(self.graph.nodes))
                              if index not in self.relus and index not in self.s_shaped
                              and len(self.graph.nodes[index].inputs) == 1}

    def _constant_part(self, index: int) -> Tensor:
        """The node's output for a zero input: its affine map's constant, [1, *shape]."""
        node = self.graph.nodes[index]
        source = self.graph.nodes[node.inputs[0]]
        zeros = torch.zeros(1, *source.shape, dtype=self.dtype, device=self.device)
        return self.graph.module_of(index)(zeros)

    def forward(self, x: Tensor) -> Tensor:
        """Outputs [batch, num_outputs] of flat inputs, in the engine's dtype."""
        return self.graph(x.to(self.dtype))

    def lines(self, relu_bounds: ActivationBounds) -> dict[int, tuple[Tensor, Tensor] | ReluLines]:
        """``relu_bounds`` with each ReLU's (l, u) replaced by its :class:`ReluLines`, for passes that reuse them."""
        return {index: ReluLines.over(*bounds) if index in self.relu_inputs and isinstance(bounds, tuple) else bounds
                for index, bounds in relu_bounds.items()}

    def bound(self, C: Tensor, lower: Tensor, upper: Tensor, relu_bounds: ActivationBounds,
              alphas: dict[int, Tensor] | None = None, betas: dict[int, Tensor] | None = None,
              split_signs: dict[int, Tensor] | None = None, start: int | None = None) -> SplitBound:
        """Lower bounds of ``C @ node(start)`` (default: the output) for every row and domain.

        ``C`` [R, B, *start_shape]; ``lower``/``upper`` [B, n] input boxes; ``relu_bounds`` maps each
        ReLU node to (l, u) [B, *shape] of its input, split neurons already clamped at 0 (or to their
        :class:`ReluLines`, see :meth:`lines`), and each Sigmoid
        or Tanh node to its input bounds ([B or 1, *shape]). ``alphas``
        (lower-relaxation slopes) and ``betas`` (≥ 0) are [R, B, *shape] per ReLU; ``split_signs``
        [B, *shape] per ReLU: +1 active split, −1 inactive split, 0 none. Without ``alphas`` the slope
        is CROWN's (:func:`~maar_plugin.bounds.layers.adaptive_lower_slope`). Nodes after ``start`` are ignored.
        """
        nodes = self.graph.nodes
        start = len(nodes) - 1 if start is None else start
        rows, batch = C.shape[0], C.shape[1]
        coefficients: dict[int, Tensor] = {start: C.to(self.dtype)}
        constant = torch.zeros(rows, batch, dtype=self.dtype, device=self.device)
        magnitude = torch.zeros_like(constant)
        relu_coefficients: dict[int, Tensor] = {}
        for index in range(start, 0, -1):
            A = coefficients.pop(index, None)
            if A is None:
                continue
            node = nodes[index]
            if index in self.relu_inputs:
                relu_coefficients[index] = A
                lines = relu_bounds[index]
                lines = lines if isinstance(lines, ReluLines) else ReluLines.over(*lines)
                alpha = None if alphas is None else alphas.get(index)
                A_in, bias = _relu_backward(A, lines, alpha)
                if betas is not None and index in betas:
                    assert split_signs is not None, "betas come with split_signs"
                    A_in = A_in - betas[index] * split_signs[index].to(self.dtype)
                constant = constant + bias
                magnitude = magnitude + bias.abs()
                _accumulate(coefficients, node.inputs[0], A_in)
                continue
            if index in self.s_shaped:
                bounds = relu_bounds[index]
                assert isinstance(bounds, tuple), "Sigmoid/Tanh bounds are (l, u)"
                A_in, bias = s_shaped_relaxation(self.s_shaped[index], *bounds).backward(A)
                constant = constant + bias
                magnitude = magnitude + bias.abs()
                _accumulate(coefficients, node.inputs[0], A_in)
                continue
            module = self.graph.module_of(index)
            if isinstance(module, (Add, Sub)):
                _accumulate(coefficients, node.inputs[0], A)
                _accumulate(coefficients, node.inputs[1], A if isinstance(module, Add) else -A)
                continue
            if isinstance(module, Concat):
                sizes = [nodes[source].shape[module.dim] for source in node.inputs]
                for source, part in zip(node.inputs, A.split(sizes, dim=module.dim + 2)):
                    _accumulate(coefficients, source, part)
                continue
            term = (A * self.constants[index]).flatten(2).sum(-1)
            constant = constant + term
            magnitude = magnitude + (A * self.constants[index]).abs().flatten(2).sum(-1)
            source_shape = nodes[node.inputs[0]].shape
            _accumulate(coefficients, node.inputs[0], _transpose(module, A, source_shape))
        A_x = self.graph.to_input_order(coefficients.pop(0).reshape(rows, batch, -1))
        centre, radius = (upper + lower) / 2, (upper - lower) / 2
        centre, radius = centre.to(self.dtype), radius.to(self.dtype)
        value = (A_x * centre).sum(-1) - (A_x.abs() * radius).sum(-1)
        magnitude = magnitude + (A_x.abs() * torch.maximum(lower.abs(), upper.abs()).to(self.dtype)).sum(-1)
        primal = torch.where(A_x >= 0, lower.to(self.dtype), upper.to(self.dtype))
        return SplitBound(value + constant, primal, relu_coefficients, magnitude, A_x)

    def intermediate_bounds(self, lower: Tensor, upper: Tensor) -> dict[int, tuple[Tensor, Tensor]]:
        """CROWN bounds of every activation's (ReLU, Sigmoid, Tanh) input over the boxes [B, n], layer by
        layer (dense: small networks)."""
        bounds: dict[int, tuple[Tensor, Tensor]] = {}
        batch = lower.shape[0]
        for activation in sorted([*self.relus, *self.s_shaped]):
            source = self.graph.nodes[activation].inputs[0]
            shape = self.graph.nodes[source].shape
            size = int(torch.Size(shape).numel())
            identity = torch.eye(size, dtype=self.dtype, device=self.device).reshape(size, 1, *shape)
            C = torch.cat([identity, -identity]).expand(2 * size, batch, *shape)
            with torch.no_grad():
                result = self.bound(C, lower, upper, bounds, start=source)
            low = result.lower[:size].T.reshape(batch, *shape)
            up = -result.lower[size:].T.reshape(batch, *shape)
            bounds[activation] = (low, torch.maximum(up, low))
        return bounds


def _relu_backward(A: Tensor, lines: ReluLines, alpha: Tensor | None) -> tuple[Tensor, Tensor]:
    """Coefficients on the ReLU's input and the constant term, for a lower bound of ``A · relu(z)``."""
    A_positive, A_negative = A.clamp(min=0), A.clamp(max=0)
    A_in = A_positive * lines.lower_slope(alpha) + A_negative * lines.default.upper_slope
    bias = (A_negative * lines.default.upper_intercept).flatten(2).sum(-1)
    return A_in, bias


def _transpose(module: nn.Module, A: Tensor, source_shape: tuple[int, ...]) -> Tensor:
    """``A`` [R, B, *out] times the Jacobian of the module's linear part: [R, B, *source_shape]."""
    rows, batch = A.shape[0], A.shape[1]
    flat = A.reshape(rows * batch, *A.shape[2:])
    if isinstance(module, nn.Linear):
        result = flat @ module.weight
    elif isinstance(module, nn.Conv2d):
        result = conv2d_backward(module, flat, source_shape[1:])
    else:
        with torch.enable_grad():
            probe = torch.zeros(rows * batch, *source_shape, dtype=A.dtype, device=A.device, requires_grad=True)
            (result,) = torch.autograd.grad(module(probe), probe, flat, create_graph=flat.requires_grad)
    return result.reshape(rows, batch, *source_shape)


def _accumulate(coefficients: dict[int, Tensor], index: int, A: Tensor) -> None:
    coefficients[index] = A if index not in coefficients else coefficients[index] + A


def _copy_to(graph: LayerGraph, dtype: torch.dtype, device: str | torch.device) -> LayerGraph:
    """A frozen copy of the graph in ``dtype`` on ``device`` (the caller's graph is left as it is)."""
    clone = copy.deepcopy(graph).to(device=device, dtype=dtype).eval()
    clone.requires_grad_(False)
    return clone
