"""Certified training from margin lower bounds: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

Both minimise κ·CE(clean) + (1−κ)·robust loss, with κ ramped from ``kappa_start`` to ``kappa_end`` over
the ε ramp; they differ in one hook, ``pairwise_and_margin_lower``. Two more hooks serve the bases built
on them (``sabr``, ``expressive``): ``input_box`` (the region bounded; the ε-ball by default) and
``robust_loss`` (the robust CE of the margin bounds by default). The bound pass runs on the pairwise
specification (rows z_j − z_k, j ≠ k), shared by all examples: it contains every margin row, costs the
fused IBP pass no more than the per-example margin rows, and gives a regulariser (MAAR) upper bounds of
all logit differences from the same pass (``PairwiseBoundsObjective``). CROWN-IBP's CROWN part bounds the
margin rows only, from the intermediate bounds of that IBP pass (``bounds.crown``).

Every pass of a step runs inside ``clean_batch_statistics``: train-mode BatchNorm uses the clean batch's
statistics for the attack, the fused IBP and CROWN-IBP passes and the adversarial logits, as CTBench does
(auto_LiRPA, the fallback for models that are not a ``Sequential`` of the supported layers, uses the box
centres').
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maar_plugin.bounds.box import linf_ball_box
from maar_plugin.bounds.crown import crown_lower, supports_crown
from maar_plugin.bounds.ibp import interval_bounds, interval_bounds_with_trace
from maar_plugin.bounds.specs import margin_spec, margins_from_pairwise, pairwise_matrix, pairwise_spec
from maar_plugin.data import DatasetInfo
from maar_plugin.models import SUPPORTED_LAYERS
from maar_plugin.objectives.base import LossTerms, Objective, hyperparameter
from maar_plugin.objectives.batch_statistics import clean_batch_statistics
from maar_plugin.objectives.losses import linear_ramp, robust_ce_from_margins
from maar_plugin.objectives.registry import register_objective

if TYPE_CHECKING:
    from maar_plugin.bounds.lirpa import LirpaBounds


@dataclass
class RobustBounds:
    """Margin lower bounds [B, K-1] (loss), pairwise lower bounds [B, K, K] of z_j − z_k, logged scalars."""

    margin_lower: Tensor
    pairwise_lower: Tensor
    parts: dict[str, float]


KL_REGIONS = ("base", "ball")


class PairwiseBoundsObjective(Objective):
    """A certified base MAAR can extend: its loss pass also yields lower bounds of every logit difference.

    Third parties subclass this (or ``CertifiedObjective``) and register it like any objective; then
    ``maar:base=NAME`` works over it.
    """

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        return self.loss_and_pairwise_lower(x, y, eps, progress)[0]

    def loss_and_pairwise_lower(
        self, x: Tensor, y: Tensor, eps: float, progress: float, tight_pairwise: bool = False,
        region: str = "base",
    ) -> tuple[LossTerms, Tensor]:
        """The loss terms and lower bounds [B, K, K] of z_j − z_k (zero diagonal) from the same pass.

        ``region``: "base" bounds them over the region the loss bounds (SABR: its small box), "ball" over
        the whole ε-ball ∩ [0,1]. ``tight_pairwise``: by the base's own method rather than its IBP part.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class IbpHyperparameters:
    kappa_start: float = hyperparameter(1.0, "weight κ of the clean cross-entropy at the start of the ε ramp")
    kappa_end: float = hyperparameter(0.0, "κ at the end of the ε ramp (Zhang et al. 2020; Gowal et al. use 0.5)")


@dataclass(frozen=True)
class AttackHyperparameters:
    """The PGD attack of SABR and the expressive losses (CTBench's train_steps, restarts, step_size)."""

    attack_steps: int = hyperparameter(10, "PGD steps of the training attack (CE loss)")
    attack_restarts: int = hyperparameter(3, "PGD runs from random starts; the point of highest CE is kept")
    attack_step_ratio: float = hyperparameter(0.2, "PGD step as a fraction of the attack box's half-width")


@dataclass(frozen=True)
class CrownIbpHyperparameters(IbpHyperparameters):
    beta_start: float = hyperparameter(1.0, "weight β of the CROWN-IBP bound (vs IBP) at the start of the ε ramp")
    beta_end: float = hyperparameter(0.0, "β at the end of the ε ramp; at β = 0 only IBP is computed")


class CertifiedObjective(PairwiseBoundsObjective):
    """κ·CE(clean) + (1−κ)·CE(worst-case logits from margin lower bounds); subclasses bound the margins."""

    Hyperparameters = IbpHyperparameters
    needs_crown: ClassVar[bool] = False  # CROWN-IBP: in plain torch where ``supports_crown``, else auto_LiRPA
    bounds_whole_ball: ClassVar[bool] = True  # False where ``input_box`` is smaller than the ε-ball

    def __init__(self, model: nn.Module, info: DatasetInfo, **hyperparameters: Any):
        super().__init__(model, info, **hyperparameters)
        # Built here, not on first use: building reloads the model's state in place, which would break
        # the autograd graph of a forward pass already made in the same step.
        # The model where the fused plain-torch passes take it (else None), auto_LiRPA where they do not.
        self.fused_ibp_model = model if _fused_ibp_supports(model) else None
        self.fused_crown_model: nn.Sequential | None = None
        if self.needs_crown and self.fused_ibp_model is not None and supports_crown(model):
            self.fused_crown_model = self.fused_ibp_model
        self.lirpa: LirpaBounds | None = None
        if self.fused_ibp_model is None or (self.needs_crown and self.fused_crown_model is None):
            from maar_plugin.bounds.lirpa import LirpaBounds  # auto_LiRPA only for models the fused passes miss

            device = next(model.parameters()).device
            self.lirpa = LirpaBounds(model, torch.zeros(1, *info.input_shape, device=device))

    def loss_and_pairwise_lower(self, x, y, eps, progress, tight_pairwise=False, region="base"):
        with clean_batch_statistics(self.model, x) as logits:
            bounds = self.robust_bounds(x, y, eps, progress, tight_pairwise)
            terms = self.loss_from_bounds(x, logits, y, eps, bounds, progress)
            pairwise_lower = bounds.pairwise_lower
            if region == "ball" and not self.bounds_whole_ball:
                pairwise_lower = self.ibp_pairwise_lower(*linf_ball_box(x, eps), clean=x)
        return terms, pairwise_lower

    def robust_bounds(
        self, x: Tensor, y: Tensor, eps: float, progress: float, tight_pairwise: bool = False
    ) -> RobustBounds:
        """Bounds over ``input_box`` from one pass. Pairwise rows are bounded by the pass's IBP part, or,
        with ``tight_pairwise``, by the objective's own method (for CROWN-IBP ~K times its CROWN cost).
        With train-mode BatchNorm, call it inside ``clean_batch_statistics`` (``loss`` does)."""
        lower, upper = self.input_box(x, y, eps)
        pairwise_lower, margin_lower, parts = self.pairwise_and_margin_lower(
            lower, upper, y, progress, tight_pairwise, clean=x)
        return RobustBounds(margin_lower, pairwise_lower, parts)

    def input_box(self, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        """The hook: the input region whose bounds the loss uses; the ε-ball ∩ [0,1]."""
        return linf_ball_box(x, eps)

    def loss_from_bounds(
        self, x: Tensor, logits: Tensor, y: Tensor, eps: float, bounds: RobustBounds, progress: float
    ) -> LossTerms:
        """κ·CE(clean logits) + (1−κ)·``robust_loss``."""
        settings = self.hyperparameters
        kappa = linear_ramp(settings.kappa_start, settings.kappa_end, progress)
        natural_ce = F.cross_entropy(logits, y)
        robust, robust_parts = self.robust_loss(x, y, eps, bounds)
        total = kappa * natural_ce + (1.0 - kappa) * robust
        parts = {"natural_ce": natural_ce.detach(), "robust_ce": robust.detach(), "kappa": kappa,
                 **bounds.parts, **robust_parts}
        return LossTerms(total, logits, parts)

    def robust_loss(self, x: Tensor, y: Tensor, eps: float, bounds: RobustBounds) -> tuple[Tensor, dict]:
        """The hook: the robust part of the loss and its parts to log; the mean robust CE of the margin bounds."""
        return robust_ce_from_margins(bounds.margin_lower).mean(), {}

    def pairwise_and_margin_lower(
        self, lower: Tensor, upper: Tensor, y: Tensor, progress: float, tight_pairwise: bool,
        clean: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, dict[str, float]]:
        """The hook: lower bounds of z_j − z_k [B, K, K] (at least IBP's) and of the margins [B, K-1]
        (by this objective's method) over the box, plus scalars to log. ``clean``: the clean batch, whose
        statistics train-mode BatchNorm uses in the fused IBP pass."""
        raise NotImplementedError

    def ibp_pairwise_lower(self, lower: Tensor, upper: Tensor, clean: Tensor | None = None) -> Tensor:
        """IBP lower bounds of all z_j − z_k [B, K, K]: fused plain-torch pass for Sequential models (BatchNorm
        with ``clean``'s statistics), else auto_LiRPA (with the box centres')."""
        rows = self.pairwise_rows(lower)
        if self.fused_ibp_model is not None:
            row_lower = interval_bounds(self.fused_ibp_model, lower, upper, rows, clean=clean)[0]
        else:
            assert self.lirpa is not None  # built in __init__
            row_lower = self.lirpa.bounds(lower, upper, rows, "IBP")[0]
        return pairwise_matrix(row_lower, self.info.num_classes)

    def pairwise_rows(self, like: Tensor) -> Tensor:
        """The pairwise specification [1, K(K-1), K], shared by the batch."""
        return pairwise_spec(self.info.num_classes, 1, like.device).to(like.dtype)


@register_objective("ibp")
class Ibp(CertifiedObjective):
    description = "interval bound propagation (Gowal et al. 2018): κ·CE(clean) + (1−κ)·CE(IBP worst case)"

    def pairwise_and_margin_lower(self, lower, upper, y, progress, tight_pairwise, clean=None):
        pairwise_lower = self.ibp_pairwise_lower(lower, upper, clean)
        return pairwise_lower, margins_from_pairwise(pairwise_lower, y), {}


@register_objective("crown-ibp")
class CrownIbp(CertifiedObjective):
    description = "CROWN-IBP (Zhang et al. 2020): margins from β·CROWN-IBP + (1−β)·IBP, β ramped to 0"
    Hyperparameters = CrownIbpHyperparameters
    needs_crown = True

    def pairwise_and_margin_lower(self, lower, upper, y, progress, tight_pairwise, clean=None):
        settings = self.hyperparameters
        beta = linear_ramp(settings.beta_start, settings.beta_end, progress)
        if beta == 0.0:  # pure IBP: skip the CROWN pass
            pairwise_lower = self.ibp_pairwise_lower(lower, upper, clean)
            return pairwise_lower, margins_from_pairwise(pairwise_lower, y), {"beta": beta}
        num_classes = self.info.num_classes
        rows = self.pairwise_rows(lower)
        crown_rows = rows if tight_pairwise else margin_spec(y, num_classes).to(lower.dtype)
        ibp_rows, crown_rows_lower = self.ibp_and_crown_ibp_lower(lower, upper, rows, crown_rows, clean)
        ibp_pairwise = pairwise_matrix(ibp_rows, num_classes)
        if tight_pairwise:
            pairwise_lower = beta * pairwise_matrix(crown_rows_lower, num_classes) + (1.0 - beta) * ibp_pairwise
            return pairwise_lower, margins_from_pairwise(pairwise_lower, y), {"beta": beta}
        margin_lower = beta * crown_rows_lower + (1.0 - beta) * margins_from_pairwise(ibp_pairwise, y)
        return ibp_pairwise, margin_lower, {"beta": beta}

    def ibp_and_crown_ibp_lower(self, lower: Tensor, upper: Tensor, rows: Tensor, crown_rows: Tensor,
                                clean: Tensor | None) -> tuple[Tensor, Tensor]:
        """IBP lower bounds of ``rows`` and CROWN-IBP lower bounds of ``crown_rows`` from one IBP pass: plain
        torch where the model allows it (BatchNorm with ``clean``'s statistics), else auto_LiRPA (the box
        centres')."""
        if self.fused_crown_model is not None:
            model = self.fused_crown_model
            (ibp_lower, _), trace = interval_bounds_with_trace(model, lower, upper, rows, clean=clean)
            return ibp_lower, crown_lower(model, lower, upper, crown_rows, trace)
        assert self.lirpa is not None  # built in __init__
        return self.lirpa.ibp_and_crown_ibp_lower(lower, upper, rows, crown_rows)


def _fused_ibp_supports(model: nn.Module) -> TypeGuard[nn.Sequential]:
    return isinstance(model, nn.Sequential) and all(isinstance(layer, SUPPORTED_LAYERS) for layer in model)
