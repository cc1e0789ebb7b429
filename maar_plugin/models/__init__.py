"""Model registry and the built-in architectures; every model is ``nn.Sequential(Normalize, ...)``."""
from maar_plugin.models import architectures  # noqa: F401  (registers the built-in models)
from maar_plugin.models.normalize import Normalize
from maar_plugin.models.registry import (
    SUPPORTED_LAYERS,
    check_supported,
    create_model,
    list_models,
    model_descriptions,
    register_model,
)

__all__ = [
    "SUPPORTED_LAYERS",
    "Normalize",
    "check_supported",
    "create_model",
    "list_models",
    "model_descriptions",
    "register_model",
]
