"""SABR (Müller et al. 2023, "Certified Training: Small Boxes are All You Need", ICLR 2023).

A PGD point x* of the ε-ball B = {x′ : ‖x′ − x‖∞ ≤ ε} ∩ [0,1]; the box of radius τ = λ·ε around it, its
centre clipped so the box stays in B (``small_box``; where B is clipped by [0,1], τ = λ × its half-width,
as in CTBench); the robust CE of IBP bounds of that box (Eq. 3 of the paper):

    L = κ·CE(f(x), y) + (1−κ)·CE(z̃(small box), y),  z̃_j = −lb(z_y − z_j).

The small-box loss is not an upper bound of the worst-case loss over B: SABR trades soundness of the
training loss for less over-regularisation. Defaults follow CTBench's MNIST ε = 0.1 script
(scripts/examples/mnist/0.1/train_sabr.sh: λ = 0.4, 10 PGD steps, 3 restarts, robust weight 0.7 → κ = 0.3).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from maar_plugin.attacks import cross_entropy_loss, pgd_maximize
from maar_plugin.bounds.box import linf_ball_box, small_box
from maar_plugin.objectives.base import hyperparameter
from maar_plugin.objectives.certified import AttackHyperparameters, Ibp, IbpHyperparameters
from maar_plugin.objectives.registry import register_objective


@dataclass(frozen=True)
class SabrHyperparameters(AttackHyperparameters, IbpHyperparameters):
    kappa_start: float = hyperparameter(0.3, "weight κ of the clean CE (CTBench: 1 − robust weight 0.7), constant")
    kappa_end: float = hyperparameter(0.3, "κ at the end of the ε ramp")
    shrinkage: float = hyperparameter(0.4, "SABR's λ: the small box has radius λ·ε (CTBench's eps_shrinkage)")


@register_objective("sabr")
class Sabr(Ibp):
    description = "SABR (Müller et al. 2023): IBP robust CE of a box of radius λ·ε around a PGD point in the ε-ball"
    Hyperparameters = SabrHyperparameters
    bounds_whole_ball = False

    def input_box(self, x: Tensor, y: Tensor, eps: float) -> tuple[Tensor, Tensor]:
        settings = self.hyperparameters
        lower, upper = linf_ball_box(x, eps)
        adversarial = pgd_maximize(self.model, lower, upper, lambda logits: cross_entropy_loss(logits, y),
                                   settings.attack_steps, settings.attack_restarts,
                                   step_size=settings.attack_step_ratio * (upper - lower) / 2)
        return small_box(lower, upper, adversarial, settings.shrinkage)
