"""Model registry in the style of timm: ``@register_model`` factories, ``create_model``, ``list_models``.

Third-party packages add models through the entry-point group ``maar_plugin.models``; each entry
point names a factory ``(info: DatasetInfo) -> nn.Sequential``, loaded only when models are listed
or created.
"""
from __future__ import annotations

import importlib.metadata
from collections.abc import Callable

from torch import nn

from maar_plugin.data import DatasetInfo
from maar_plugin.errors import MaarError
from maar_plugin.models.normalize import Normalize

ENTRY_POINT_GROUP = "maar_plugin.models"
# The layer types the bounds, export and verification code handle.
SUPPORTED_LAYERS = (Normalize, nn.Conv2d, nn.BatchNorm2d, nn.BatchNorm1d, nn.ReLU, nn.Flatten, nn.Linear)

ModelFactory = Callable[[DatasetInfo], nn.Module]
_FACTORIES: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register ``factory(info) -> nn.Sequential`` under ``name``; its docstring's first
    line is the description ``maar models`` shows."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"model {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return decorate


def _registered() -> dict[str, ModelFactory | importlib.metadata.EntryPoint]:
    """Built-in factories plus installed plugins' entry points, not yet imported (built-ins win a clash)."""
    found: dict[str, ModelFactory | importlib.metadata.EntryPoint] = {
        entry_point.name: entry_point for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    found.update(_FACTORIES)
    return found


def _load(name: str, source: ModelFactory | importlib.metadata.EntryPoint) -> ModelFactory:
    if not isinstance(source, importlib.metadata.EntryPoint):
        return source
    try:
        return source.load()
    except Exception as error:  # a third party's broken import must not crash the caller
        raise MaarError(f"model {name!r} from plugin {source.value!r} failed to load: {error}") from None


def list_models() -> list[str]:
    return sorted(_registered())


def model_descriptions() -> dict[str, str]:
    """Model name -> one-line description (the factory docstring's first line)."""
    descriptions = {}
    for name, source in sorted(_registered().items()):
        try:
            doc = (_load(name, source).__doc__ or "").strip()
        except MaarError as error:
            doc = f"(unavailable: {error})"
        descriptions[name] = doc.splitlines()[0] if doc else ""
    return descriptions


def create_model(name: str, info: DatasetInfo) -> nn.Sequential:
    """A fresh model for ``info``'s input shape and classes, checked to be ``Sequential(Normalize, ...)``
    of supported layers."""
    registered = _registered()
    if name not in registered:
        raise MaarError(f"unknown model {name!r}; known models: {', '.join(sorted(registered))}")
    return check_supported(_load(name, registered[name])(info), name)


def check_supported(model: nn.Module, name: str) -> nn.Sequential:
    """``model``, checked to be ``nn.Sequential(Normalize, ...)`` of supported layer types (else MaarError)."""
    if not isinstance(model, nn.Sequential) or len(model) == 0 or not isinstance(model[0], Normalize):
        raise MaarError(f"model {name!r} must be an nn.Sequential whose first layer is Normalize")
    unsupported = sorted({type(layer).__name__ for layer in model if not isinstance(layer, SUPPORTED_LAYERS)})
    if unsupported:
        allowed = ", ".join(layer.__name__ for layer in SUPPORTED_LAYERS)
        raise MaarError(f"model {name!r} uses unsupported layer(s) {', '.join(unsupported)}; allowed: {allowed}")
    return model
