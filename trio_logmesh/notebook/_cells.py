"""Which cell a line goes to: the router between the meshes' sinks and the kernel's output.

ipykernel sends each piece of output with the header of the request that caused it (the
*parent*), and frontends (JupyterLab, nbclient) file output under the cell of that parent.
The kernel's streams find the parent in a context variable, falling back to whichever
request the kernel handled last -- a completion request, a widget message -- and trio tasks
inherit the context of whoever spawned them.  So nothing here relies on context: every write
names its cell's parent explicitly (``set_thread_parent`` on ipykernel 7, the streams'
``_parent_header`` context variable on 6.29-6.31), and displays are sent with it.

:class:`Router` keeps the cell running now (a :class:`CellRoute`, set by the pre-cell hook
and cleared by the post-cell hook once the end-of-cell flush is done).  Output that comes
while no cell runs is held, bounded and counted, and written at the top of the next cell after
a note.  Aggregated summaries of a cell go into one display of that cell, updated in place.
Outside a Jupyter kernel (terminal IPython, plain Python) a route writes to ``sys.stdout`` and
``sys.stderr`` through the package's non-blocking writer; without the extension's hooks
nothing is held (no cells).
"""

from __future__ import annotations

import collections
import contextvars
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any, Literal, TextIO

import attrs

from ..view._writer import TextOutput

Kind = Literal["stdout", "stderr", "group"]

#: What is held between cells, at most (the oldest go first, counted); the files keep all.
HOLD_LINES = 10_000
HOLD_BYTES = 1024 * 1024
#: Notes of the pipeline (exits, drops) held between cells, at most.
HOLD_NOTES = 1_000
#: Summary lines one cell's display keeps (the newest), at most.
DISPLAY_LINES = 1_000

DISPLAY_HEADER = "[logmesh] lines folded across ranks in this cell (aggregated):"


@attrs.frozen
class Piece:
    """Rendered output: ``text`` (whole lines, each ending in ``\\n``) of ``lines`` lines, for
    a stream or, as ``"group"``, for the cell's summary display."""

    kind: Kind
    text: str
    lines: int = 1


def routable(stream: object) -> bool:
    """Whether ``stream`` is an ipykernel output stream whose parent can be set per task."""
    if hasattr(stream, "set_thread_parent") and hasattr(stream, "reset_thread_parent"):
        return True
    return isinstance(getattr(stream, "_parent_header", None), contextvars.ContextVar)


def set_parent(obj: Any, parent: dict[str, Any]) -> tuple[Any, Any]:
    """Make ``parent`` the parent of what ``obj`` (a stream or display publisher) sends from
    the current context; return what :func:`reset_parent` needs."""
    setter = getattr(obj, "set_thread_parent", None)
    if setter is not None:
        return obj, setter(parent)
    from jupyter_client.session import extract_header  # only ever in a kernel

    var: contextvars.ContextVar[Any] = obj._parent_header
    return var, var.set(extract_header(parent))


def reset_parent(handle: tuple[Any, Any]) -> None:
    obj, token = handle
    if isinstance(obj, contextvars.ContextVar):
        obj.reset(token)
    else:
        obj.reset_thread_parent(token)


@attrs.define(eq=False)
class CellRoute:
    """Where one cell's output goes.

    In a kernel: its streams ``out``/``err`` with the cell's ``parent`` request, and its
    display publisher for the summary display.  Elsewhere (``parent`` None): the streams as
    they are, through non-blocking writers.
    """

    out: TextIO
    err: TextIO
    parent: dict[str, Any] | None = None
    display_pub: Any = None
    display_id: str = attrs.field(factory=lambda: f"trio_logmesh-{uuid.uuid4().hex}")
    groups: collections.deque[str] = attrs.field(
        factory=lambda: collections.deque(maxlen=DISPLAY_LINES))
    groups_seen: int = 0
    display_shown: bool = False
    _outputs: dict[str, TextOutput] | None = None

    @property
    def kernel(self) -> bool:
        """Whether this route writes to a Jupyter kernel's streams (appends that never
        block, so they are made at once, from any thread)."""
        return routable(self.out) and routable(self.err)

    def stream(self, kind: str) -> TextIO:
        return self.err if kind == "stderr" else self.out

    def write_now(self, pieces: Sequence[Piece]) -> None:
        """Write ``pieces`` at once (kernel streams never block; on plain streams this is
        for the user's own thread).  Summary pieces go to the cell's display (in a kernel
        cell) or stdout."""
        texts: list[Piece] = []
        groups: list[Piece] = []
        for p in pieces:
            (groups if p.kind == "group" and self.parent is not None else texts).append(p)
        for kind, text in _runs(texts):
            stream = self.stream(kind)
            if self.parent is not None:
                handle = set_parent(stream, self.parent)
                try:
                    stream.write(text)
                finally:
                    reset_parent(handle)
            else:
                stream.write(text)
                if not self.kernel:
                    stream.flush()
        if groups:
            self.show_groups(groups)

    async def write(self, pieces: Sequence[Piece]) -> None:
        """Write ``pieces`` on plain streams without blocking the trio loop."""
        if self._outputs is None:
            self._outputs = {"stdout": TextOutput(self.out), "stderr": TextOutput(self.err)}
        for kind, text in _runs(pieces):
            await self._outputs["stderr" if kind == "stderr" else "stdout"].write(
                [text.encode("utf-8", "replace")])

    def show_groups(self, pieces: Sequence[Piece]) -> None:
        """Add summary lines to this cell's display: created at the first, updated after."""
        for p in pieces:
            self.groups.extend(p.text.rstrip("\n").split("\n"))
            self.groups_seen += p.lines
        lines = [DISPLAY_HEADER]
        if self.groups_seen > len(self.groups):
            lines.append(f"[logmesh] ({self.groups_seen - len(self.groups):,} earlier summary "
                         "lines not shown)")
        lines.extend(self.groups)
        pub = self.display_pub
        if pub is None or self.parent is None:
            return
        update = self.display_shown
        if not update:
            # Whatever the streams hold goes out first, so the display sits after it.
            for stream in (self.out, self.err):
                stream.flush()
        content = {"data": {"text/plain": "\n".join(lines)}, "metadata": {},
                   "transient": {"display_id": self.display_id}}
        pub.session.send(pub.pub_socket, "update_display_data" if update else "display_data",
                         content, parent=self.parent, ident=pub.topic)
        self.display_shown = True

    def bind(self) -> list[tuple[Any, Any]]:
        """Make the current context's own writes (``print`` in a task) go to this cell;
        return the handles to give back to :func:`reset_parent`."""
        if self.parent is None:
            return []
        targets = [self.out, self.err]
        if self.display_pub is not None and hasattr(self.display_pub, "set_thread_parent"):
            targets.append(self.display_pub)
        return [set_parent(t, self.parent) for t in targets]


def _runs(pieces: Sequence[Piece]) -> list[tuple[str, str]]:
    """Consecutive pieces of one stream joined: one write each."""
    runs: list[tuple[str, list[str]]] = []
    for p in pieces:
        if runs and runs[-1][0] == p.kind:
            runs[-1][1].append(p.text)
        else:
            runs.append((p.kind, [p.text]))
    return [(kind, "".join(texts)) for kind, texts in runs]


@attrs.define
class Held:
    """Output that came while no cell ran: bounded, the oldest dropped and counted."""

    pieces: collections.deque[Piece] = attrs.field(factory=collections.deque)
    notes: collections.deque[Piece] = attrs.field(
        factory=lambda: collections.deque(maxlen=HOLD_NOTES))
    lines: int = 0
    size: int = 0
    dropped: int = 0
    notes_dropped: int = 0

    def add(self, piece: Piece, note: bool = False) -> None:
        if note:
            if len(self.notes) == self.notes.maxlen:
                self.notes_dropped += 1
            self.notes.append(piece)
            return
        self.pieces.append(piece)
        self.lines += piece.lines
        self.size += len(piece.text)
        while self.pieces and (self.lines > HOLD_LINES or self.size > HOLD_BYTES):
            old = self.pieces.popleft()
            self.lines -= old.lines
            self.size -= len(old.text)
            self.dropped += old.lines

    def take(self) -> list[Piece]:
        """Everything held, after a note saying it came between cells; empty if nothing."""
        if not self.pieces and not self.notes and not self.dropped:
            return []
        shown = sum(p.lines for p in self.pieces if p.kind != "group")
        what = f"{shown:,} line(s)" if shown else "no lines"
        if self.dropped:
            what += (f" (and {self.dropped:,} earlier line(s) not kept: more than "
                     f"{HOLD_LINES:,} lines or {HOLD_BYTES // 1024:,} KiB; the per-rank files "
                     "have them)")
        out = [Piece("stdout", f"[logmesh] printed between cells, before this cell: {what}\n")]
        out.extend(self.pieces)
        out.extend(self.notes)
        if self.notes_dropped:
            out.append(Piece("stderr", f"[logmesh] ({self.notes_dropped:,} more notes not "
                                       "kept)\n"))
        out.append(Piece("stdout", "[logmesh] this cell:\n"))
        self.pieces.clear()
        self.notes.clear()
        self.lines = self.size = self.dropped = self.notes_dropped = 0
        return out


class Router:
    """Sends the meshes' output to the cell running now, or holds it; see the module doc.

    Used from the kernel's thread (the hooks) and the runtime's (the sinks): one lock guards
    the current cell and the held output, and every write made under it is a non-blocking
    append to a kernel stream (plain streams are written after it, see :meth:`emit`).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cell: CellRoute | None = None
        #: The extension's hooks are installed: output outside a cell is held.
        self.tracking = False
        self._held = Held()
        self._closed = False
        self._live: CellRoute | None = None

    @property
    def cell(self) -> CellRoute | None:
        """The cell running now (None between cells)."""
        return self._cell

    def begin(self, route: CellRoute) -> None:
        """A cell starts: what was held is written at its top, then its own output follows."""
        with self._lock:
            self._cell = route
            held = self._held.take()
            if held:
                self._write(route, held)

    def end(self) -> None:
        """The cell ended (its end-of-cell flush is done): hold what comes from now on."""
        with self._lock:
            self._cell = None

    def close(self) -> None:
        """Drop all output from now on (the kernel is shutting down)."""
        with self._lock:
            self._closed = True
            self._held = Held()

    def emit(self, pieces: Sequence[Piece], notes: Sequence[Piece] = ()) -> CellRoute | None:
        """Route ``pieces`` and pipeline ``notes``: written at once to a kernel cell, held
        between cells, or -- for a plain route, returned -- for the caller to ``await
        route.write(...)`` outside the lock, so a stalled terminal never blocks the trio
        loop.  Never raises for a failing output (output is dropped then)."""
        with self._lock:
            if self._closed:
                return None
            route = self._cell
            if route is None:
                if self.tracking:
                    for p in pieces:
                        self._held.add(p)
                    for p in notes:
                        self._held.add(p, note=True)
                    return None
                if self._live is None:
                    self._live = CellRoute(sys.stdout, sys.stderr)
                route = self._live
            if route.kernel:
                self._write(route, [*pieces, *notes])
                return None
            return route

    def note(self, text: str, stream: str = "stderr") -> None:
        """A note of logmesh's own (``[logmesh] ...``) into the current cell (or held)."""
        piece = Piece("stderr" if stream == "stderr" else "stdout", f"[logmesh] {text}\n")
        route = self.emit((), [piece])
        if route is not None:
            self._write(route, [piece])

    def _write(self, route: CellRoute, pieces: Sequence[Piece]) -> None:
        try:
            route.write_now(pieces)
        except (OSError, ValueError):  # a stream closed at kernel exit: output is dropped
            pass


#: The process's one router (one kernel, one current cell).
ROUTER = Router()
