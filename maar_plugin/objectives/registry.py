"""Objective registry: built-ins register with ``@register_objective``, third parties through the
``maar_plugin.objectives`` entry-point group (value ``"module:Class"``), as timm does for models."""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError
from maar_plugin.objectives.base import Objective

ENTRY_POINT_GROUP = "maar_plugin.objectives"
_OBJECTIVES: dict[str, type[Objective]] = {}
_ObjectiveT = TypeVar("_ObjectiveT", bound=Objective)


def register_objective(name: str) -> Callable[[type[_ObjectiveT]], type[_ObjectiveT]]:
    """Class decorator: register an ``Objective`` subclass under ``name`` (also sets ``cls.name``)."""

    def decorate(cls: type[_ObjectiveT]) -> type[_ObjectiveT]:
        if name in _OBJECTIVES and _OBJECTIVES[name] is not cls:
            raise ValueError(f"objective {name!r} is already registered")
        cls.name = name
        _OBJECTIVES[name] = cls
        return cls

    return decorate


def create_objective(name: str, model: nn.Module, info: DatasetInfo, **hyperparameters: Any) -> Objective:
    """The objective ``name`` for ``model``; unknown names and hyperparameters raise MaarError."""
    return objective_class(name)(model, info, **hyperparameters)


def list_objectives() -> dict[str, str]:
    """name -> one-line description of every objective, built-in and from entry points."""
    names = sorted(set(_OBJECTIVES) | set(_entry_points()))
    return {name: objective_class(name).description for name in names}


def objective_hyperparameters(name: str, arguments: dict | None = None) -> dict[str, tuple[object, str]]:
    """name -> (default, help) of the objective's hyperparameters (given ``arguments``, e.g. MAAR's base)."""
    cls = objective_class(name)
    return cls.hyperparameter_table(arguments) if arguments else cls.hyperparameter_table()


def objective_class(name: str) -> type[Objective]:
    """The class registered under ``name``, loading it from its entry point when it is a third party's."""
    if name in _OBJECTIVES:
        return _OBJECTIVES[name]
    entry_point = _entry_points().get(name)
    if entry_point is None:
        known = ", ".join(sorted(set(_OBJECTIVES) | set(_entry_points())))
        raise MaarError(f"unknown objective {name!r}; known objectives: {known}")
    try:
        cls = entry_point.load()
    except Exception as error:  # a broken third-party package is a problem of the user's environment
        raise MaarError(f"objective {name!r} (entry point {entry_point.value!r}) failed to load: {error}") from None
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise MaarError(f"entry point {entry_point.value!r} of objective {name!r} is not an Objective subclass")
    if not hasattr(cls, "name"):
        cls.name = name
    return cls


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {entry_point.name: entry_point for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
