"""trio_logmesh: the live stdout/stderr of a mesh of worker processes, for trio drivers.

Complete (an exact flush barrier), readable (aggregated across ranks), kept in per-process
files, with Python logging levels set from the driver.  See the README for a tour.

The code is layered by where it runs: ``protocol`` (frames and the control channel, the same
on every side), ``host`` (the ranks' processes, pipes and files), ``child`` (the agent inside
each Python rank), ``view`` (the driver's client, aggregation and sinks), ``hostmesh`` (the
driver's side of a run over many hosts: agents dial back over TLS), ``cli`` and ``bench``.
The public names are re-exported here.
"""

from typing import Any

from ._errors import ClientClosed, ClientReplaced, FlushTimeout, HostLost, LogmeshError
from .host._launch import default_log_root
from .host._mesh import ProcMesh, open_proc_mesh, register_view_factory
from .hostmesh._mesh import HostMesh, open_host_mesh
from .view._client import LoggingMeshClient, open_logging_client
from .view._records import GroupLine, LogLines, Notice, Output, format_output
from .view._sinks import (
    CallableSink,
    ChannelSink,
    FileSink,
    JsonSink,
    Sink,
    TerminalSink,
    make_sink,
)

# The mesh makes the client of `mesh.logging_option(...)` through this hook: the host
# never imports the view.
register_view_factory(LoggingMeshClient._for_mesh)

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext trio_logmesh``: each cell shows what the ranks printed while it ran.

    Installs one pre-/post-cell hook pair in the shell (loading again keeps one); see
    :mod:`trio_logmesh.notebook`.  The notebook support is imported only now, so importing
    trio_logmesh never imports IPython.
    """
    from .notebook._extension import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext trio_logmesh``: removes the cell hooks (live meshes keep running)."""
    from .notebook._extension import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "CallableSink",
    "ChannelSink",
    "ClientClosed",
    "ClientReplaced",
    "FileSink",
    "FlushTimeout",
    "GroupLine",
    "HostLost",
    "HostMesh",
    "JsonSink",
    "LogLines",
    "LoggingMeshClient",
    "LogmeshError",
    "Notice",
    "Output",
    "ProcMesh",
    "Sink",
    "TerminalSink",
    "default_log_root",
    "format_output",
    "load_ipython_extension",
    "make_sink",
    "open_host_mesh",
    "open_logging_client",
    "open_proc_mesh",
    "unload_ipython_extension",
]
