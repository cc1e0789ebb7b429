"""The bound stages of the cascade: IBP, CROWN and alpha-CROWN of specification rows over an input box.

auto_LiRPA (through :class:`~maar_plugin.bounds.lirpa.LirpaBounds`, the wrapper training uses too) bounds
the LayerGraph itself, convolutions in patches mode, or in matrix mode where patches cannot pass a node
before a convolution (:func:`patches_blocker`: a Transpose the converter could not fold away, a slice or
concatenation of images along a spatial dimension). Inputs are float64 boxes rounded outward to float32,
so the float32 box contains the property's, and enter the graph in its input layout
(``LayerGraph.to_graph_layout``). Its bounds of every activation's input (ReLU, Sigmoid, Tanh), widened
by a float32 safety pad, are the root bounds of branch and bound: the pad makes decisions about stable
ReLUs robust to float32 rounding in auto_LiRPA.

auto_LiRPA 0.3's alpha-CROWN fails on some graphs: where a ReLU's input has another reader (a LeakyRelu,
see the converter) unless its slopes are stored densely (set here for such graphs), and where a Sigmoid
or Tanh output reaches a later node along two paths (a shape mismatch inside auto_LiRPA). The cascade
then records the stage as failed and goes on from CROWN's bounds.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from maar_plugin.bounds.lirpa import IntermediateBounds, LirpaBounds
from maar_plugin.errors import MaarError
from maar_plugin.verification.network.layers import Concat, LayerGraph, Narrow, Transpose

FLOAT32_PAD = 1e-5
_CHANNEL_ONLY = (Narrow, Concat)      # patches mode carries these along the channel dimension of images only

Bounds = dict[int, tuple[np.ndarray, np.ndarray]]   # per activation node, flat (lower, upper) of its input, float64
_KINDS = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}


class LirpaBoundStages:
    """One auto_LiRPA model per network, reused for every instance and bound method.

    Without ``full_crown`` (a network too large for CROWN's intermediate bounds, see
    :mod:`~maar_plugin.verification.memory`) CROWN and alpha-CROWN start from IBP's intermediate bounds.
    """

    def __init__(self, graph: LayerGraph, device: str = "cpu", alpha_iterations: int = 20, alpha_lr: float = 0.5,
                 full_crown: bool = True) -> None:
        self.graph = graph
        self.device = torch.device(device)
        self.model = graph.to(self.device)
        self.full_crown = full_crown
        example = torch.zeros(1, *graph.example_shape, device=self.device)
        options: dict[str, object] = {"sparse_features_alpha": False}
        if patches_blocker(graph) is not None:
            options["conv_mode"] = "matrix"
        if _shared_relu_input(graph):
            options["sparse_spec_alpha"] = False
        self.lirpa = LirpaBounds(self.model, example, alpha_iterations, alpha_lr, options)
        self.activations = graph.activation_indices()
        self.s_shaped = len(self.activations) > len(graph.relu_indices())
        kinds = [(_KINDS[type(graph.module_of(index))], graph.nodes[index].shape) for index in self.activations]
        if self.lirpa.activation_kinds() != kinds:
            raise MaarError(f"auto_LiRPA sees {len(self.lirpa.activations)} activations that do not match the "
                            f"network's {len(kinds)}")

    def spec_lower_bounds(self, lower: np.ndarray, upper: np.ndarray, spec: np.ndarray, method: str,
                          intermediate: IntermediateBounds | None = None, deadline: float | None = None,
                          enough: np.ndarray | None = None, iterations: int | None = None) -> np.ndarray:
        """Lower bounds of ``spec @ f(x)`` over the box (spec [rows, outputs]), by ``method``.

        ``intermediate`` (from :meth:`intermediate_bounds` of an earlier call on the same box) fixes the
        ReLU input bounds, so alpha-CROWN optimises only the final layer: on MNIST conv nets that is
        ~20x faster than letting auto_LiRPA re-optimise every intermediate layer. On networks with Sigmoid
        or Tanh it is ignored: their CROWN intermediate bounds are loose, and the slopes of every layer must
        be optimised (ERAN's sigmoid 6x200, ε = 0.012: worst margin −143 by CROWN, −75 by alpha-CROWN of the
        final layer, +7.5 by alpha-CROWN of every layer in 9 s). alpha-CROWN's slope optimisation stops at
        ``deadline`` (``time.monotonic()``) or once every row's bound exceeds ``enough`` [rows], after at most
        ``iterations`` steps (default: the stages' ``alpha_iterations``).
        """
        x_lower = self.graph.to_graph_layout(torch.as_tensor(outward(lower, -1), device=self.device))
        x_upper = self.graph.to_graph_layout(torch.as_tensor(outward(upper, 1), device=self.device))
        C = torch.as_tensor(spec, dtype=torch.float32, device=self.device).unsqueeze(0)
        if self.s_shaped:
            intermediate = None
        if intermediate is None and method != "IBP" and not self.full_crown:
            with torch.no_grad():
                self.lirpa.bounds(x_lower, x_upper, None, "IBP", bound_upper=False)
            intermediate = self.lirpa.intermediate_bounds()
        with torch.no_grad():
            lb, _ = self.lirpa.bounds(
                x_lower, x_upper, C, method, bound_upper=False, intermediate=intermediate, deadline=deadline,
                enough=None if enough is None else torch.as_tensor(enough, dtype=torch.float32).reshape(1, -1),
                iterations=iterations)
        return lb.double().cpu().numpy().reshape(-1)

    def box_lower_bounds(self, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                         method: str = "CROWN") -> torch.Tensor:
        """Lower bounds [B, R] of ``C[b] @ f(x)`` over each of B boxes at once (float32 ``lower``/``upper``
        [B, n], ``C`` [B, R, outputs]); the boxes' intermediate bounds are computed afresh."""
        with torch.no_grad():
            lb, _ = self.lirpa.bounds(self.graph.to_graph_layout(lower.to(self.device)),
                                      self.graph.to_graph_layout(upper.to(self.device)),
                                      C.to(self.device, torch.float32), method, bound_upper=False)
        return lb

    def intermediate_bounds(self) -> IntermediateBounds:
        """The activations' input bounds of the last call, to pass back later."""
        return self.lirpa.intermediate_bounds()

    def preactivation_bounds(self) -> Bounds:
        """Per activation node (lower, upper) of its input from the last call, flat, padded for float32."""
        bounds = {}
        for index, (low_tensor, up_tensor) in zip(self.activations, self.lirpa.activation_input_bounds()):
            low = low_tensor.double().cpu().numpy().reshape(-1)
            up = up_tensor.double().cpu().numpy().reshape(-1)
            bounds[index] = (low - FLOAT32_PAD * (1 + np.abs(low)), up + FLOAT32_PAD * (1 + np.abs(up)))
        return bounds


def patches_blocker(graph: LayerGraph) -> str | None:
    """The first node that auto_LiRPA 0.3's patches mode cannot carry bounds back through, when a convolution
    or average pooling follows it (a Transpose; a Narrow or Concat of images other than along channels); None
    when there is none. Such a network is bounded in auto_LiRPA's matrix mode (dense coefficients: more memory)."""
    blocker = None
    for index in range(1, len(graph.nodes)):
        module, shape = graph.module_of(index), graph.nodes[index].shape
        if blocker is None and (isinstance(module, Transpose)
                                or (isinstance(module, _CHANNEL_ONLY) and len(shape) == 3 and module.dim != 0)):
            blocker = graph.nodes[index].name
        if blocker is not None and isinstance(module, (nn.Conv2d, nn.AvgPool2d)):
            return blocker
    return None


def _shared_relu_input(graph: LayerGraph) -> bool:
    """Whether some ReLU's input is read by another node too (a LeakyRelu's ``a·z + (1 − a)·relu(z)``, a skip
    from a pre-activation). auto_LiRPA 0.3's alpha-CROWN then stores sparse slopes for that ReLU but reads
    them as dense (an AssertionError), unless its slopes are dense from the start (``sparse_spec_alpha``)."""
    readers = [0] * len(graph.nodes)
    for node in graph.nodes:
        for source in node.inputs:
            readers[source] += 1
    return any(readers[graph.nodes[relu].inputs[0]] > 1 for relu in graph.relu_indices())


def outward(values: np.ndarray, direction: int) -> np.ndarray:
    """``values`` in float32, rounded down (direction −1) or up (+1), so that a float32 box contains the
    float64 one."""
    rounded = np.asarray(values, dtype=np.float64).astype(np.float32)
    towards = np.float32(np.inf if direction > 0 else -np.inf)
    off = rounded > values if direction < 0 else rounded < values
    return np.where(off, np.nextafter(rounded, towards), rounded)


def intersect(first: Bounds | None, second: Bounds) -> Bounds:
    """The tighter of two sound bounds, neuron by neuron."""
    if first is None:
        return second
    return {index: (np.maximum(first[index][0], low), np.minimum(first[index][1], up))
            for index, (low, up) in second.items()}


def count_unstable(bounds: Bounds, relus: list[int]) -> int:
    """ReLUs (of the nodes ``relus``) whose input can be both negative and positive."""
    return int(sum(np.sum((low < 0) & (up > 0)) for index, (low, up) in bounds.items() if index in relus))
