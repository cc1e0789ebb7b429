"""Command-line options generated from ``TrainConfig``, so every option and its help live in one place."""
from __future__ import annotations

from collections.abc import Callable

import click
import yaml

from maar_plugin.cli_options import dataclass_flags, given_options
from maar_plugin.errors import MaarError
from maar_plugin.training.config import TrainConfig

_CUSTOM = ("objective_args", "lr_decay_epochs")


def train_options(command: Callable) -> Callable:
    """Decorate a click command with one option per TrainConfig field (all default to 'not given')."""
    command = dataclass_flags(TrainConfig, exclude=_CUSTOM)(command)
    command = click.option("--lr-decay-epochs", "lr_decay_epochs", default=None,
                           help="comma-separated epochs after which the LR decays, e.g. 10,15")(command)
    command = click.option("-o", "--objective-arg", "objective_arg", multiple=True, metavar="KEY=VALUE",
                           help="objective hyperparameter (repeatable), e.g. -o lam=0.5 -o weighting=soft")(command)
    command = click.option("--base", default=None, help="MAAR's base objective (any certified base, "
                                                         "`maar objectives`); shorthand for -o base=...")(command)
    command = click.option("--lam", type=float, default=None, help="MAAR's λ; shorthand for -o lam=...")(command)
    return command


def parse_objective_args(pairs: tuple[str, ...], base: str | None, lam: float | None) -> dict:
    """KEY=VALUE strings to a dict; values are read as YAML scalars (numbers, booleans, strings)."""
    arguments: dict = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise MaarError(f"objective argument {pair!r} is not KEY=VALUE")
        try:
            arguments[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise MaarError(f"objective argument {pair!r}: cannot read the value") from None
    if base is not None:
        arguments["base"] = base
    if lam is not None:
        arguments["lam"] = lam
    return arguments


def overrides_from_options(options: dict) -> dict:
    """The TrainConfig overrides given on the command line (None = not given)."""
    overrides = given_options(TrainConfig, options, exclude=_CUSTOM)
    decay = options.get("lr_decay_epochs")
    if decay is not None:
        try:
            overrides["lr_decay_epochs"] = [int(part) for part in decay.split(",") if part.strip()]
        except ValueError:
            raise MaarError(f"--lr-decay-epochs must be comma-separated integers, got {decay!r}") from None
    arguments = parse_objective_args(options.get("objective_arg", ()), options.get("base"), options.get("lam"))
    overrides["objective_args"] = arguments or None
    return overrides
