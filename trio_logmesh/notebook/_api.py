"""The cell-facing functions: open a mesh, run async functions on the runtime, shut down."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import trio

from ..view._client import Fold, check_fold, check_mode
from ._cells import ROUTER, CellRoute, reset_parent
from ._extension import ensure_hooks
from ._mesh import NotebookMesh, call_for_cell, check_timeout, open_on_runtime, stop_all
from ._runtime import close_runtime, current_runtime, get_runtime

T = TypeVar("T")


def open_mesh(
    cmd: Sequence[str | os.PathLike[str]],
    procs: int = 1,
    *,
    aggregate_window_sec: float | None = None,
    level: int | str | None = logging.INFO,
    fold: Fold = "ranks",
    name: str | None = None,
    announce: bool = True,
    exit_timeout: float = 5.0,
    env: Mapping[str, str | None] | None = None,
    **options: Any,
) -> NotebookMesh:
    """Start ``procs`` copies of ``cmd`` that live across cells; return the mesh.

    The ranks run on the notebook runtime (a trio thread that outlives cells), so their output
    keeps streaming while a cell blocks.  In a Jupyter kernel a line shows in the cell that
    runs while it is printed, and every cell ends with a flush of every live mesh (see the
    README's notebook section); in IPython the extension's hooks are installed if they are not
    (``%load_ext trio_logmesh``).  In plain Python the lines go to ``sys.stdout`` and
    ``sys.stderr`` as they come.

    ``aggregate_window_sec``, ``level`` and ``fold`` are the client's mode
    (:meth:`~trio_logmesh.LoggingMeshClient.set_mode`); with a window, the repeats of a cell
    go into one display of that cell, updated in place.  ``name`` tags the lines of this mesh
    (``[name 3]``), for telling several meshes apart.  ``exit_timeout`` bounds the last flush
    when the mesh ends.  The other keyword arguments are :func:`~trio_logmesh.open_proc_mesh`'s
    (``env``, ``log_dir``, ``grace``, ``flush_interval``, ...).  The run directory is
    printed on stderr when ``announce``.

    Raises ``ValueError``/``TypeError`` for bad arguments and ``OSError`` when a rank cannot
    start (nothing is left running then).
    """
    __tracebackhide__ = True
    for bad in ("sink", "mirror"):
        if bad in options:
            raise TypeError(f"open_mesh() does not take {bad}=: the cells are the live view")
    check_mode(True, aggregate_window_sec, level)
    check_fold(fold)
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a string or None, not {type(name).__name__}")
    check_timeout(exit_timeout, "exit_timeout")
    ensure_hooks()
    mesh: NotebookMesh = call_for_cell(open_on_runtime, cmd, procs, dict(
        aggregate_window_sec=aggregate_window_sec, level=level,
        fold=fold, name=name, exit_timeout=exit_timeout,
        env=env, options=options))
    if announce:
        print(f"logmesh: {mesh.size} rank(s), logs in {mesh.run_dir}", file=sys.stderr,
              flush=True)
    return mesh


def _check_async_fn(fn: object, what: str) -> None:
    __tracebackhide__ = True
    if inspect.iscoroutine(fn):
        fn.close()
        raise TypeError(f"{what}() takes an async function and its arguments, not a coroutine: "
                        f"write {what}(f, x) rather than {what}(f(x))")
    if not callable(fn):
        raise TypeError(f"{what}() takes an async function, not {type(fn).__name__}")


async def _in_cell(route: CellRoute | None, fn: Callable[..., Awaitable[T]],
                   args: tuple[Any, ...]) -> T:
    __tracebackhide__ = True
    # What the function prints itself goes to the cell that called it.
    handles = route.bind() if route is not None else []
    try:
        result = fn(*args)
        if not inspect.isawaitable(result):
            raise TypeError(f"{fn!r} is not an async function: it returned "
                            f"{type(result).__name__}, not an awaitable")
        return await result
    finally:
        for handle in reversed(handles):
            reset_parent(handle)


def run(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await async_fn(*args)`` on the notebook runtime (where the meshes live) and
    return its result; for sync cells and plain Python.

    The calling thread blocks meanwhile; the meshes' output keeps streaming.  What the
    function prints goes to the calling cell.  Its exception is raised here.  A kernel
    interrupt (``KeyboardInterrupt``) cancels the function and is raised.  Raises
    ``RuntimeError`` when called on the runtime itself (``await`` the function there).
    """
    __tracebackhide__ = True
    _check_async_fn(async_fn, "run")
    return get_runtime().call(_in_cell, ROUTER.cell, async_fn, args)


async def arun(async_fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await async_fn(*args)`` on the notebook runtime and return its result; for async
    cells (asyncio, as ipykernel runs them, or ``%autoawait trio``).

    The caller's event loop stays free meanwhile.  Cancelling the caller cancels the
    function.  On the runtime itself it simply awaits the function.
    """
    __tracebackhide__ = True
    _check_async_fn(async_fn, "arun")
    runtime = get_runtime()
    if runtime.in_runtime_thread():
        return await async_fn(*args)
    call = runtime.submit(_in_cell, ROUTER.cell, async_fn, args)
    try:
        if _in_trio():  # %autoawait trio: a trio loop of the caller's own
            return await trio.to_thread.run_sync(  # type: ignore[no-any-return]
                call.future.result, abandon_on_cancel=True)
        import asyncio

        return await asyncio.wrap_future(call.future)  # type: ignore[no-any-return]
    except BaseException:
        call.cancel()
        raise


def _in_trio() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


def shutdown(grace: float | None = None) -> None:
    """Stop every live mesh (SIGTERM, SIGKILL after ``grace`` seconds, default each mesh's;
    their last output in this cell) and end the runtime's thread.  A later ``open_mesh``
    starts a new runtime.  Done by itself at interpreter exit (kernel shutdown or restart),
    with a 1 s grace and no output."""
    __tracebackhide__ = True
    runtime = current_runtime()
    if runtime is None:
        return
    runtime.call(stop_all, grace)
    close_runtime()
