"""``python -m trio_logmesh`` is the ``logmesh`` command."""

from ._cli import _entry

_entry()
