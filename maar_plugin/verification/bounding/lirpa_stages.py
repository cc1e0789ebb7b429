"""The bound stages of the cascade: IBP, CROWN and alpha-CROWN of specification rows over an input box.

auto_LiRPA (through :class:`~maar_plugin.bounds.lirpa.LirpaBounds`, the wrapper training uses too) bounds
the LayerGraph itself, convolutions in patches mode. Inputs are float64 boxes rounded outward to float32,
so the float32 box contains the property's. Its per-ReLU pre-activation bounds, widened by a float32
safety pad, are the root bounds of branch and bound: the pad makes decisions about stable ReLUs robust
to float32 rounding in auto_LiRPA.
"""
from __future__ import annotations

import numpy as np
import torch

from maar_plugin.bounds.lirpa import IntermediateBounds, LirpaBounds
from maar_plugin.errors import MaarError
from maar_plugin.verification.network.layers import LayerGraph

FLOAT32_PAD = 1e-5

Bounds = list[tuple[np.ndarray, np.ndarray]]   # per ReLU, flat (lower, upper) of its input, float64


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
        self.lirpa = LirpaBounds(self.model, example, alpha_iterations, alpha_lr, {"sparse_features_alpha": False})
        shapes = [graph.nodes[index].shape for index in graph.relu_indices()]
        if self.lirpa.relu_shapes() != shapes:
            raise MaarError(f"auto_LiRPA sees {len(self.lirpa.relus)} ReLUs that do not match the network's "
                            f"{len(shapes)}")

    def spec_lower_bounds(self, lower: np.ndarray, upper: np.ndarray, spec: np.ndarray, method: str,
                          intermediate: IntermediateBounds | None = None) -> np.ndarray:
        """Lower bounds of ``spec @ f(x)`` over the box (spec [rows, outputs]), by ``method``.

        ``intermediate`` (from :meth:`intermediate_bounds` of an earlier call on the same box) fixes the
        ReLU input bounds, so alpha-CROWN optimises only the final layer: on MNIST conv nets that is
        ~20x faster than letting auto_LiRPA re-optimise every intermediate layer.
        """
        shape = (1, *self.graph.example_shape)
        x_lower = torch.as_tensor(outward(lower, -1), device=self.device).reshape(shape)
        x_upper = torch.as_tensor(outward(upper, 1), device=self.device).reshape(shape)
        C = torch.as_tensor(spec, dtype=torch.float32, device=self.device).unsqueeze(0)
        if intermediate is None and method != "IBP" and not self.full_crown:
            with torch.no_grad():
                self.lirpa.bounds(x_lower, x_upper, None, "IBP", bound_upper=False)
            intermediate = self.lirpa.intermediate_bounds()
        with torch.no_grad():
            lb, _ = self.lirpa.bounds(x_lower, x_upper, C, method, bound_upper=False, intermediate=intermediate)
        return lb.double().cpu().numpy().reshape(-1)

    def box_lower_bounds(self, lower: torch.Tensor, upper: torch.Tensor, C: torch.Tensor,
                         method: str = "CROWN") -> torch.Tensor:
        """Lower bounds [B, R] of ``C[b] @ f(x)`` over each of B boxes at once (float32 ``lower``/``upper``
        [B, n], ``C`` [B, R, outputs]); the boxes' intermediate bounds are computed afresh."""
        shape = (lower.shape[0], *self.graph.example_shape)
        with torch.no_grad():
            lb, _ = self.lirpa.bounds(lower.to(self.device).reshape(shape), upper.to(self.device).reshape(shape),
                                      C.to(self.device, torch.float32), method, bound_upper=False)
        return lb

    def intermediate_bounds(self) -> IntermediateBounds:
        """The ReLU input bounds of the last call, to pass back later."""
        return self.lirpa.intermediate_bounds()

    def preactivation_bounds(self) -> Bounds:
        """Per ReLU (lower, upper) of its input from the last call, flat, padded for float32."""
        bounds = []
        for low_tensor, up_tensor in self.lirpa.relu_input_bounds():
            low = low_tensor.double().cpu().numpy().reshape(-1)
            up = up_tensor.double().cpu().numpy().reshape(-1)
            bounds.append((low - FLOAT32_PAD * (1 + np.abs(low)), up + FLOAT32_PAD * (1 + np.abs(up))))
        return bounds


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
    return [(np.maximum(a_low, b_low), np.minimum(a_up, b_up)) for (a_low, a_up), (b_low, b_up) in zip(first, second)]


def count_unstable(bounds: Bounds) -> int:
    """ReLUs whose input can be both negative and positive."""
    return int(sum(np.sum((low < 0) & (up > 0)) for low, up in bounds))
