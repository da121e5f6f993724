"""The notebook's trio runtime: one background thread that owns every mesh across cells.

A kernel runs each cell on its main thread, inside its own asyncio loop, and a cell may block
that thread for minutes (``time.sleep``, a training step).  The ranks' pipes must be read
meanwhile, so the meshes cannot live on the kernel's loop (trio's guest mode on it starves
during a blocking cell, and deadlocks a blocking post-cell hook).  They live here instead:

* **One thread, one ``trio.run``.**  :class:`Runtime` starts a daemon thread, the one bare
  thread of the package; the runtime object owns it and :meth:`Runtime.close` joins it.  Its
  ``trio.run`` has one main task holding a nursery; every mesh, client and call runs in that
  nursery, and closing cancels it.
* **An empty context.**  The thread runs ``trio.run`` inside a fresh ``contextvars.Context``,
  and calls from cells are started by the runtime itself (``TrioToken.run_sync_soon``), not
  by ``trio.from_thread``, which would copy the calling cell's context -- and with it the
  kernel's output routing -- into every task spawned later.  Output is routed explicitly
  (``_cells``).
* **Ranks are forked on this thread**, which lives as long as the kernel: their parent-death
  signal follows the thread that forked them.
* **Calls** (:meth:`Runtime.call`) run an async function as a task of the runtime and wait for
  it in the caller's thread; a ``KeyboardInterrupt`` (a kernel interrupt) while waiting cancels
  that task only.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextvars
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs
import trio

from .._errors import LogmeshError

T = TypeVar("T")

#: Seconds :meth:`Runtime.close` waits for the runtime's thread to end.
CLOSE_WAIT = 10.0
#: Seconds a caller waits, after a KeyboardInterrupt, for its cancelled call to end.
CANCEL_WAIT = 2.0

#: User mistakes raised in the runtime: shown without the runtime's frames.
USER_ERRORS = (ValueError, TypeError, OSError, LogmeshError)


class RuntimeClosed(LogmeshError):
    """The notebook runtime was shut down (kernel exit, or ``shutdown()``)."""


@attrs.define(eq=False)
class Call:
    """One async function run on the runtime for a caller in another thread."""

    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    future: concurrent.futures.Future[Any] = attrs.field(factory=concurrent.futures.Future)
    _scope: trio.CancelScope | None = None
    _cancelled: bool = False
    _runtime: Runtime | None = None

    def cancel(self) -> None:
        """Cancel the call, from any thread: not started, it never starts; running, its task
        is cancelled."""
        if self.future.cancel():
            return
        if self._runtime is not None:
            self._runtime._soon(self._cancel_in_trio)

    def _cancel_in_trio(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def _run(self) -> None:
        __tracebackhide__ = True
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                result = await self.fn(*self.args)
                self.future.set_result(result)
                return
            self.future.set_exception(KeyboardInterrupt())  # our own scope: cancelled by the caller
        except trio.Cancelled:
            self.future.set_exception(RuntimeClosed("the notebook runtime was shut down"))
            raise
        except BaseException as exc:  # noqa: B036 -- it belongs to the caller
            self.future.set_exception(exc)


class Runtime:
    """The trio thread that owns every notebook mesh; see the module docstring.

    Create with :meth:`start` (it returns once the runtime takes calls).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._closing = False
        #: Called on the runtime before it closes (the meshes' shutdown), in order.
        self.before_close: list[Callable[[], Awaitable[None]]] = []

    @classmethod
    def start(cls) -> Runtime:
        """Start the runtime's thread; return once it takes calls."""
        self = cls()
        # A fresh, empty context: nothing of the cell that happens to start the runtime (the
        # kernel's output routing above all) leaks into its tasks.
        context = contextvars.Context()
        self._thread = threading.Thread(
            target=context.run, args=(self._main_thread,), name="trio_logmesh-notebook",
            daemon=True,  # atexit (below) closes it; a daemon is not joined before atexit runs
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    @property
    def running(self) -> bool:
        """Whether the runtime takes calls."""
        return self._token is not None and not self._closing and self.alive

    @property
    def alive(self) -> bool:
        """Whether the runtime's thread still runs."""
        return self._thread is not None and self._thread.is_alive()

    def in_runtime_thread(self) -> bool:
        """Whether the caller runs on the runtime's own thread."""
        return threading.current_thread() is self._thread

    def _main_thread(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # noqa: B036 -- reported to whoever waits for the start
            self._error = exc
        finally:
            self._token = None
            self._ready.set()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await trio.sleep_forever()

    def _soon(self, fn: Callable[..., object], *args: object) -> bool:
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            return False
        return True

    def submit(self, fn: Callable[..., Awaitable[T]], *args: Any) -> Call:
        """Start ``await fn(*args)`` as a task of the runtime; return the :class:`Call`.

        Raises :class:`RuntimeClosed` when the runtime is shut down.
        """
        call = Call(fn, args, runtime=self)
        if self._closing or not self._soon(self._start_call, call):
            raise RuntimeClosed("the notebook runtime was shut down")
        return call

    def _start_call(self, call: Call) -> None:
        # Runs in the runtime's entry-queue task: the task starts in the runtime's context.
        assert self._nursery is not None
        self._nursery.start_soon(call._run, name=f"notebook call {call.fn!r}")

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` on the runtime and return its result, from another thread.

        Its exception is raised here.  A ``KeyboardInterrupt`` while waiting cancels the call
        (waiting at most ``CANCEL_WAIT`` seconds for it to end) and is raised.  Raises
        ``RuntimeError`` on the runtime's own thread (it would wait for itself).
        """
        if self.in_runtime_thread():
            raise RuntimeError(
                "this blocks until the notebook runtime has run it, and was called on the "
                "runtime's own thread (from an async function run there): await it instead"
            )
        __tracebackhide__ = True  # IPython shows the caller's frames and the function's
        call = self.submit(fn, *args)
        try:
            error = call.future.exception()  # waits
        except KeyboardInterrupt:
            if not call.future.done():
                call.cancel()
                try:
                    concurrent.futures.wait([call.future], timeout=CANCEL_WAIT)
                except KeyboardInterrupt:
                    pass
            raise
        if error is not None:
            raise error
        return call.future.result()  # type: ignore[no-any-return]

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Run the ``before_close`` functions, cancel everything, and join the thread (at most
        ``timeout`` seconds in all).  Idempotent; safe from any thread but the runtime's."""
        if self._closing or self.in_runtime_thread():
            return
        self._closing = True
        if self._token is not None:
            self._soon(self._start_close)
        if self._thread is not None:
            self._thread.join(timeout)

    def _start_close(self) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(self._close_all)

    async def _close_all(self) -> None:
        try:
            for fn in self.before_close:
                await fn()
        finally:
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()


_runtime: Runtime | None = None
_lock = threading.Lock()


_at_exit_registered = False


def get_runtime() -> Runtime:
    """The process's runtime, started on first use (again after a shutdown), and closed at
    interpreter exit.  Raises :class:`RuntimeClosed` while a shutdown is under way."""
    global _runtime, _at_exit_registered
    with _lock:
        if _runtime is not None and _runtime.alive:
            if _runtime._closing:
                raise RuntimeClosed("the notebook runtime is shutting down")
            return _runtime
        _runtime = Runtime.start()
        if not _at_exit_registered:
            atexit.register(close_runtime)
            _at_exit_registered = True
        return _runtime


def close_runtime(timeout: float = CLOSE_WAIT) -> None:
    """Close the process's runtime, if one runs (see :meth:`Runtime.close`)."""
    runtime = _runtime
    if runtime is not None:
        runtime.close(timeout)


def current_runtime() -> Runtime | None:
    """The process's runtime if it was started and still runs, else None (never starts one)."""
    runtime = _runtime
    return runtime if runtime is not None and runtime.running else None
