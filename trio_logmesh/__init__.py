"""trio_logmesh: the live stdout/stderr of a mesh of worker processes, for trio drivers.

Complete (an exact flush barrier), readable (aggregated across ranks), kept in per-process
files, with Python logging levels set from the driver.  See the README for a tour.
"""

from ._bootstrap import ProcMesh, default_log_root, is_python_command, open_proc_mesh
from ._client import LoggingMeshClient
from ._errors import FlushTimeout, LogmeshError
from ._records import GroupLine, LogLines, Notice, Output, format_output
from ._sinks import (
    CallableSink,
    ChannelSink,
    FileSink,
    JsonSink,
    Sink,
    TerminalSink,
    make_sink,
)

__version__ = "0.1.0"

__all__ = [
    "CallableSink",
    "ChannelSink",
    "FileSink",
    "FlushTimeout",
    "JsonSink",
    "GroupLine",
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
    "is_python_command",
    "make_sink",
    "open_proc_mesh",
]
