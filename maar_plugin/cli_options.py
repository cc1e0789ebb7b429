"""Command-line flags generated from an options dataclass, so that each option's default and help live once.

Every field becomes ``--field-name`` (``--prefix-field-name`` inside a nested options dataclass whose field
metadata names a ``prefix``), typed from its annotation, with ``choices`` from its metadata and its help
text followed by the default. Flags default to "not given" (None), so that a command can layer
defaults ← a file ← flags: :func:`given_options` returns only what was given, nested by dataclass.
"""
from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from typing import Any

import click


def _field_type(annotation: Any) -> type:
    arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
    return arguments[0] if arguments else annotation


def _nested(spec: dataclasses.Field, annotation: Any) -> bool:
    return dataclasses.is_dataclass(_field_type(annotation)) and "prefix" in spec.metadata


def _fields(cls: type, exclude: tuple[str, ...], prefix: str) -> list[tuple[str, str, dataclasses.Field, type]]:
    """(parameter name, flag, field, type) of every flag-carrying field, nested ones flattened."""
    hints = typing.get_type_hints(cls)
    found = []
    for spec in dataclasses.fields(cls):
        if spec.name in exclude:
            continue
        kind = _field_type(hints[spec.name])
        name = f"{prefix}_{spec.name}" if prefix else spec.name
        if _nested(spec, hints[spec.name]):
            found += _fields(kind, exclude, f"{prefix}_{spec.metadata['prefix']}" if prefix
                             else spec.metadata["prefix"])
        else:
            found.append((name, "--" + name.replace("_", "-"), spec, kind))
    return found


def _default_text(spec: dataclasses.Field) -> str:
    if spec.default is not dataclasses.MISSING:
        return str(spec.default)
    if spec.default_factory is not dataclasses.MISSING:
        return str(spec.default_factory())
    return "none"


def dataclass_flags(cls: type, exclude: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """A decorator adding one click option per field of the options dataclass ``cls`` (see the module docstring)."""

    def decorate(command: Callable) -> Callable:
        for name, flag, spec, kind in reversed(_fields(cls, exclude, "")):
            help_text = f"{spec.metadata.get('help', '')}  [default: {_default_text(spec)}]"
            if kind is bool:
                option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
            elif "choices" in spec.metadata:
                option = click.option(flag, name, type=click.Choice(list(spec.metadata["choices"])), default=None,
                                      help=help_text)
            else:
                option = click.option(flag, name, type={str: str, int: int, float: float}[kind], default=None,
                                      help=help_text)
            command = option(command)
        return command

    return decorate


def given_options(cls: type, values: dict[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` whose flags were given in ``values`` (click's parameters), nested dataclasses as
    dicts of their own given fields (absent when none was given)."""
    return _given(cls, values, exclude, "")


def _given(cls: type, values: dict[str, Any], exclude: tuple[str, ...], prefix: str) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    given: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name in exclude:
            continue
        name = f"{prefix}_{spec.name}" if prefix else spec.name
        if _nested(spec, hints[spec.name]):
            inner_prefix = f"{prefix}_{spec.metadata['prefix']}" if prefix else spec.metadata["prefix"]
            inner = _given(_field_type(hints[spec.name]), values, exclude, inner_prefix)
            if inner:
                given[spec.name] = inner
        elif values.get(name) is not None:
            given[spec.name] = values[name]
    return given


def flag_names(cls: type, exclude: tuple[str, ...] = ()) -> set[str]:
    """The click parameter names :func:`dataclass_flags` adds for ``cls``."""
    return {name for name, _, _, _ in _fields(cls, exclude, "")}


def with_given(options: Any, given: dict[str, Any]) -> Any:
    """``options`` (a dataclass instance) with the ``given`` fields replaced, nested dataclasses merged."""
    changes = {}
    for key, value in given.items():
        current = getattr(options, key)
        changes[key] = with_given(current, value) if dataclasses.is_dataclass(current) and isinstance(value, dict) \
            else value
    return dataclasses.replace(options, **changes)
