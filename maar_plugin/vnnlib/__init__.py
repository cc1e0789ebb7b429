"""VNN-LIB properties: the data model, a reader for the v1 subset VNN-COMP uses, and a writer."""
from maar_plugin.vnnlib.property import Conjunction, VnnlibProperty
from maar_plugin.vnnlib.reader import read_vnnlib, read_vnnlib_cases
from maar_plugin.vnnlib.writer import write_robustness_vnnlib

__all__ = ["Conjunction", "VnnlibProperty", "read_vnnlib", "read_vnnlib_cases", "write_robustness_vnnlib"]
