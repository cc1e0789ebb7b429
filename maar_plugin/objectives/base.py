"""The objective interface: ``loss(x, y, eps, progress) -> LossTerms``, with typed, documented hyperparameters.

Each objective declares its hyperparameters as one dataclass whose fields carry the default and the
help string (``hyperparameter(default, help)``), so the CLI, the YAML config and the code read the
same table.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError


@dataclass
class LossTerms:
    """The loss to minimise, the clean logits it saw, and named scalar parts for logging.

    Parts may be detached 0-d tensors: the training loop reads them all in one device sync per step.
    """

    total: Tensor
    logits: Tensor
    parts: Mapping[str, float | Tensor]


def hyperparameter(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A hyperparameter field: default, one-line help and, for strings, the allowed values."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class NoHyperparameters:
    """An objective without hyperparameters."""


class Objective:
    """A training objective; subclasses set ``description``, ``Hyperparameters`` and implement ``loss``."""

    name: ClassVar[str]
    description: ClassVar[str]
    Hyperparameters: ClassVar[type] = NoHyperparameters

    def __init__(self, model: nn.Module, info: DatasetInfo, **hyperparameters: Any):
        self.model = model
        self.info = info
        self.hyperparameters = build_hyperparameters(self.Hyperparameters, hyperparameters, self.name)

    @classmethod
    def hyperparameter_table(cls, arguments: dict | None = None) -> dict[str, tuple[object, str]]:
        """name -> (default, help) of every hyperparameter; ``arguments`` (those given) matter only to a
        composite objective, whose table depends on its parts (MAAR's on its base)."""
        return {f.name: (f.default, f.metadata.get("help", "")) for f in dataclasses.fields(cls.Hyperparameters)}

    def loss(self, x: Tensor, y: Tensor, eps: float, progress: float) -> LossTerms:
        """The loss on a batch at radius ``eps`` (pixel space); ``progress`` ∈ [0,1] drives the schedules."""
        raise NotImplementedError


def build_hyperparameters(schema: type, values: dict[str, Any], objective_name: str) -> Any:
    """``schema(**values)`` after checking names, types (an int may stand for a float) and choices."""
    fields = {f.name: f for f in dataclasses.fields(schema)}
    checked = {}
    for key, value in values.items():
        if key not in fields:
            known = ", ".join(fields) or "none"
            raise MaarError(f"objective {objective_name!r} has no hyperparameter {key!r} (it has: {known})")
        checked[key] = _checked_value(fields[key], value, objective_name)
    return schema(**checked)


def _checked_value(field: dataclasses.Field, value: Any, objective_name: str) -> Any:
    expected = type(field.default)
    where = f"objective {objective_name!r}, hyperparameter {field.name!r}"
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        raise MaarError(f"{where}: expected {expected.__name__}, got {value!r}")
    choices = field.metadata.get("choices")
    if choices is not None and value not in choices:
        raise MaarError(f"{where}: {value!r} is not one of {', '.join(choices)}")
    return value
