"""Rows of a results table: an objective with optional hyperparameters, written ``maar-ibp:lam=0.25:weighting=soft``.

Besides the objective's hyperparameters a row may set the training options of ``TRAINING_KEYS`` (e.g.
``exp-ibp:train_eps=0.2``, CTBench's way of training for a test radius of 0.1); the run is still evaluated
and certified at the recipe's radius.
"""
from __future__ import annotations

from dataclasses import dataclass

import yaml

from maar_plugin.errors import MaarError
from maar_plugin.objectives import objective_class, objective_hyperparameters

TRAINING_KEYS = ("train_eps",)  # TrainConfig options a row may set


@dataclass(frozen=True)
class Row:
    """One objective configuration; every seed of it is one training run."""

    objective: str
    args: tuple[tuple[str, object], ...] = ()

    @property
    def label(self) -> str:
        return ":".join([self.objective, *(f"{key}={value}" for key, value in self.args)])

    @property
    def directory_name(self) -> str:
        return self.label.replace(":", "_")

    def run_name(self, seed: int) -> str:
        return f"{self.directory_name}-s{seed}"

    @property
    def objective_args(self) -> dict:
        return {key: value for key, value in self.args if key not in TRAINING_KEYS}

    @property
    def training_args(self) -> dict:
        """The row's training options (``TRAINING_KEYS``), applied over the recipe's."""
        return {key: value for key, value in self.args if key in TRAINING_KEYS}

    @property
    def training_suffix(self) -> str:
        """``:train_eps=0.2`` and the like: how the row's training options appear in its label."""
        return "".join(f":{key}={value}" for key, value in self.args if key in TRAINING_KEYS)


def parse_row(text: str) -> Row:
    """``NAME[:KEY=VALUE...]``; the objective and its keys are checked against the registry."""
    name, *pairs = [part.strip() for part in text.strip().split(":")]
    if not name:
        raise MaarError(f"empty objective in {text!r}")
    objective_class(name)
    args = []
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise MaarError(f"{text!r}: {pair!r} is not KEY=VALUE")
        try:
            args.append((key, yaml.safe_load(value)))
        except yaml.YAMLError:
            raise MaarError(f"{text!r}: cannot read the value of {key}") from None
    objective_args = {key: value for key, value in args if key not in TRAINING_KEYS}
    accepted = objective_hyperparameters(name, objective_args)  # MAAR's depend on its base
    for key, value in args:
        if key in TRAINING_KEYS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise MaarError(f"{text!r}: {key} must be a number in (0, 1], got {value!r}")
        elif key not in accepted:
            raise MaarError(f"{text!r}: {key!r} is not a hyperparameter of {name} nor a training option "
                            f"({', '.join(TRAINING_KEYS)}); it has {', '.join(accepted) or '(none)'}")
    return Row(name, tuple(args))


def parse_rows(text: str) -> list[Row]:
    """Comma-separated rows, e.g. ``ibp,maar-ibp,maar-ibp:lam=1``."""
    rows = [parse_row(part) for part in text.split(",") if part.strip()]
    if not rows:
        raise MaarError("--objectives is empty")
    if len({row.label for row in rows}) != len(rows):
        raise MaarError(f"--objectives lists a row twice: {text}")
    return rows


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MaarError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise MaarError(f"--seeds must list distinct seeds, got {text!r}")
    return seeds
