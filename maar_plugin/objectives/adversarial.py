"""Adversarial training (Madry et al. 2018): cross-entropy on PGD points of the ε-ball."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from maar_plugin.attacks import pgd_attack
from maar_plugin.objectives.base import LossTerms, Objective, hyperparameter
from maar_plugin.objectives.registry import register_objective


@dataclass(frozen=True)
class PgdHyperparameters:
    steps: int = hyperparameter(10, "PGD steps per example")
    step_ratio: float = hyperparameter(2.5, "PGD step size as a multiple of ε/steps (Madry et al.: 2.5)")
    restarts: int = hyperparameter(1, "PGD runs from random starts; the worst point is kept")


@register_objective("pgd")
class Pgd(Objective):
    description = "cross-entropy on PGD adversarial examples (Madry et al. 2018); not certified"
    Hyperparameters = PgdHyperparameters

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        """The attack runs in eval mode, so BatchNorm statistics see only the clean and the final batch."""
        settings = self.hyperparameters
        was_training = self.model.training
        self.model.eval()
        adversarial = pgd_attack(self.model, x, y, eps, steps=settings.steps, restarts=settings.restarts,
                                 loss="ce", step_size=settings.step_ratio * eps / max(settings.steps, 1))
        self.model.train(was_training)
        with torch.no_grad():
            logits = self.model(x)
        robust_ce = F.cross_entropy(self.model(adversarial), y)
        parts = {"natural_ce": F.cross_entropy(logits, y).detach(), "robust_ce": robust_ce.detach()}
        return LossTerms(robust_ce, logits, parts)
