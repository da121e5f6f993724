"""A mesh that lives across cells: ``open_mesh`` and :class:`NotebookMesh`.

Each mesh is one task of the runtime (``_runtime``): ``open_proc_mesh`` and
``open_logging_client`` with a :class:`MeshSink` that renders its output for the router
(``_cells``).  The task ends when the mesh is stopped, when every rank has exited and its
output was shown, or when the runtime closes (kernel exit).  Cells talk to it through the
handle's blocking methods, which run on the runtime.

At the end of every cell, :func:`end_of_cell` flushes every live mesh with a timeout.  A rank
that did not answer is named in one line, and later cells wait for it only briefly (it is
*silent*) until it speaks again: prints something, exits, or answers such a brief barrier.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import trio

from .._errors import ClientClosed, ClientReplaced, FlushTimeout, LogmeshError
from ..host._mesh import ProcMesh, open_proc_mesh
from ..view._aggregate import fold_ranks
from ..view._client import Fold, LoggingMeshClient, check_fold, check_mode, open_logging_client
from ..view._records import GroupLine, LogLines, Notice, Output
from ._cells import ROUTER, Piece, Router
from ._runtime import USER_ERRORS, get_runtime

#: Seconds a later cell waits for a rank that fell silent at an earlier cell's end.
SILENT_PROBE = 0.2
#: Grace (SIGTERM to SIGKILL) for the meshes still running when the kernel exits.
EXIT_GRACE = 1.0
#: Seconds ``stop()`` waits for what the ranks printed before it (their buffers too) to come
#: out, before it signals them; at kernel exit, ``EXIT_FLUSH``.
STOP_FLUSH = 2.0
EXIT_FLUSH = 0.5
#: The end-of-cell flush's timeout, seconds (``set_cell_timeout``).
DEFAULT_CELL_TIMEOUT = 3.0

#: Live meshes, in the order they were opened.  Changed on the runtime's thread only.
LIVE: list[NotebookMesh] = []


class MeshSink:
    """The sink of a notebook mesh: renders its output and hands it to the router.

    It counts what each rank said (a line, a summary it is part of, a note about it), which is
    how a silent rank is known to have spoken again.
    """

    def __init__(self, router: Router, size: int, name: str | None) -> None:
        self.router = router
        self.heard = [0] * size
        self._label = f"{name} " if name else ""
        self._note_label = f"{name}: " if name else ""

    async def emit(self, items: Sequence[Output]) -> None:
        """Render ``items`` and route them to the current cell (or hold them)."""
        pieces: list[Piece] = []
        notes: list[Piece] = []
        heard = self.heard
        label = self._label
        for item in items:
            if isinstance(item, LogLines):
                heard[item.rank] += 1
                p = f"[{label}{item.rank}] "
                pieces.append(Piece(item.stream, p + item.text.replace("\n", "\n" + p) + "\n",
                                    item.line_count))
            elif isinstance(item, GroupLine):
                for r in item.ranks:
                    heard[r] += 1
                # A folded block (a traceback) is several lines: each carries the tag.
                tag = f"[{label}{item.prefix()[1:]} "
                pieces.append(Piece("group", tag + item.text.replace("\n", "\n" + tag) + "\n",
                                    item.text.count("\n") + 1))
            elif isinstance(item, Notice):
                if item.rank is not None:
                    heard[item.rank] += 1
                notes.append(Piece(item.stream, f"[logmesh] {self._note_label}{item.text}\n"))
        await emit(self.router, pieces, notes)

    async def note(self, text: str) -> None:
        """A ``[logmesh]`` note about this mesh on stderr."""
        await emit(self.router, (), [Piece("stderr", f"[logmesh] {self._note_label}{text}\n")])


async def emit(router: Router, pieces: Sequence[Piece], notes: Sequence[Piece] = ()) -> None:
    """Route output from the runtime: a plain route is written here, off the lock."""
    route = router.emit(pieces, notes)
    if route is not None:
        await route.write([*pieces, *notes])


@attrs.define(eq=False)
class NotebookMesh:
    """A mesh opened by :func:`open_mesh`: its ranks run, and their output streams into the
    cells, until :meth:`stop`, until every rank has exited, or until the kernel exits.

    The methods block the calling cell (the output keeps streaming meanwhile) and may be
    interrupted; ``proc_mesh`` and ``client`` are the trio objects, for async functions run
    with :func:`~trio_logmesh.notebook.run`.
    """

    name: str | None
    _proc_mesh: ProcMesh
    _client: LoggingMeshClient
    _sink: MeshSink
    _stop_grace: float | None = None
    _stop_flush: float = STOP_FLUSH
    _stop: trio.Event = attrs.field(factory=trio.Event)
    _ended: trio.Event = attrs.field(factory=trio.Event)
    #: Ranks that did not answer an end-of-cell flush: rank -> ``sink.heard`` then.
    _silent: dict[int, int] = attrs.field(factory=dict)
    _error: BaseException | None = None

    # -- what a cell can read --------------------------------------------------------------
    @property
    def size(self) -> int:
        """The number of ranks."""
        return self._proc_mesh.size

    @property
    def run_dir(self) -> str:
        """The directory of the per-rank files."""
        return self._proc_mesh.run_dir

    @property
    def pids(self) -> list[int]:
        """The ranks' process ids."""
        return self._proc_mesh.pids

    @property
    def returncodes(self) -> list[int | None]:
        """Exit codes by rank (None while running; negative: killed by that signal)."""
        return self._proc_mesh.returncodes

    @property
    def closed(self) -> bool:
        """Whether the mesh has ended (stopped, every rank exited, or the kernel exiting)."""
        return self._ended.is_set()

    @property
    def proc_mesh(self) -> ProcMesh:
        """The :class:`~trio_logmesh.ProcMesh` (use it on the runtime, from ``run``)."""
        return self._proc_mesh

    @property
    def client(self) -> LoggingMeshClient:
        """The :class:`~trio_logmesh.LoggingMeshClient` (use it on the runtime)."""
        return self._client

    def log_files(self, rank: int) -> tuple[str, str]:
        """The paths of ``rank``'s stdout and stderr files."""
        return self._proc_mesh.log_files(rank)

    def __repr__(self) -> str:
        name = f" {self.name!r}" if self.name else ""
        state = "ended" if self.closed else "running"
        return f"<NotebookMesh{name}: {self.size} rank(s), {state}, logs in {self.run_dir}>"

    # -- what a cell can do ----------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> list[int]:
        """Wait until every rank has exited; return the exit codes by rank.

        Raises ``TimeoutError`` after ``timeout`` seconds (the ranks go on).  A kernel
        interrupt stops the waiting, not the ranks.
        """
        __tracebackhide__ = True
        check_timeout(timeout)
        return call_for_cell(self._wait, timeout)

    async def _wait(self, timeout: float | None) -> list[int]:
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            return await self._proc_mesh.wait()
        raise TimeoutError(f"ranks still running after {timeout:g} s: "
                           f"{fold_ranks(r for r, c in enumerate(self.returncodes) if c is None)}")

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every byte each rank wrote before this call is in the cell's output.

        Raises :class:`~trio_logmesh.FlushTimeout` naming the ranks that did not answer in
        ``timeout`` seconds.  Does nothing on an ended mesh (everything was shown).
        """
        __tracebackhide__ = True
        check_timeout(timeout)
        call_for_cell(self._flush, timeout)

    async def _flush(self, timeout: float | None) -> None:
        if self.closed:
            return
        try:
            await self._client.flush(timeout)
        except (ClientClosed, ClientReplaced):
            if not self.closed:
                raise

    def stop(self, grace: float | None = None) -> list[int]:
        """Stop the ranks (SIGTERM, then SIGKILL after ``grace`` seconds, default the mesh's),
        show their last output in this cell, close the mesh; return the exit codes by rank.

        Idempotent: on an ended mesh it returns the codes.
        """
        __tracebackhide__ = True
        if grace is not None:
            check_timeout(grace, "grace")
        return call_for_cell(self._stop_and_wait, grace)

    async def _stop_and_wait(self, grace: float | None = None,
                             flush: float = STOP_FLUSH) -> list[int]:
        if not self._stop.is_set():
            self._stop_grace = grace
            self._stop_flush = flush
            self._stop.set()
        await self._ended.wait()
        self._raise_failure()
        return [c if c is not None else -signal.SIGKILL for c in self.returncodes]

    def set_mode(
        self,
        stream_to_client: bool = True,
        aggregate_window_sec: float | None = None,
        level: int | str | None = logging.INFO,
        *,
        fold: Fold = "ranks",
    ) -> None:
        """Change the aggregation window, how it folds and the ranks' logging level, as
        :meth:`LoggingMeshClient.set_mode` (``ValueError`` for a window without streaming or
        an unknown ``fold``)."""
        __tracebackhide__ = True
        check_mode(stream_to_client, aggregate_window_sec, level)
        check_fold(fold)
        call_for_cell(self._set_mode, stream_to_client, aggregate_window_sec, level, fold)

    async def _set_mode(self, stream: bool, window: float | None, level: int | str | None,
                        fold: Fold) -> None:
        self._client.set_mode(stream, window, level, fold=fold)

    def send_signal(self, sig: int, ranks: Iterable[int] | None = None) -> None:
        """Send ``sig`` to the ranks' process groups (all, or the given ranks)."""
        __tracebackhide__ = True
        chosen = None if ranks is None else list(ranks)
        if chosen is not None and not set(chosen) <= set(range(self.size)):
            raise ValueError(f"ranks {sorted(set(chosen) - set(range(self.size)))} are not in "
                             f"a mesh of {self.size}")
        call_for_cell(self._send_signal, sig, chosen)

    async def _send_signal(self, sig: int, ranks: list[int] | None) -> None:
        self._proc_mesh.send_signal(sig, ranks)

    # -- on the runtime ----------------------------------------------------------------------
    def _raise_failure(self) -> None:
        if self._error is not None:
            raise LogmeshError(f"this mesh's live view failed: {self._error!r}") \
                from self._error

    async def end_of_cell(self, timeout: float) -> None:
        """Flush for the end of a cell: wait ``timeout`` for the ranks that answer, briefly
        for those that fell silent before; one note names the ranks that did not answer."""
        if self.closed:
            return
        heard = self._sink.heard
        for r, at in list(self._silent.items()):
            if heard[r] != at:  # it spoke since: it is waited for in full again
                del self._silent[r]
        silent = sorted(self._silent)
        others = [r for r in range(self.size) if r not in self._silent]
        notes: list[str] = []

        async def flush_others() -> None:
            try:
                await self._client.flush(timeout, ranks=others)
            except FlushTimeout as exc:
                for r in exc.missing_ranks:
                    self._silent[r] = heard[r]
                notes.append(_silent_note(exc, timeout))

        async def probe_silent() -> None:
            try:
                await self._client.flush(min(SILENT_PROBE, timeout), ranks=silent)
                missing: list[int] = []
            except FlushTimeout as exc:
                missing = exc.missing_ranks
            for r in silent:
                if r not in missing:
                    self._silent.pop(r, None)
            if missing:
                notes.append(f"end of cell: {_ranks(missing)} still silent (since an earlier "
                             "cell; not waited for), so this cell may lack what "
                             f"{'it' if len(missing) == 1 else 'they'} printed")

        ending = False
        try:
            async with trio.open_nursery() as nursery:
                if others:
                    nursery.start_soon(flush_others)
                if silent:
                    nursery.start_soon(probe_silent)
        except* (ClientClosed, ClientReplaced):
            ending = True  # the mesh is ending: its last output is being shown
        if ending:
            return
        for note in notes:
            await self._sink.note(note)


def _ranks(ranks: Sequence[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {fold_ranks(ranks)}"


def _silent_note(exc: FlushTimeout, timeout: float) -> str:
    missing = exc.missing_ranks
    if not missing:  # every rank answered; the summaries of the window did not make it
        return f"end of cell: the output did not all reach the cell within {timeout:g} s"
    why = "; ".join(f"rank {r} {exc.reasons[r]}" for r in missing[:4] if r in exc.reasons)
    more = f"; and {len(missing) - 4} more" if len(missing) > 4 else ""
    return (f"end of cell: no answer from {_ranks(missing)} within {timeout:g} s ({why}{more});"
            f" what {'it' if len(missing) == 1 else 'they'} printed may show in a later cell")


def check_timeout(value: float | None, name: str = "timeout") -> None:
    __tracebackhide__ = True
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not value >= 0):
        raise ValueError(f"{name} must be None or a number of seconds >= 0, not {value!r}")


def call_for_cell(fn: Any, *args: Any) -> Any:
    """Run ``fn`` on the runtime for a cell; a user's mistake comes out without our frames."""
    __tracebackhide__ = True
    try:
        return get_runtime().call(fn, *args)
    except USER_ERRORS as exc:
        raise exc.with_traceback(None) from exc.__cause__


async def end_of_cell(timeout: float) -> None:
    """The end-of-cell flush of every live mesh, concurrently."""
    async with trio.open_nursery() as nursery:
        for mesh in list(LIVE):
            nursery.start_soon(mesh.end_of_cell, timeout)


async def stop_all(grace: float | None = None, flush: float = STOP_FLUSH) -> None:
    """Stop every live mesh and wait until each has ended (its last output shown)."""
    async with trio.open_nursery() as nursery:
        for mesh in list(LIVE):
            nursery.start_soon(mesh._stop_and_wait, grace, flush)


async def stop_all_quickly() -> None:
    """The runtime is closing: stop every mesh still live, with short waits."""
    await stop_all(EXIT_GRACE, EXIT_FLUSH)


_exit_hook_installed = False


async def open_on_runtime(cmd: Sequence[str | os.PathLike[str]], procs: int, spec: dict[str, Any]) -> Any:
    """Start a mesh task in the runtime's nursery; return its handle once it runs."""
    global _exit_hook_installed
    runtime = get_runtime()
    if stop_all_quickly not in runtime.before_close:
        runtime.before_close.append(stop_all_quickly)
    if not _exit_hook_installed:
        # Runs before the runtime closes (atexit runs the latest first): at interpreter exit
        # the kernel's streams are closing, so the meshes' last words are not shown.
        atexit.register(ROUTER.close)
        _exit_hook_installed = True
    assert runtime._nursery is not None
    return await runtime._nursery.start(_serve_mesh, cmd, procs, spec)


async def _serve_mesh(
    cmd: Sequence[str | os.PathLike[str]], procs: int, spec: dict[str, Any],
    task_status: trio.TaskStatus[NotebookMesh] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The task of one mesh, in the runtime's nursery (see the module docstring)."""
    mesh: NotebookMesh | None = None
    try:
        async with open_proc_mesh(cmd, procs, env=spec["env"], announce=False,
                                  **spec["options"]) as pm:
            sink = MeshSink(ROUTER, pm.size, spec["name"])
            async with open_logging_client(
                pm, sink=sink, aggregate_window_sec=spec["aggregate_window_sec"],
                level=spec["level"], fold=spec["fold"],
                exit_timeout=spec["exit_timeout"],
            ) as client:
                mesh = NotebookMesh(spec["name"], pm, client, sink)
                LIVE.append(mesh)
                task_status.started(mesh)
                async with trio.open_nursery() as nursery:
                    async def finished() -> None:
                        await client.wait_finished()
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(finished)
                    await mesh._stop.wait()
                    # What the ranks printed before stop() -- in their buffers too -- comes
                    # out first (a SIGTERM would lose their buffers); then stop them, then
                    # leave: the client's last flush only waits for their last output.
                    with trio.move_on_after(mesh._stop_flush):
                        try:
                            await client.flush()
                        except LogmeshError:
                            pass
                    await pm.stop(mesh._stop_grace)
                    nursery.cancel_scope.cancel()
    except Exception as exc:
        if mesh is None:
            raise  # opening failed: the caller of open_mesh gets it
        mesh._error = exc
        await mesh._sink.note(f"the mesh's live view failed: {exc!r}; the ranks were stopped "
                              f"and their files are in {mesh.run_dir}")
    finally:
        if mesh is not None:
            if mesh in LIVE:
                LIVE.remove(mesh)
            mesh._ended.set()
