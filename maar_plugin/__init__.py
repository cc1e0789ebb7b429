"""maar-plugin: MAAR certified training, VNN-COMP export and complete verification.

Importing the package applies the auto_LiRPA compatibility patches (see ``lirpa_compat``), so that
``auto_LiRPA`` imported afterwards works on torch 2.x. An auto_LiRPA of a version this plugin does not
know is not an error here but in the modules that bound with it (they apply the patches again before
importing auto_LiRPA), so the ``maar`` command can report it as one line.
"""
from maar_plugin import lirpa_compat
from maar_plugin.errors import MaarError

__version__ = "0.1.0"

try:
    lirpa_compat.apply()
except MaarError:
    pass  # raised again by maar_plugin.bounds.lirpa / maar_plugin.verification.bounds on import
