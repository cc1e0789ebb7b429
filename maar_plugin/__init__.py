"""maar-plugin: MAAR certified training, VNN-COMP export and complete verification.

Importing the package applies the auto_LiRPA compatibility patches (see ``lirpa_compat``), so that
``auto_LiRPA`` imported afterwards works on torch 2.x.
"""
from maar_plugin import lirpa_compat

__version__ = "0.1.0"

lirpa_compat.apply()
