"""maar-plugin: MAAR certified training, VNN-COMP export and complete verification.

Importing the package is cheap and needs no auto_LiRPA: modules that bound with auto_LiRPA import it
through :mod:`maar_plugin.bounds.lirpa`, which applies the compatibility patches first.
"""
from maar_plugin.errors import MaarError

__version__ = "0.1.0"

__all__ = ["MaarError", "__version__"]
