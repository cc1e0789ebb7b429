"""Recipes: shareable YAML files (``maar_plugin/recipes/``) that fix a setting's training schedule and how
its results are measured, each at full scale (a GPU) and at CPU scale (minutes on a laptop).

``base_args`` holds per-base hyperparameters (``{sabr: {shrinkage: 0.4}, ...}``): they apply to that base
and to every MAAR row over it, over the recipe's ``objective_args`` and under the command line's."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path

from maar_plugin.errors import MaarError
from maar_plugin.objectives import objective_class, objective_hyperparameters
from maar_plugin.objectives.maar import DEFAULT_BASE, Maar
from maar_plugin.training.config import TrainConfig, build_config, load_yaml_mapping

SCALES = ("full", "cpu")


@dataclass(frozen=True)
class EvaluationSettings:
    """How ``maar reproduce`` measures a trained run."""

    count: int = 10000
    crown_count: int = 1000
    pgd_steps: int = 50
    pgd_restarts: int = 3
    certify_count: int = 1000
    certify_timeout: float = 60.0
    certify_retry_timeout: float | None = None   # open instances are verified again with this timeout


@dataclass(frozen=True)
class Recipe:
    name: str
    setting: str
    model: str
    description: str
    sources: tuple[str, ...]
    scale: str
    training: dict
    evaluation: EvaluationSettings
    base_args: dict = field(default_factory=dict)


def _recipe_folder():
    return resources.files("maar_plugin") / "recipes"


def recipe_names() -> list[str]:
    """Names of the recipes shipped with the package."""
    return sorted(entry.name[: -len(".yaml")] for entry in _recipe_folder().iterdir() if entry.name.endswith(".yaml"))


def _read_recipe_file(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path.stem, load_yaml_mapping(path)
    if name_or_path not in recipe_names():
        raise MaarError(f"unknown recipe {name_or_path!r}; shipped recipes: {', '.join(recipe_names())} "
                        "(or give a path to a .yaml recipe)")
    with resources.as_file(_recipe_folder() / f"{name_or_path}.yaml") as file:
        return name_or_path, load_yaml_mapping(file)


def _merge(base: dict, override: dict) -> dict:
    merged = {**base, **override}
    if "objective_args" in base and "objective_args" in override:
        merged["objective_args"] = {**base["objective_args"], **override["objective_args"]}
    return merged


def load_recipe(name_or_path: str, scale: str = "full") -> Recipe:
    """A shipped recipe by name (``maar recipes``) or a recipe file, at ``scale`` ('full' or 'cpu')."""
    if scale not in SCALES:
        raise MaarError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    name, data = _read_recipe_file(name_or_path)
    unknown = sorted(set(data) - {"setting", "model", "description", "sources", "training", "evaluation", "scales",
                                  "base_args"})
    if unknown:
        raise MaarError(f"recipe {name}: unknown key(s) {', '.join(unknown)}")
    training, evaluation = dict(data.get("training") or {}), dict(data.get("evaluation") or {})
    base_args = _base_args(name, data.get("base_args"))
    if scale != "full":
        scaled = (data.get("scales") or {}).get(scale)
        if scaled is None:
            raise MaarError(f"recipe {name} has no {scale!r} scale")
        training = _merge(training, scaled.get("training") or {})
        evaluation = {**evaluation, **(scaled.get("evaluation") or {})}
        for base, arguments in _base_args(name, scaled.get("base_args")).items():
            base_args[base] = {**base_args.get(base, {}), **arguments}
    known = {spec.name for spec in fields(EvaluationSettings)}
    if set(evaluation) - known:
        raise MaarError(f"recipe {name}: unknown evaluation key(s) {', '.join(sorted(set(evaluation) - known))}")
    build_config(training)  # fail early on a bad recipe
    for base, arguments in base_args.items():
        build_config({"objective": base, "objective_args": arguments})
        unknown = sorted(set(arguments) - set(objective_hyperparameters(base)))
        if unknown:
            raise MaarError(f"recipe {name}: base_args of {base!r} has no hyperparameter(s) {', '.join(unknown)}")
    return Recipe(name=name, setting=str(data.get("setting", name)),
                  model=str(training.get("model", data.get("model"))),
                  description=str(data.get("description", "")), sources=tuple(data.get("sources") or ()),
                  scale=scale, training=training, evaluation=EvaluationSettings(**evaluation), base_args=base_args)


def _base_args(name: str, data: object) -> dict:
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(value, dict) for value in data.values()):
        raise MaarError(f"recipe {name}: base_args must map base names to hyperparameter mappings")
    for base in data:
        objective_class(base)  # an unknown objective is a one-line error
    return {base: dict(arguments) for base, arguments in data.items()}


def certified_base(objective: str, arguments: dict) -> str:
    """The base an objective's ``base_args`` come from: MAAR's base, otherwise the objective itself."""
    cls = objective_class(objective)
    if issubclass(cls, Maar):
        return cls.fixed_base or arguments.get("base") or DEFAULT_BASE
    return objective


def config_from_recipe(recipe_training: dict, *layers: dict | None, base_args: dict | None = None) -> TrainConfig:
    """Defaults <- recipe <- the recipe's ``base_args`` of the final base <- each later layer (a --config
    file, then flags).

    The recipe's objective hyperparameters are kept only where the final objective takes them, so one
    recipe serves every objective (``--objective ibp`` drops MAAR's λ); later layers are never filtered.
    """
    final_objective = recipe_training.get("objective", TrainConfig.objective)
    arguments = dict(recipe_training.get("objective_args") or {})
    for layer in layers:
        if layer and layer.get("objective") is not None:
            final_objective = layer["objective"]
        if layer and layer.get("objective_args"):
            arguments.update(layer["objective_args"])
    accepted = objective_hyperparameters(final_objective, arguments)
    recipe_arguments = {**(recipe_training.get("objective_args") or {}),
                        **(base_args or {}).get(certified_base(final_objective, arguments), {})}
    recipe_training = dict(recipe_training)
    recipe_training["objective_args"] = {key: value for key, value in recipe_arguments.items() if key in accepted}
    merged = recipe_training
    for layer in layers:
        if layer:
            merged = _merge(merged, {key: value for key, value in layer.items() if value is not None})
    config = build_config(merged)
    unknown = sorted(set(config.objective_args) - set(accepted))
    if unknown:
        raise MaarError(f"objective {final_objective!r} has no hyperparameter(s) {', '.join(unknown)} "
                        f"(it has: {', '.join(accepted) or 'none'})")
    return config
