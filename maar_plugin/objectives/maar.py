"""MAAR: Misclassification Aware Adversarial Regularization on top of a certified base loss.

With logits z = f(x), p = softmax(z) and a region B(x) of inputs, MAAR bounds the worst-case
R(x) = max_{x' ∈ B(x)} KL(p(x) ‖ p(x')) by R̄(x) (``kl_upper_bound``) and minimises

    L = L_base + λ_t · mean_i(w_i · R̄(x_i)),  λ_t = λ · progress,

with w = 1 − p_y ("soft", MART's weight, Wang et al. 2020; the default, as in every recipe) or w = 1 on
misclassified examples only ("hard").
R̄ needs upper bounds of every logit difference z_j − z_k. Every certified base (a
``PairwiseBoundsObjective``: ibp, crown-ibp, sabr, mtl-ibp, exp-ibp, cc-ibp, or a third party's) runs
its bound pass on the pairwise specification (its margins are a subset of those rows), so MAAR composes
the base objective and reads them off the same pass: no second pass, no copied loss. By default those
rows carry the IBP part of the pass; ``pairwise_bounds=base`` bounds them by CROWN-IBP as well, which
for K = 10 costs about K times the base's CROWN part while β > 0.

B(x) is the region the base bounds (``kl_region=base``): the ε-ball ∩ [0,1] for every built-in base but
SABR, whose region is its small box, so that R̄ then bounds the KL only over that box, not the ball.
``kl_region=ball`` bounds it over the whole ε-ball (for SABR one more IBP pass).
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
from maar_plugin.objectives.certified import KL_REGIONS, PairwiseBoundsObjective
from maar_plugin.objectives.losses import WEIGHTINGS, kl_upper_bound, linear_ramp, misclassification_weights
from maar_plugin.objectives.registry import create_objective, list_objectives, objective_class, register_objective

BUILT_IN_BASES = ("ibp", "crown-ibp", "sabr", "mtl-ibp", "exp-ibp", "cc-ibp")
DEFAULT_BASE = "crown-ibp"


@dataclass(frozen=True)
class MaarHyperparameters:
    lam: float = hyperparameter(0.5, "λ: weight of the KL regulariser at the end of the ε ramp (λ_t = λ·progress)")
    weighting: str = hyperparameter(
        "soft", "soft: weight 1 − p_y (MART); hard: regularise misclassified examples only", choices=WEIGHTINGS
    )
    pairwise_bounds: str = hyperparameter(
        "ibp", "bounds of z_j − z_k in R̄: ibp = IBP part of the base's pass; base = the base's method "
        "(same for ibp; for crown-ibp ~K× its CROWN cost while β > 0)", choices=("ibp", "base")
    )
    kl_region: str = hyperparameter(
        "base", "region R̄ bounds the KL over: base = the base's own (SABR: its small box, not an upper bound "
        "over the ε-ball); ball = the whole ε-ball (SABR: one more IBP pass)", choices=KL_REGIONS
    )


@dataclass(frozen=True)
class MaarWithBaseHyperparameters(MaarHyperparameters):
    base: str = hyperparameter(DEFAULT_BASE, "certified base objective whose bound pass MAAR extends (`maar "
                               "objectives`: any with pairwise bounds, third parties' too)")


def certified_bases() -> list[str]:
    """Registered objectives MAAR can extend (built-in and from entry points)."""
    return [name for name in list_objectives() if _is_base(name)]


def _is_base(name: str) -> bool:
    try:
        return issubclass(objective_class(name), PairwiseBoundsObjective)
    except MaarError:
        return False


@register_objective("maar")
class Maar(Objective):
    description = "MAAR: certified base loss + λ·mean(w·R̄), R̄ ≥ worst-case KL(p(x)‖p(x')), w = 1 − p_y"
    Hyperparameters = MaarWithBaseHyperparameters
    fixed_base: ClassVar[str | None] = None

    def __init__(self, model: nn.Module, info: DatasetInfo, **hyperparameters: Any):
        own_names = {f.name for f in dataclasses.fields(self.Hyperparameters)}
        own = {key: value for key, value in hyperparameters.items() if key in own_names}
        super().__init__(model, info, **own)
        base_name = self.fixed_base or self.hyperparameters.base
        if not _is_base(base_name):
            objective_class(base_name)  # an unknown name is its own error
            raise MaarError(f"objective {self.name!r}: base {base_name!r} exposes no pairwise bounds; "
                            f"certified bases: {', '.join(certified_bases())}")
        base_arguments = {key: value for key, value in hyperparameters.items() if key not in own_names}
        unknown = set(base_arguments) - set(objective_class(base_name).hyperparameter_table())
        if unknown:
            known = ", ".join([*own_names, *objective_class(base_name).hyperparameter_table()])
            raise MaarError(f"objective {self.name!r} has no hyperparameter {sorted(unknown)[0]!r} (it has: {known})")
        base = create_objective(base_name, model, info, **base_arguments)
        assert isinstance(base, PairwiseBoundsObjective)  # _is_base checked its class
        self.base = base

    @classmethod
    def hyperparameter_table(cls, arguments: dict | None = None) -> dict[str, tuple[object, str]]:
        """MAAR's own hyperparameters, then those of its base (``arguments["base"]`` or the default), which it
        passes on."""
        base_name = cls.fixed_base or (arguments or {}).get("base") or DEFAULT_BASE
        return {**super().hyperparameter_table(), **objective_class(base_name).hyperparameter_table()}

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        settings = self.hyperparameters
        lam = linear_ramp(0.0, settings.lam, progress)
        tight_pairwise = settings.pairwise_bounds == "base" and lam > 0.0
        terms, pairwise_lower = self.base.loss_and_pairwise_lower(
            x, y, eps, progress, tight_pairwise=tight_pairwise, region=settings.kl_region)
        logits = terms.logits
        kl_bound = kl_upper_bound(logits, pairwise_upper_from_lower(pairwise_lower))
        regularizer = (misclassification_weights(logits, y, settings.weighting) * kl_bound).mean()
        total = terms.total + lam * regularizer
        return LossTerms(total, logits, {**terms.parts, "maar_reg": regularizer.detach(), "lambda": lam})


def _alias(base: str) -> type[Maar]:
    """``maar-BASE``: MAAR with a fixed base."""
    cls = type(f"Maar_{base.replace('-', '_')}", (Maar,), {
        "description": f"MAAR on the {base} loss (alias of maar with base={base})",
        "Hyperparameters": MaarHyperparameters, "fixed_base": base, "__module__": __name__})
    return register_objective(f"maar-{base}")(cls)


MAAR_ALIASES = {base: _alias(base) for base in BUILT_IN_BASES}
