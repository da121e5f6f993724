"""LogClientActor and LoggingMeshClient: the driver's end of the mesh's logging.

The client holds one connection per rank to whichever forwarder serves that rank (the one in
the child while it lives, then the host's), reads ``Log``/``Mark``/``Exit`` frames in order,
delivers lines to the sink (directly, or through the aggregator when a window is set) and
counts barrier acknowledgements per version.  Because a rank's marker arrives on the same
ordered connection behind its data, and the reader delivers each frame before reading the
next, a version acknowledged by every rank means every line before it is at the sink.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Sequence

import attrs
import trio

from . import _frames as f
from . import _wire as w
from ._aggregate import Aggregator
from ._bootstrap import ProcMesh, RankProc
from ._channel import FrameStream, dial
from ._errors import FlushTimeout, LogmeshError
from ._lines import clean_line
from ._records import STREAMS, LogLines, Notice, Output
from ._sinks import Sink, make_sink

_log = logging.getLogger("trio_logmesh")


def _level_number(level: int | str) -> int:
    if isinstance(level, bool):
        raise TypeError("level must be a logging level (int or name), not a bool")
    if isinstance(level, int):
        return level
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if isinstance(number, int):
            return number
        raise ValueError(f"unknown logging level name {level!r}")
    raise TypeError(f"level must be a logging level (int or name), not {type(level).__name__}")


def check_mode(
    stream_to_client: bool, aggregate_window_sec: float | None, level: int | str
) -> int:
    """Validate ``set_mode`` arguments; return the numeric level.

    Raises ``ValueError`` for a window without streaming (the seed's constraint) or a window
    that is not a positive number, and ``TypeError``/``ValueError`` for a bad level.
    """
    if aggregate_window_sec is not None:
        if not stream_to_client:
            raise ValueError(
                "aggregate_window_sec needs stream_to_client=True: there is nothing to "
                "aggregate when output is not streamed to the client"
            )
        if isinstance(aggregate_window_sec, bool) or not (
            isinstance(aggregate_window_sec, (int, float)) and aggregate_window_sec > 0
            and math.isfinite(aggregate_window_sec)
        ):
            raise ValueError(
                f"aggregate_window_sec must be a positive number of seconds or None, "
                f"not {aggregate_window_sec!r}"
            )
    return _level_number(level)


@attrs.define(eq=False)
class _Barrier:
    version: int
    pending: set[int]
    done: trio.Event = attrs.field(factory=trio.Event)
    failed: str = ""


@attrs.define(eq=False)
class _RankLink:
    """The client's view of one rank."""

    rank: int
    last_seq: int = 0
    lines: list[int] = attrs.field(factory=lambda: [0, 0])
    hostname: str = ""
    pid: int = 0
    finished: bool = False
    exit_code: int | None = None
    last_heard: float = -math.inf
    #: Another client took this rank over: this one gets nothing more from it.
    replaced: bool = False
    #: Per stream: the last batch ended with a partial line.
    partial_open: list[bool] = attrs.field(factory=lambda: [False, False])
    #: Streaming was off for this rank: a gap in line numbers is not a drop.
    resync: bool = False
    control: trio.MemorySendChannel[bytes] | None = None


class LoggingMeshClient:
    """The driver-side control surface (Monarch's ``LoggingMeshClient``).

    Create it with :meth:`spawn`; its tasks run in the nursery you pass and end by themselves
    once every rank has exited and its output was delivered, or when you call :meth:`aclose`
    (or cancel that nursery).
    """

    def __init__(self, mesh: ProcMesh, sink: Sink, ranks: Iterable[int] | None = None) -> None:
        self._mesh = mesh
        self._sink = sink
        self._shown = None if ranks is None else frozenset(ranks)
        if self._shown is not None and not self._shown <= set(range(mesh.size)):
            bad = sorted(self._shown - set(range(mesh.size)))
            raise ValueError(f"ranks {bad} are not in a mesh of {mesh.size}")
        self._links = [_RankLink(r) for r in range(mesh.size)]
        self._barriers: dict[int, _Barrier] = {}
        self._next_version = 1
        self._stream_to_client = True
        self._window: float | None = None
        self._level: int | None = None
        self._across_ranks_only = False
        self._aggregator: Aggregator | None = None
        self._agg_changed = trio.Event()
        #: Output produced by a mode change (sync), printed before anything that follows it.
        self._pending_out: list[Output] = []
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()
        self._out_lock = trio.Lock()

    # -- public API ----------------------------------------------------------------------
    @classmethod
    async def spawn(
        cls,
        nursery: trio.Nursery,
        mesh: ProcMesh,
        *,
        sink: object = None,
        ranks: Iterable[int] | None = None,
    ) -> LoggingMeshClient:
        """Start a client for ``mesh`` whose tasks live in ``nursery``; return it ready to use.

        ``sink`` is where output goes: ``None`` for the terminal (each line on the driver's
        stdout or stderr, like the child's), or a file, a callable, a ``trio.MemorySendChannel``
        or a :class:`~trio_logmesh.Sink`.  ``ranks`` shows only those ranks' lines live (the
        others are not even sent; files keep everything; barriers still cover every rank).
        Raises ``ValueError`` for ranks outside the mesh and ``TypeError`` for a bad sink.
        """
        client = cls(mesh, make_sink(sink), ranks)
        await nursery.start(client._run)
        return client

    def set_mode(
        self,
        stream_to_client: bool = True,
        aggregate_window_sec: float | None = None,
        level: int | str = logging.INFO,
        *,
        across_ranks_only: bool = False,
    ) -> None:
        """Turn streaming on/off, set the aggregation window, set the children's log level.

        ``aggregate_window_sec=None`` prints every line at once; a number of seconds groups
        similar lines per window (see the aggregator).  ``across_ranks_only=True`` groups only
        lines of different ranks, never one rank's own repeats.  ``level`` becomes the root
        logging level in every Python child; it is in force in a child before any later
        ``flush()`` returns.  Raises ``ValueError`` for a window while ``stream_to_client`` is
        False.
        """
        number = check_mode(stream_to_client, aggregate_window_sec, level)
        self._stream_to_client = stream_to_client
        self._level = number
        if across_ranks_only != self._across_ranks_only and self._aggregator is not None:
            # A different grouping rule: print what the old one holds, start afresh.
            self._pending_out.extend(self._aggregator.drain(trio.current_time()))
            self._aggregator = None
        self._across_ranks_only = across_ranks_only
        self._set_window(aggregate_window_sec)
        for link in self._links:
            if not self._streams(link.rank):
                link.resync = True
            self._send_control(link, f.SetMode(self._streams(link.rank)))
            self._send_control(link, f.SetLevel(number))

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every byte each child wrote before this call has reached the sink.

        That includes output still in the child's ``sys.stdout`` buffer or C stdio, in the
        pipe, or a partial line (delivered as such).  A rank that has exited counts once its
        pipes reached EOF and that output was delivered.  Pending aggregated groups are printed
        before it returns.  Concurrent flushes each complete.

        Raises :class:`FlushTimeout` (with ``missing_ranks``) if ``timeout`` seconds pass
        first, and :class:`LogmeshError` on a client closed (``aclose()``) while ranks still
        ran.  Cancelling it abandons only this barrier.
        """
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or >= 0, not {timeout!r}")
        replaced = [link.rank for link in self._links if link.replaced]
        if replaced:
            raise LogmeshError(f"rank(s) {replaced} are streamed to another client now")
        if self._done.is_set():
            if all(link.finished for link in self._links):
                return  # every rank's output ended and was delivered: nothing to wait for
            raise LogmeshError("this client is closed (aclose() or its nursery ended)")
        version = self._next_version
        self._next_version += 1
        pending = {link.rank for link in self._links if not link.finished}
        barrier = self._barriers[version] = _Barrier(version, pending)
        try:
            if pending:
                for r in pending:
                    self._send_control(self._links[r], f.ForceSyncFlush(version))
                with trio.move_on_after(math.inf if timeout is None else timeout):
                    await barrier.done.wait()
                if barrier.failed:
                    raise LogmeshError(barrier.failed)
                if barrier.pending and self._done.is_set():
                    raise LogmeshError("the client closed before the flush completed")
                if barrier.pending:
                    raise FlushTimeout(version, sorted(barrier.pending), timeout or 0.0)
            await self._drain_aggregator()
        finally:
            del self._barriers[version]

    async def aclose(self) -> None:
        """Print what the aggregator holds and stop the client's tasks."""
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    @property
    def exit_codes(self) -> list[int | None]:
        """Exit codes as reported through the log channel (None until a rank's output ended)."""
        return [link.exit_code for link in self._links]

    def last_heard(self, rank: int) -> float:
        """``trio.current_time()`` of the last frame or heartbeat from ``rank``."""
        return self._links[rank].last_heard

    # -- internals -------------------------------------------------------------------------
    def _streams(self, rank: int) -> bool:
        return self._stream_to_client and (self._shown is None or rank in self._shown)

    def _send_control(self, link: _RankLink, msg: f.Message) -> None:
        if link.control is not None and not link.finished:
            try:
                link.control.send_nowait(f.encode(msg))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _set_window(self, window: float | None) -> None:
        now = trio.current_time()
        self._window = window
        agg = self._aggregator
        if window is None:
            if agg is not None:  # what it holds is printed before any later line
                self._pending_out.extend(agg.drain(now))
                self._aggregator = None
        elif agg is None:
            self._aggregator = Aggregator(window, across_ranks_only=self._across_ranks_only)
        elif agg.window != window:
            self._pending_out.extend(agg.set_window(window, now))
        self._agg_changed.set()

    async def _emit(self, items: Sequence[Output]) -> None:
        if self._pending_out:
            items = [*self._pending_out, *items]
            self._pending_out.clear()
        if items:
            async with self._out_lock:
                await self._sink.emit(items)

    async def _deliver(self, link: _RankLink, msg: f.Log) -> None:
        if not self._streams(link.rank):
            # Sent before the forwarder saw our SetMode(False): not for the live view.
            link.resync = True
            return
        stream = STREAMS[msg.stream]
        expected = link.lines[msg.stream]
        items: list[Output] = []
        if link.resync:
            link.resync = not self._streams(link.rank)
        elif msg.line_start > expected:
            dropped = msg.line_start - expected
            items.append(Notice(stream, f"[{dropped:,} lines dropped for rank {link.rank}]",
                                link.rank, time.time()))
        text = msg.data.decode("utf-8", "replace")
        if msg.partial:
            lines = text.split("\n")
        else:
            lines = text[:-1].split("\n")
            link.lines[msg.stream] = msg.line_start + len(lines)
        if "\r" in text:  # one check per chunk; per-line work only for the rare \r lines
            lines = [clean_line(ln) if "\r" in ln else ln for ln in lines]
        if link.partial_open[msg.stream] and lines and not lines[0]:
            # The newline that ends a partial line shown earlier: not a line of its own.
            lines = lines[1:]
        # A progress state is a whole line for the view: nothing continues it.
        partial = msg.partial and not msg.progress
        link.partial_open[msg.stream] = partial
        if not lines:
            if items:
                await self._emit(items)
            return
        batch = LogLines(link.rank, stream, tuple(lines), link.hostname, link.pid, time.time(),
                         partial, msg.progress)
        agg = self._aggregator
        if agg is not None:
            before = agg.next_deadline()
            items.extend(agg.add(batch, trio.current_time()))
            if agg.next_deadline() != before:
                self._agg_changed.set()
        else:
            items.append(batch)
        await self._emit(items)

    def _ack(self, rank: int, version: int | None) -> None:
        for v, barrier in self._barriers.items():
            if version is None or v == version:
                barrier.pending.discard(rank)
                if not barrier.pending:
                    barrier.done.set()

    async def _drain_aggregator(self) -> None:
        agg = self._aggregator
        await self._emit(agg.drain(trio.current_time()) if agg is not None else [])

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._window_timer)
                    async with trio.open_nursery() as links:
                        for rp in self._mesh.ranks:
                            links.start_soon(self._rank_task, rp)
                        task_status.started()
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self._drain_aggregator()
            self._done.set()
            for barrier in self._barriers.values():  # nobody will answer them any more
                barrier.done.set()

    async def wait_finished(self) -> None:
        """Wait until every rank's output has ended (its exit was reported) and the client's
        tasks are done; pending aggregated groups are printed first."""
        await self._done.wait()

    async def _window_timer(self) -> None:
        """Prints aggregated summaries when their window closes (and mode-change output)."""
        while True:
            await self._emit([])
            agg = self._aggregator
            deadline = agg.next_deadline() if agg is not None else None
            self._agg_changed = trio.Event()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._agg_changed.wait()
            agg = self._aggregator
            if agg is not None:
                await self._emit(agg.expire(trio.current_time()))

    async def _rank_task(self, rp: RankProc) -> None:
        link = self._links[rp.rank]
        failed_gen = 0
        while not link.finished and not link.replaced:
            gen, path = await rp.forwarder.wait_value(  # type: ignore[misc]
                lambda v, seen=failed_gen: v is not None and v[0] > seen
            )
            try:
                fs = await dial(path)
            except OSError:
                failed_gen = gen
                continue
            try:
                async with fs.stream:
                    await self._serve_link(link, fs)
            except (trio.BrokenResourceError, trio.ClosedResourceError, w.FrameError) as exc:
                _log.debug("rank %d: connection lost (%r); reconnecting", rp.rank, exc)
            finally:
                link.control = None
            failed_gen = gen
        if link.replaced:
            _log.warning("rank %d is now streamed to another client", rp.rank)
            for barrier in self._barriers.values():
                if rp.rank in barrier.pending:
                    barrier.failed = f"rank {rp.rank} was taken over by another client"
                    barrier.done.set()
            return
        # Anything still waiting on this rank is satisfied: its output ended.
        self._ack(rp.rank, None)

    async def _serve_link(self, link: _RankLink, fs: FrameStream) -> None:
        await fs.send_msg(f.Hello(w.ROLE_CLIENT, self._mesh._token, link.rank, link.last_seq))
        first = await fs.first()
        if first is None or first[0] != w.WELCOME:
            return
        welcome = f.decode(*first)
        assert isinstance(welcome, f.Welcome)
        link.hostname, link.pid = welcome.hostname, welcome.pid
        link.last_heard = trio.current_time()
        send, recv = trio.open_memory_channel[bytes](math.inf)
        # What a new forwarder must know: the mode, the level, the barriers still pending.
        send.send_nowait(f.encode(f.SetMode(self._streams(link.rank))))
        if self._level is not None:
            send.send_nowait(f.encode(f.SetLevel(self._level)))
        for version, barrier in sorted(self._barriers.items()):
            if link.rank in barrier.pending:
                send.send_nowait(f.encode(f.ForceSyncFlush(version)))
        link.control = send
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                # A failed write (the forwarder died) must not cancel the reader: what the
                # socket already holds is still to be delivered before the reconnect.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    async for data in recv:
                        await fs.send(data)

            nursery.start_soon(writer)
            try:
                await self._read_link(link, fs)
            except (trio.BrokenResourceError, trio.ClosedResourceError, w.FrameError) as exc:
                # Caught here, inside the nursery, so it stays a reconnect and never becomes
                # an ExceptionGroup in the user's nursery.
                _log.debug("rank %d: connection lost (%r); reconnecting", link.rank, exc)
            nursery.cancel_scope.cancel()

    async def _read_link(self, link: _RankLink, fs: FrameStream) -> None:
        acked = link.last_seq
        while frames := await fs.receive_frames():
            link.last_heard = trio.current_time()
            await self._handle_frames(link, frames)
            # Confirm data, not control: a batch of only barrier markers is a few bytes on the
            # host, and an Ack per flush per rank would be two more socket operations each.
            has_data = any(kind == w.LOG for kind, _ in frames)
            if has_data and link.last_seq > acked and link.control is not None:
                # Confirm what this batch delivered: the host may forget it now (and, with the
                # "block" policy, read the child's pipes again).
                acked = link.last_seq
                link.control.send_nowait(f.encode(f.Ack(acked)))
            if link.finished or link.replaced:
                return

    async def _handle_frames(self, link: _RankLink, frames: list[tuple[int, bytes]]) -> None:
        for kind, payload in frames:
            if kind in (w.HEARTBEAT, w.REPLAY):
                continue
            if kind == w.REJECT:  # another client took this rank over
                link.replaced = True
                return
            msg = f.decode(kind, payload)
            seq = getattr(msg, "seq", None)
            if seq is not None and seq <= link.last_seq:
                continue  # already delivered before a reconnect
            if isinstance(msg, f.Log):
                await self._deliver(link, msg)
            elif isinstance(msg, f.Mark):
                self._ack(link.rank, msg.version)
            elif isinstance(msg, f.Exit):
                link.exit_code = msg.code
                link.finished = True
                if msg.code != 0:
                    await self._emit([Notice("stderr", _exit_text(link.rank, msg.code),
                                             link.rank, time.time())])
                self._ack(link.rank, None)
            if seq is not None:
                # Only once handled: if we are cancelled mid-delivery, a reconnect resumes at
                # this frame rather than after it.
                link.last_seq = seq
            if link.finished:
                return


def _exit_text(rank: int, code: int) -> str:
    if code < 0:
        try:
            import signal

            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with code {code}"
