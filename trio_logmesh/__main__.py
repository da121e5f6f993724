"""``python -m trio_logmesh`` is the ``logmesh`` command."""

from .cli._main import entry

entry()


