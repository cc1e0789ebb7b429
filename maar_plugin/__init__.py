"""maar-plugin: MAAR certified training, VNN-COMP export and complete verification.

Importing the package is cheap and needs no auto_LiRPA: modules that bound with auto_LiRPA import it
through :mod:`maar_plugin.bounds.lirpa`, which applies the compatibility patches first. The Python API
(``verify``, ``certify``, ``VerificationSpec``, ``VerifyOptions``; :mod:`maar_plugin.api`) is imported on
first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from maar_plugin.errors import MaarError

__version__ = "0.1.0"

_LAZY = {
    "verify": "maar_plugin.api", "certify": "maar_plugin.api", "VerificationResult": "maar_plugin.api",
    "Certification": "maar_plugin.api", "VerificationSpec": "maar_plugin.verification.spec",
    "VerifyOptions": "maar_plugin.verification.options", "BabOptions": "maar_plugin.verification.options",
}

__all__ = ["MaarError", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
