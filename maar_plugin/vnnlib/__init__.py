"""VNN-LIB properties: the data model, a reader for the v1 subset VNN-COMP uses, and a writer."""
from maar_plugin.vnnlib.property import Conjunction, VnnlibProperty

__all__ = ["Conjunction", "VnnlibProperty"]
