"""Bounds on specification rows and on every ReLU input: auto_LiRPA (float32) and plain intervals (float64).

auto_LiRPA bounds the LayerGraph itself (convolutions in patches mode) for the IBP / CROWN /
alpha-CROWN stages; its per-ReLU pre-activation bounds, widened by a float32 safety pad, are the root
bounds of branch and bound and (intersected with float64 interval bounds) the big-M constants of the
MILP. The pad makes decisions about stable ReLUs robust to float32 rounding in auto_LiRPA.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from maar_plugin import lirpa_compat

lirpa_compat.apply()  # before auto_LiRPA is imported; MaarError for a version it does not know
from auto_LiRPA import BoundedModule, BoundedTensor, PerturbationLpNorm
from auto_LiRPA.operators import BoundRelu

from maar_plugin.errors import MaarError
from maar_plugin.verification.graph import LayerGraph
from maar_plugin.verification.network import ReluNetwork

LIRPA_METHODS = {"IBP": "IBP", "CROWN": "backward", "alpha-CROWN": "CROWN-Optimized"}
FLOAT32_PAD = 1e-5
# compute_bounds' keyword for given intermediate bounds: auto_LiRPA 0.3 and 0.7 spell it differently.
_INTERMEDIATE_KEYWORD = next(name for name in ("interm_bounds", "intermediate_layer_bounds")
                             if name in inspect.signature(BoundedModule.compute_bounds).parameters)

Bounds = list[tuple[np.ndarray, np.ndarray]]


class LirpaBoundStages:
    """One BoundedModule per network, reused for every instance and bound method."""

    def __init__(self, graph: LayerGraph, device: str = "cpu", alpha_iterations: int = 20,
                 full_crown: bool = True) -> None:
        self.graph = graph
        self.device = torch.device(device)
        self.model = graph.to(self.device)
        self.full_crown = full_crown
        example = torch.zeros(1, *graph.example_shape, device=self.device)
        options = {"optimize_bound_args": {"iteration": alpha_iterations}, "sparse_features_alpha": False}
        try:
            self.bounded = BoundedModule(self.model, example, device=self.device, bound_opts=options)
        except Exception as error:  # auto_LiRPA's tracer raises many kinds
            raise MaarError(f"auto_LiRPA cannot trace the network ({type(error).__name__}: "
                            f"{str(error).splitlines()[0] if str(error) else ''})") from None
        self.relus = [node for node in self.bounded._modules.values() if isinstance(node, BoundRelu)]
        shapes = [graph.nodes[index].shape for index in graph.relu_indices()]
        if [tuple(relu.output_shape[1:]) for relu in self.relus] != shapes:
            raise MaarError(f"auto_LiRPA sees {len(self.relus)} ReLUs that do not match the network's {len(shapes)}")

    def spec_lower_bounds(self, lower: np.ndarray, upper: np.ndarray, spec: np.ndarray, method: str,
                          intermediate: dict[str, list[torch.Tensor]] | None = None) -> np.ndarray:
        """Lower bounds of ``spec @ f(x)`` over the box (spec [rows, outputs]), by ``method`` in LIRPA_METHODS.

        ``intermediate`` (from :meth:`intermediate_bounds` of an earlier call on the same box) fixes the
        ReLU input bounds, so alpha-CROWN optimises only the final layer: on MNIST conv nets that is
        ~20x faster than letting auto_LiRPA 0.3 re-optimise every intermediate layer. Without
        ``full_crown`` (a network too large for CROWN's intermediate bounds, see
        :mod:`~maar_plugin.verification.memory`) CROWN starts from IBP's intermediate bounds.
        """
        shape = (1, *self.graph.example_shape)
        x_lower = torch.as_tensor(outward(lower, -1), device=self.device).reshape(shape)
        x_upper = torch.as_tensor(outward(upper, 1), device=self.device).reshape(shape)
        perturbation = PerturbationLpNorm(norm=np.inf, x_L=x_lower, x_U=x_upper)
        x = BoundedTensor((x_lower + x_upper) / 2, perturbation)
        C = torch.as_tensor(spec, dtype=torch.float32, device=self.device).unsqueeze(0)
        if intermediate is None and method != "IBP" and not self.full_crown:
            self.bounded.compute_bounds(x=(x,), method="IBP", bound_upper=False)
            intermediate = self.intermediate_bounds()
        given = {_INTERMEDIATE_KEYWORD: intermediate} if intermediate is not None else {}
        lb, _ = self.bounded.compute_bounds(x=(x,), C=C, method=LIRPA_METHODS[method], bound_upper=False, **given)
        return lb.detach().double().cpu().numpy().reshape(-1)

    def box_lower_bounds(self, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                         method: str = "CROWN") -> torch.Tensor:
        """Lower bounds [B, R] of ``C[b] @ f(x)`` over each of B boxes at once (float32 ``lower``/``upper``
        [B, n], ``C`` [B, R, outputs]); the boxes' intermediate bounds are computed afresh."""
        shape = (lower.shape[0], *self.graph.example_shape)
        x_lower, x_upper = lower.to(self.device).reshape(shape), upper.to(self.device).reshape(shape)
        x = BoundedTensor((x_lower + x_upper) / 2, PerturbationLpNorm(norm=np.inf, x_L=x_lower, x_U=x_upper))
        lb, _ = self.bounded.compute_bounds(x=(x,), C=C.to(self.device, torch.float32), method=LIRPA_METHODS[method],
                                            bound_upper=False)
        return lb.detach()

    def intermediate_bounds(self) -> dict[str, list[torch.Tensor]]:
        """The ReLU input bounds of the last compute_bounds, keyed by node name, to pass back later."""
        return {relu.inputs[0].name: [relu.inputs[0].lower.detach().clone(), relu.inputs[0].upper.detach().clone()]
                for relu in self.relus}

    def preactivation_bounds(self) -> Bounds:
        """Per hidden layer (lower, upper) of the ReLU inputs from the last compute_bounds, padded for float32."""
        bounds = []
        for relu in self.relus:
            node = relu.inputs[0]
            low = node.lower.detach().double().cpu().numpy().reshape(-1)
            up = node.upper.detach().double().cpu().numpy().reshape(-1)
            bounds.append((low - FLOAT32_PAD * (1 + np.abs(low)), up + FLOAT32_PAD * (1 + np.abs(up))))
        return bounds


def outward(values: np.ndarray, direction: int) -> np.ndarray:
    """``values`` in float32, rounded down (direction −1) or up (+1), so that a float32 box contains the
    float64 one."""
    rounded = np.asarray(values, dtype=np.float64).astype(np.float32)
    towards = np.float32(np.inf if direction > 0 else -np.inf)
    off = rounded > values if direction < 0 else rounded < values
    return np.where(off, np.nextafter(rounded, towards), rounded)


def interval_preactivation_bounds(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray,
                                  known: Bounds | None = None) -> Bounds:
    """Float64 interval bounds of every ReLU input, each layer intersected with ``known`` bounds if given.

    Intersecting layer by layer lets tighter known bounds shrink the intervals of the layers after them.
    """
    bounds: Bounds = []
    low, up = lower.astype(np.float64), upper.astype(np.float64)
    for index, layer in enumerate(network.layers[:-1]):
        positive, negative = np.maximum(layer.weight, 0), np.minimum(layer.weight, 0)
        z_low = positive @ low + negative @ up + layer.bias
        z_up = positive @ up + negative @ low + layer.bias
        if known is not None:
            z_low, z_up = np.maximum(z_low, known[index][0]), np.minimum(z_up, known[index][1])
            z_up = np.maximum(z_up, z_low)
        bounds.append((z_low, z_up))
        low, up = np.maximum(z_low, 0), np.maximum(z_up, 0)
    return bounds


def count_unstable(bounds: Bounds) -> int:
    """ReLUs whose input can be both negative and positive (the MILP's binary variables)."""
    return int(sum(np.sum((low < 0) & (up > 0)) for low, up in bounds))
