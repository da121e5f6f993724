"""The IPython extension: ``%load_ext trio_logmesh`` and the cell hooks.

One pre-/post-cell hook pair per shell, however often the extension is loaded; unloading
removes it.  The pre-cell hook tells the router which cell runs now (with its parent request,
read from the kernel).  The post-cell hook runs on the kernel's thread before the kernel
replies: it flushes every live mesh, blocking that thread (at most the cell timeout), so
every byte a rank wrote before the cell ended is in this cell's output before the cell goes
idle; then output is held until the next cell.  A kernel interrupt during that flush cancels
the flush only.  IPython itself is never imported here: it is taken from ``sys.modules``.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

from .._errors import LogmeshError
from ._cells import ROUTER, CellRoute, routable
from ._mesh import DEFAULT_CELL_TIMEOUT, LIVE, end_of_cell
from ._runtime import RuntimeClosed, current_runtime

_settings = {"cell_timeout": DEFAULT_CELL_TIMEOUT}


def set_cell_timeout(seconds: float) -> None:
    """Set how long the end of a cell waits for the ranks' output (default 3 s).

    A rank that does not answer in that time is named in one line at the end of the cell,
    and later cells wait for it only briefly until it speaks again.  Raises ``ValueError`` for
    anything but a positive number.
    """
    __tracebackhide__ = True
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"the cell timeout must be a positive number of seconds, "
                         f"not {seconds!r}")
    _settings["cell_timeout"] = float(seconds)


def cell_timeout() -> float:
    """The end-of-cell flush's timeout, in seconds."""
    return _settings["cell_timeout"]


def route_for(shell: Any) -> CellRoute:
    """Where the output of the cell the kernel runs now goes."""
    out, err = sys.stdout, sys.stderr
    kernel = getattr(shell, "kernel", None)
    if kernel is not None and routable(out) and routable(err):
        get_parent = getattr(kernel, "get_parent", None)
        parent = get_parent("shell") if get_parent is not None else shell.parent_header
        if parent:
            return CellRoute(out, err, parent=parent,
                             display_pub=getattr(shell, "display_pub", None))
    return CellRoute(out, err)


def _in_subshell() -> bool:
    # ipykernel 7 runs the cells of a subshell (a second console on the same kernel, widgets)
    # in other threads, at the same time as the main shell's cell: they are not the cells
    # the ranks' output belongs to.
    return threading.current_thread() is not threading.main_thread()


class CellHooks:
    """The pre-/post-cell hook pair of one shell."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def pre_run_cell(self, *_: Any) -> None:
        """A cell starts: its output goes to it."""
        if _in_subshell():
            return
        ROUTER.begin(route_for(self.shell))

    def post_run_cell(self, *_: Any) -> None:
        """A cell ended: flush every live mesh into it, then hold output until the next."""
        if _in_subshell():
            return
        try:
            runtime = current_runtime()
            if runtime is not None and LIVE:
                try:
                    runtime.call(end_of_cell, cell_timeout())
                except KeyboardInterrupt:
                    ROUTER.note("end-of-cell flush interrupted: what the ranks printed and "
                                "had not arrived yet shows at the top of the next cell")
                except RuntimeClosed:
                    pass
        except KeyboardInterrupt:  # an interrupt anywhere here ends the flush, not the hooks
            pass
        finally:
            ROUTER.end()

    def register(self) -> None:
        events = self.shell.events
        events.register("pre_run_cell", self.pre_run_cell)
        events.register("post_run_cell", self.post_run_cell)

    def unregister(self) -> None:
        events = self.shell.events
        events.unregister("pre_run_cell", self.pre_run_cell)
        events.unregister("post_run_cell", self.post_run_cell)


_hooks: weakref.WeakKeyDictionary[Any, CellHooks] = weakref.WeakKeyDictionary()


def _check_kernel(shell: Any) -> None:
    __tracebackhide__ = True
    if getattr(shell, "kernel", None) is None:
        return
    if not (routable(sys.stdout) and routable(sys.stderr)):
        import ipykernel  # in a kernel, it is there

        raise LogmeshError(
            "trio_logmesh's notebook extension needs ipykernel 6.29 or later, to send each "
            f"line to its cell (this kernel runs ipykernel {ipykernel.__version__})")


def load_ipython_extension(shell: Any) -> None:
    """Install the cell hooks in ``shell`` (once, however often this is called)."""
    __tracebackhide__ = True
    _check_kernel(shell)
    if shell in _hooks:
        return
    hooks = _hooks[shell] = CellHooks(shell)
    hooks.register()
    ROUTER.tracking = True
    # The cell that loads the extension is running: its pre-cell hook was not installed yet.
    if ROUTER.cell is None:
        hooks.pre_run_cell()


def unload_ipython_extension(shell: Any) -> None:
    """Remove the cell hooks from ``shell``.  Live meshes keep running; their output then
    goes to the kernel's output as it comes, with no end-of-cell flush."""
    hooks = _hooks.pop(shell, None)
    if hooks is not None:
        hooks.unregister()
    if not _hooks:
        ROUTER.tracking = False
        ROUTER.end()


def ensure_hooks() -> None:
    """In IPython, install the cell hooks if they are not."""
    __tracebackhide__ = True
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None  # type: ignore[attr-defined]
    if shell is not None and shell not in _hooks:
        load_ipython_extension(shell)
