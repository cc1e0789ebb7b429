"""Standard training: cross-entropy on clean inputs."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from maar_plugin.objectives.base import LossTerms, Objective
from maar_plugin.objectives.registry import register_objective


@register_objective("natural")
class Natural(Objective):
    description = "cross-entropy on clean inputs (no robustness)"

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        logits = self.model(x)
        natural_ce = F.cross_entropy(logits, y)
        return LossTerms(natural_ce, logits, {"natural_ce": natural_ce.detach()})
