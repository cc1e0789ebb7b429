"""Expressive losses (De Palma et al. 2024, "Expressive Losses for Verified Robustness via Convex
Combinations", ICLR 2024): MTL-IBP, EXP-IBP and CC-IBP.

Each mixes the IBP robust CE over the ε-ball with an adversarial one at a PGD point x* of the attack ball
(radius ``attack_eps_ratio``·ε, CTBench's attack_range_scale), by α ∈ [0, 1]:

    MTL-IBP  L_rob = α·L_IBP + (1−α)·L_adv                                   (Eq. 4 of the paper)
    EXP-IBP  L_rob = L_IBP^α · L_adv^(1−α)
    CC-IBP   L_rob = CE(z̃, y),  z̃_j − z̃_y = α·ub_IBP(z_j − z_y) + (1−α)·(z_j(x*) − z_y(x*))

with L_IBP = CE(z̃_IBP, y), L_adv = CE(f(x*), y) (batch means), and L = κ·CE(f(x), y) + (1−κ)·L_rob.
α = 1 is IBP, α = 0 adversarial training. Defaults follow CTBench's MNIST ε = 0.1 scripts
(scripts/examples/mnist/0.1/train_{mtlibp,expibp,ccibp}.sh: α = ibp_coef = 0.02, 10 PGD steps of
max(0.25, 2/steps) = 0.25 of the attack box's half-width, 3 restarts, attack range scale 1, κ = 0.3).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from maar_plugin.attacks import cross_entropy_loss, pgd_maximize
from maar_plugin.bounds.box import linf_ball_box
from maar_plugin.objectives.base import hyperparameter
from maar_plugin.objectives.certified import AttackHyperparameters, Ibp, IbpHyperparameters, RobustBounds
from maar_plugin.objectives.losses import logit_margins, robust_ce_from_margins
from maar_plugin.objectives.registry import register_objective


@dataclass(frozen=True)
class ExpressiveHyperparameters(AttackHyperparameters, IbpHyperparameters):
    kappa_start: float = hyperparameter(0.3, "weight κ of the clean CE (CTBench: 1 − robust weight 0.7), constant")
    kappa_end: float = hyperparameter(0.3, "κ at the end of the ε ramp")
    alpha: float = hyperparameter(0.02, "α: weight of IBP vs the attack (CTBench's ibp_coef); 1 = IBP, 0 = PGD")
    attack_step_ratio: float = hyperparameter(
        0.25, "PGD step as a fraction of the attack box's half-width (CTBench: max(0.25, 2/steps))")
    attack_eps_ratio: float = hyperparameter(1.0, "the attack ball's radius as a multiple of ε (attack_range_scale)")


class Expressive(Ibp):
    """IBP bounds over the ε-ball plus a PGD point; subclasses combine them in ``combine``."""

    Hyperparameters = ExpressiveHyperparameters

    def robust_loss(self, x: Tensor, y: Tensor, eps: float, bounds: RobustBounds) -> tuple[Tensor, dict]:
        settings = self.hyperparameters
        lower, upper = linf_ball_box(x, settings.attack_eps_ratio * eps)
        adversarial = pgd_maximize(self.model, lower, upper, lambda logits: cross_entropy_loss(logits, y),
                                   settings.attack_steps, settings.attack_restarts,
                                   step_size=settings.attack_step_ratio * (upper - lower) / 2)
        adversarial_logits = self.model(adversarial)
        ibp_ce = robust_ce_from_margins(bounds.margin_lower).mean()
        adversarial_ce = F.cross_entropy(adversarial_logits, y)
        robust = self.combine(settings.alpha, bounds.margin_lower, adversarial_logits, y, ibp_ce, adversarial_ce)
        return robust, {"ibp_ce": ibp_ce.detach(), "adversarial_ce": adversarial_ce.detach()}

    def combine(self, alpha: float, margin_lower: Tensor, adversarial_logits: Tensor, y: Tensor,
                ibp_ce: Tensor, adversarial_ce: Tensor) -> Tensor:
        """The hook: L_rob from the IBP margin bounds, the adversarial logits and both CEs."""
        raise NotImplementedError


@register_objective("mtl-ibp")
class MtlIbp(Expressive):
    description = "MTL-IBP (De Palma et al. 2024): κ·CE + (1−κ)·(α·IBP CE + (1−α)·PGD CE)"

    def combine(self, alpha, margin_lower, adversarial_logits, y, ibp_ce, adversarial_ce):
        return alpha * ibp_ce + (1.0 - alpha) * adversarial_ce


@register_objective("exp-ibp")
class ExpIbp(Expressive):
    description = "EXP-IBP (De Palma et al. 2024): κ·CE + (1−κ)·IBP CE^α · PGD CE^(1−α)"

    def combine(self, alpha, margin_lower, adversarial_logits, y, ibp_ce, adversarial_ce):
        return ibp_ce ** alpha * adversarial_ce ** (1.0 - alpha)


@register_objective("cc-ibp")
class CcIbp(Expressive):
    description = "CC-IBP (De Palma et al. 2024): CE of α·(IBP logit differences) + (1−α)·(PGD ones)"

    def combine(self, alpha, margin_lower, adversarial_logits, y, ibp_ce, adversarial_ce):
        margins = alpha * margin_lower + (1.0 - alpha) * logit_margins(adversarial_logits, y)
        return robust_ce_from_margins(margins).mean()
