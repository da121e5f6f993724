"""Running async functions on the notebook runtime from cells, and shutting it down."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from ._cells import ROUTER, CellRoute, _reset_parent
from ._mesh import stop_all
from ._runtime import close_runtime, current_runtime, get_runtime

T = TypeVar("T")


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
            _reset_parent(handle)


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
