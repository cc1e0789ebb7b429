"""MAAR: Misclassification Aware Adversarial Regularization on top of a certified base loss.

With logits z = f(x), p = softmax(z) and the ε-ball B(x) ∩ [0,1], MAAR bounds the worst-case
R(x) = max_{x' ∈ B(x)} KL(p(x) ‖ p(x')) by R̄(x) (``kl_upper_bound``) and minimises

    L = L_base + λ_t · mean_i(w_i · R̄(x_i)),  λ_t = λ · progress,

with w = 1 on misclassified examples ("hard") or w = 1 − p_y ("soft", MART's weight, Wang et al. 2020).
R̄ needs upper bounds of every logit difference z_j − z_k. The base objective's bound pass already
runs on the pairwise specification (its margins are a subset of those rows), so MAAR composes the base
objective and reads them off the same pass: no second pass, no copied loss. By default those rows
carry the IBP part of the pass; ``pairwise_bounds=base`` bounds them by CROWN-IBP as well, which for
K = 10 costs about K times the base's CROWN part while β > 0.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from maar_plugin.bounds.specs import pairwise_upper_from_lower
from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError
from maar_plugin.objectives.base import LossTerms, Objective, hyperparameter
from maar_plugin.objectives.certified import CertifiedObjective
from maar_plugin.objectives.losses import WEIGHTINGS, kl_upper_bound, linear_ramp, misclassification_weights
from maar_plugin.objectives.registry import create_objective, objective_class, register_objective

BASES = ("ibp", "crown-ibp")


@dataclass(frozen=True)
class MaarHyperparameters:
    lam: float = hyperparameter(0.5, "λ: weight of the KL regulariser at the end of the ε ramp (λ_t = λ·progress)")
    weighting: str = hyperparameter(
        "hard", "hard: regularise misclassified examples only; soft: weight 1 − p_y (MART)", choices=WEIGHTINGS
    )
    pairwise_bounds: str = hyperparameter(
        "ibp", "bounds of z_j − z_k in R̄: ibp = IBP part of the base's pass; base = the base's method "
        "(same for ibp; for crown-ibp ~K× its CROWN cost while β > 0)", choices=("ibp", "base")
    )


@dataclass(frozen=True)
class MaarWithBaseHyperparameters(MaarHyperparameters):
    base: str = hyperparameter("crown-ibp", "certified base objective whose bound pass MAAR extends", choices=BASES)


@register_objective("maar")
class Maar(Objective):
    description = "MAAR: certified base loss + λ·mean(w·R̄), R̄ ≥ worst-case KL(p(x)‖p(x')), w: misclassified"
    Hyperparameters = MaarWithBaseHyperparameters
    fixed_base: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, info: DatasetInfo, **hyperparameters: Any):
        own_names = {f.name for f in dataclasses.fields(self.Hyperparameters)}
        own = {key: value for key, value in hyperparameters.items() if key in own_names}
        super().__init__(model, info, **own)
        base_name = self.fixed_base or self.hyperparameters.base
        base_arguments = {key: value for key, value in hyperparameters.items() if key not in own_names}
        unknown = set(base_arguments) - set(objective_class(base_name).hyperparameter_table())
        if unknown:
            known = ", ".join([*own_names, *objective_class(base_name).hyperparameter_table()])
            raise MaarError(f"objective {self.name!r} has no hyperparameter {sorted(unknown)[0]!r} (it has: {known})")
        self.base: CertifiedObjective = create_objective(base_name, model, info, **base_arguments)

    @classmethod
    def hyperparameter_table(cls) -> dict[str, tuple[object, str]]:
        """MAAR's own hyperparameters, then its (default) base objective's, which it passes on."""
        base_name = cls.fixed_base or MaarWithBaseHyperparameters.base
        return {**super().hyperparameter_table(), **objective_class(base_name).hyperparameter_table()}

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        settings = self.hyperparameters
        lam = linear_ramp(0.0, settings.lam, progress)
        logits = self.model(x)
        tight_pairwise = settings.pairwise_bounds == "base" and lam > 0.0
        bounds = self.base.robust_bounds(x, y, eps, progress, tight_pairwise=tight_pairwise)
        terms = self.base.loss_from_bounds(logits, y, bounds, progress)
        kl_bound = kl_upper_bound(logits, pairwise_upper_from_lower(bounds.pairwise_lower))
        regularizer = (misclassification_weights(logits, y, settings.weighting) * kl_bound).mean()
        total = terms.total + lam * regularizer
        return LossTerms(total, logits, {**terms.parts, "maar_reg": regularizer.detach(), "lambda": lam})


@register_objective("maar-ibp")
class MaarIbp(Maar):
    description = "MAAR on the IBP loss (alias of maar with base=ibp)"
    Hyperparameters = MaarHyperparameters
    fixed_base = "ibp"


@register_objective("maar-crown-ibp")
class MaarCrownIbp(Maar):
    description = "MAAR on the CROWN-IBP loss (alias of maar with base=crown-ibp)"
    Hyperparameters = MaarHyperparameters
    fixed_base = "crown-ibp"
