"""Training objectives by name: ``create_objective("maar", model, info, lam=0.5)``; ``maar objectives`` lists them.

Built-ins: natural, pgd, ibp, crown-ibp, sabr, mtl-ibp, exp-ibp, cc-ibp, maar (+ one alias maar-NAME per
certified base). Third parties add objectives through the ``maar_plugin.objectives`` entry-point group
("name = module:Class").
"""
from maar_plugin.objectives import adversarial, certified, expressive, maar, natural, sabr  # noqa: F401  (register built-ins)
from maar_plugin.objectives.base import LossTerms, Objective, hyperparameter
from maar_plugin.objectives.certified import PairwiseBoundsObjective
from maar_plugin.objectives.registry import (
    ENTRY_POINT_GROUP,
    create_objective,
    list_objectives,
    objective_class,
    objective_hyperparameters,
    register_objective,
)

__all__ = ["ENTRY_POINT_GROUP", "LossTerms", "Objective", "PairwiseBoundsObjective", "create_objective",
           "hyperparameter", "list_objectives", "objective_class", "objective_hyperparameters", "register_objective"]
