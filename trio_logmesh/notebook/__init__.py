"""trio_logmesh in notebooks: meshes that live across cells, each cell with its own output.

Load it with ``%load_ext trio_logmesh`` (``open_mesh`` does it too), then::

    from trio_logmesh import notebook as lmnb
    mesh = lmnb.open_mesh([sys.executable, "train.py"], procs=4)
    mesh.wait()      # exit codes by rank

What a rank prints while a cell runs shows in that cell, live, and every cell ends with a flush
of every live mesh, so the cell's output holds all of it; what comes between cells shows at
the top of the next cell.  The meshes live on a trio runtime in one background thread (see
``_runtime``), so output keeps streaming while a cell blocks.  The README's notebook section
has the details and the limits.

This package runs in the kernel, on top of ``host`` and ``view``; nothing else in
trio_logmesh imports it except the extension entry points, and it imports IPython only when
running inside it.
"""

from ._api import arun, open_mesh, run, shutdown
from ._extension import (
    cell_timeout,
    load_ipython_extension,
    set_cell_timeout,
    unload_ipython_extension,
)
from ._mesh import NotebookMesh
from ._runtime import RuntimeClosed

__all__ = [
    "NotebookMesh",
    "RuntimeClosed",
    "arun",
    "cell_timeout",
    "load_ipython_extension",
    "open_mesh",
    "run",
    "set_cell_timeout",
    "shutdown",
    "unload_ipython_extension",
]
