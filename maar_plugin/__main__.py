"""``python -m maar_plugin``: the same as the ``maar`` command."""
from maar_plugin.cli import main

main()
