"""LoggingMeshClient: the driver's view of a mesh -- live output, aggregation, the barrier.

The seed's LogClientActor with the LoggingMeshClient control surface.  Its tasks live in one
nursery (the caller's, with :meth:`LoggingMeshClient.spawn`; its own, with
:func:`open_logging_client`):

* the mesh's serve loop, delivering every rank's frames on a bounded memory channel;
* the view task: ``Log`` frames become :class:`LogLines` (through the aggregator when a window
  is set), ``Mark(v)`` becomes rank's acknowledgement of barrier ``v``, ``Exit`` the exit
  notice -- all in order, onto a second bounded channel;
* the sink task: ``sink.emit()`` of what that channel holds, then the acknowledgements that
  were behind it, so a rank counts for a barrier only once everything before its marker was
  emitted;
* the window timer, printing aggregated summaries when their window closes.

A slow sink slows the sink task only: the channels fill, the host's outboxes hold the rest
(and under the ``"drop"`` policy drop the oldest lines from the live view, counted), while the
pipe readers and the files go on.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Literal

import attrs
import trio

from .._errors import (
    ClientClosed,
    ClientReplaced,
    FlushTimeout,
    HostLost,
    LogmeshError,
    leaf_errors,
    surface,
)
from .._levels import level_number
from ..protocol._frames import Exit, Log, Lost, Mark
from ._aggregate import Aggregator, fold_ranks
from ._align import Aligner
from ._decode import RankState
from ._port import Delivery, MeshPort, ViewLink
from ._records import Notice, Output
from ._sinks import Sink, make_sink

#: Deliveries (each up to about 1 MiB) waiting for the view task, and output batches waiting
#: for the sink: together they bound what is in flight between the host and the sink.  The
#: host counts all of it against each rank's ``buffer_bytes`` until the sink has emitted it.
INBOX_SIZE = 2
SINK_QUEUE_SIZE = 4


Fold = Literal["ranks", "repeats"]
"""How a window folds lines: line the ranks up (``"ranks"``), or group repeats (``"repeats"``)."""


def check_fold(fold: object) -> None:
    """Raise ``ValueError`` unless ``fold`` is ``"ranks"`` or ``"repeats"``."""
    if fold not in ("ranks", "repeats"):
        raise ValueError(f"fold must be 'ranks' or 'repeats', not {fold!r}")


def check_mode(
    stream_to_client: bool, aggregate_window_sec: float | None, level: int | str | None
) -> int | None:
    """Validate ``set_mode`` arguments; return the numeric level (None: leave levels alone).

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
    return None if level is None else level_number(level)


# -- what travels on the sink channel besides output ---------------------------------------
@attrs.frozen
class _Ack:
    rank: int
    version: int


@attrs.frozen
class _Ended:
    rank: int


@attrs.frozen
class _Wake:
    event: trio.Event


@attrs.frozen
class _Confirm:
    rank: int
    seq: int


_Signal = _Ack | _Ended | _Wake | _Confirm
_SIGNALS = (_Ack, _Ended, _Wake, _Confirm)


@attrs.define(eq=False)
class _Barrier:
    version: int
    pending: set[int]
    #: Ranks whose marker the view task has handled (their output may still wait for the sink).
    seen: set[int] = attrs.field(factory=set)
    #: Ranks whose host was lost before their marker came: the barrier fails at once.
    lost: set[int] = attrs.field(factory=set)
    done: trio.Event = attrs.field(factory=trio.Event)


class LoggingMeshClient(trio.abc.AsyncResource):
    """The driver-side control surface (Monarch's ``LoggingMeshClient``).

    Create it with :meth:`spawn` (its tasks live in the nursery you pass) or
    :func:`open_logging_client` (it owns its nursery).  Its tasks end by themselves once every
    rank has exited and its output was delivered, or at :meth:`aclose` (``async with client``
    does that too).  A mesh has one live view: a newer client takes the ranks over, and this
    one ends (its :meth:`flush` then raises :class:`~trio_logmesh.ClientReplaced`).
    """

    #: Seconds :meth:`aclose` (and the end of the client) may spend printing what the
    #: aggregator still holds into a slow sink before giving up on it.
    close_timeout: float = 5.0

    def __init__(self, mesh: MeshPort, sink: Sink, ranks: Iterable[int] | None = None) -> None:
        self._mesh = mesh
        self._sink = sink
        size = mesh.size
        self._shown = None if ranks is None else frozenset(ranks)
        if self._shown is not None and not self._shown <= set(range(size)):
            bad = sorted(self._shown - set(range(size)))
            raise ValueError(f"ranks {bad} are not in a mesh of {size}")
        self._states = [RankState(r) for r in range(size)]
        self._link: ViewLink | None = None
        self._barriers: dict[int, _Barrier] = {}
        self._stream_to_client = True
        self._level: int | None = None
        self._fold: Fold = "ranks"
        self._aggregator: Aligner | Aggregator | None = None
        self._agg_changed = trio.Event()
        #: Output produced by a mode change (sync), emitted before anything after it.
        self._pending_out: list[Output | _Signal] = []
        self._sink_send: trio.MemorySendChannel[list[Output | _Signal]] | None = None
        self._sink_failed = False
        #: When the sink's current ``emit`` began (None between emits).
        self._emit_started: float | None = None
        self._scope: trio.CancelScope | None = None
        self._done = trio.Event()

    # -- public API ----------------------------------------------------------------------
    @classmethod
    async def spawn(
        cls,
        nursery: trio.Nursery,
        mesh: MeshPort,
        *,
        sink: object = None,
        ranks: Iterable[int] | None = None,
    ) -> LoggingMeshClient:
        """Start a client for ``mesh`` whose tasks live in ``nursery``; return it ready to use.

        ``sink`` is where output goes: ``None`` for the terminal (each line on the driver's
        stdout or stderr, like the child's), or a file, a callable, a ``trio.MemorySendChannel``
        or a :class:`~trio_logmesh.Sink`.  ``ranks`` shows only those ranks' lines live (the
        others are not even sent; files keep everything; barriers still cover every rank).
        Raises ``ValueError`` for ranks outside the mesh, ``TypeError`` for a bad sink and
        :class:`~trio_logmesh.LogmeshError` for a closed mesh.
        """
        client = cls(mesh, make_sink(sink), ranks)
        await nursery.start(client._run)
        return client

    def set_mode(
        self,
        stream_to_client: bool = True,
        aggregate_window_sec: float | None = None,
        level: int | str | None = logging.INFO,
        *,
        fold: Fold = "ranks",
    ) -> None:
        """Turn streaming on/off, set the aggregation window, set the children's log level.

        ``aggregate_window_sec=None`` prints every line at once, as its rank wrote it.  A number
        of seconds folds: with ``fold="ranks"`` (the default) the ranks' output is lined up,
        the k-th "step ..." line of every rank becomes one line showing each field's values
        over the ranks, a line waiting at most that long for its peers, and blocks
        (tracebacks) are kept whole; ``fold="repeats"`` groups similar lines, one rank's
        repeats included, into one summary per window (Monarch's behaviour).  Raises
        ``ValueError`` for an unknown ``fold``.  ``level`` becomes the root
        logging level in every Python child; it is in force in a child before any later
        ``flush()`` returns; ``None`` leaves the programs' own levels alone.  Raises
        ``ValueError`` for a window while ``stream_to_client`` is False.  Does nothing more on
        a closed client.
        """
        number = check_mode(stream_to_client, aggregate_window_sec, level)
        check_fold(fold)
        self._stream_to_client = stream_to_client
        if number is not None:
            self._level = number
        if fold != self._fold and self._aggregator is not None:
            # A different grouping rule: print what the old one holds, start afresh.
            self._pending_out.extend(self._aggregator.drain(trio.current_time()))
            self._aggregator = None
        self._fold = fold
        self._set_window(aggregate_window_sec)
        link = self._link
        if link is None or self._done.is_set():
            return
        for st in self._states:
            streams = self._streams(st.rank)
            if not streams:
                st.resync = True
            if not st.finished:
                link.set_streaming(st.rank, streams)
                if number is not None:
                    link.set_level(st.rank, number)

    async def flush(
        self, timeout: float | None = None, *, ranks: Iterable[int] | None = None
    ) -> None:
        """Wait until every byte each child wrote before this call has reached the sink.

        That includes output still in the child's ``sys.stdout`` buffer or C stdio, in the
        pipe, or a partial line (delivered as such).  A rank that has exited counts once its
        pipes reached EOF and that output was delivered.  Pending aggregated groups are printed
        before it returns.  Concurrent flushes each complete.  ``ranks`` limits the barrier
        to those ranks (default: every rank); ``ValueError`` for a rank outside the mesh.

        Raises :class:`~trio_logmesh.FlushTimeout` (with ``missing_ranks`` and ``reasons``) if
        ``timeout`` seconds pass first; its subclass :class:`~trio_logmesh.HostLost` (with
        ``missing_hosts``) at once when a host of the run is lost while it waits, and after
        every later barrier (which still covers the other hosts' ranks);
        :class:`~trio_logmesh.ClientClosed` on a client closed
        while ranks still ran and :class:`~trio_logmesh.ClientReplaced` on a client whose
        ranks a newer one took over.  Cancelling it abandons only this barrier.
        """
        if timeout is not None and not (isinstance(timeout, (int, float)) and timeout >= 0):
            raise ValueError(f"timeout must be None or a number >= 0, not {timeout!r}")
        wanted = None if ranks is None else frozenset(ranks)
        if wanted is not None and not wanted <= set(range(len(self._states))):
            bad = sorted(wanted - set(range(len(self._states))))
            raise ValueError(f"ranks {bad} are not in a mesh of {len(self._states)}")
        self._check_open()
        link = self._link
        assert link is not None
        if self._done.is_set():
            if any(st.lost for st in self._states):
                raise self._host_lost(0, set())
            return  # every rank's output ended and was delivered: nothing to wait for
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        version = link.new_version()
        pending = {st.rank for st in self._states
                   if not st.ended and (wanted is None or st.rank in wanted)}
        barrier = self._barriers[version] = _Barrier(version, pending)
        try:
            for r in sorted(pending):
                if not self._states[r].finished:
                    link.force_sync_flush(r, version)
            if not pending:
                barrier.done.set()
            with trio.move_on_at(deadline):
                await barrier.done.wait()
            self._check_open()
            if barrier.lost or (not barrier.pending and any(st.lost for st in self._states)):
                raise self._host_lost(version, barrier.pending | barrier.lost, barrier)
            if barrier.pending:
                missing = sorted(barrier.pending)
                reasons = {r: self._silence(barrier, r) for r in missing}
                raise FlushTimeout(version, missing, timeout or 0.0, reasons)
            agg = self._aggregator
            if agg is not None:
                held = agg.drain(trio.current_time())
                if held:
                    emitted = trio.Event()
                    with trio.move_on_at(deadline):
                        await self._emit([*held, _Wake(emitted)])
                        await emitted.wait()
                    self._check_open()
                    if not emitted.is_set():
                        raise FlushTimeout(version, [], timeout or 0.0)
        finally:
            del self._barriers[version]

    def _host_lost(self, version: int, missing: set[int],
                   barrier: _Barrier | None = None) -> HostLost:
        """The error for a barrier that lost hosts: every lost rank and ``missing`` ones."""
        states = self._states
        lost = {st.rank for st in states if st.lost}
        hosts = {states[r].host or states[r].hostname: states[r].lost or "" for r in lost}
        ranks = sorted(lost | missing)
        reasons = {r: f"its host {states[r].host or states[r].hostname} was lost"
                   if r in lost else (self._silence(barrier, r) if barrier else "")
                   for r in ranks}
        return HostLost(hosts, ranks, version, reasons)

    def _silence(self, barrier: _Barrier, rank: int) -> str:
        """Why ``rank`` has not acknowledged ``barrier``: the host's account, or the sink's."""
        busy = ""
        if self._emit_started is not None:
            for_s = trio.current_time() - self._emit_started
            if for_s >= 1.0:
                busy = f"the sink has been busy with one write for {for_s:.1f} s"
        if rank in barrier.seen:
            return ("its output up to the barrier is waiting for the sink"
                    + (f": {busy} (a stalled output?)" if busy else " (a slow output?)"))
        assert self._link is not None
        reason = self._link.describe(rank)
        return f"{reason}; {busy}, its output may be waiting behind it" if busy else reason

    async def aclose(self) -> None:
        """Print what the aggregator holds and stop the client's tasks.

        Bounded by ``close_timeout`` when the sink is stalled.  Idempotent.
        """
        if self._scope is not None:
            self._scope.cancel()
        await self._done.wait()

    async def wait_finished(self) -> None:
        """Wait until every rank's output has ended (its exit was reported) and the client's
        tasks are done; pending aggregated groups are printed first."""
        await self._done.wait()

    @property
    def exit_codes(self) -> list[int | None]:
        """Exit codes as reported behind each rank's last line (None until then)."""
        return [st.exit_code for st in self._states]

    # -- internals -------------------------------------------------------------------------
    def _check_open(self) -> None:
        link = self._link
        if link is not None and link.replaced.is_set():
            raise ClientReplaced("a newer client took this mesh's live view over")
        if self._done.is_set() and not all(st.ended for st in self._states):
            raise ClientClosed("this client is closed (aclose() or its nursery ended)")

    def _streams(self, rank: int) -> bool:
        return self._stream_to_client and (self._shown is None or rank in self._shown)

    def _set_window(self, window: float | None) -> None:
        now = trio.current_time()
        agg = self._aggregator
        if window is None:
            if agg is not None:  # what it holds is printed before any later line
                self._pending_out.extend(agg.drain(now))
                self._aggregator = None
        elif agg is None:
            if self._fold == "repeats":
                self._aggregator = Aggregator(window)
            else:
                self._aggregator = Aligner(window, [st.rank for st in self._states
                                                    if not st.finished and self._streams(st.rank)])
        elif agg.window != window:
            self._pending_out.extend(agg.set_window(window, now))
        self._agg_changed.set()

    async def _emit(self, items: Sequence[Output | _Signal]) -> None:
        # Every producer (view task, window timer, flush) computes its items and sends them
        # without another checkpoint in between; a memory channel queues blocked senders in
        # order, so the sink sees output in the order it was produced.
        if self._pending_out:
            items = [*self._pending_out, *items]
            self._pending_out.clear()
        if items and self._sink_send is not None:
            await self._sink_send.send(list(items))

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        inbox_send, inbox_recv = trio.open_memory_channel[Delivery](INBOX_SIZE)
        sink_send, sink_recv = trio.open_memory_channel[list[Output | _Signal]](SINK_QUEUE_SIZE)
        self._sink_send = sink_send
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._sink_task, sink_recv)
                    self._link = await nursery.start(self._serve, inbox_send)
                    for st in self._states:
                        st.hostname, st.pid = self._link.origin(st.rank)
                    if len({st.hostname for st in self._states}) > 1:
                        for st in self._states:  # lines say which host they came from
                            st.host = st.hostname
                    nursery.start_soon(self._window_timer)
                    view_scope = trio.CancelScope()
                    nursery.start_soon(self._watch_replaced, view_scope)
                    task_status.started()
                    with view_scope:
                        await self._view_task(inbox_recv)
                    # Every rank ended (or a newer client took over): empty the queue first.
                    if not self._link.replaced.is_set():
                        agg = self._aggregator
                        emitted = trio.Event()
                        held = agg.drain(trio.current_time()) if agg is not None else []
                        await self._emit([*held, _Wake(emitted)])
                        await emitted.wait()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # A task of ours failed -- the user's sink raised, typically: that error as itself,
            # not wrapped in our nursery's group.
            errors = leaf_errors(group)
            if len(errors) == 1:
                raise errors[0] from None
            raise
        finally:
            self._sink_send = None
            try:
                with trio.CancelScope(shield=True):
                    await self._emit_leftovers(sink_recv, inbox_recv)
            finally:  # even when the sink raised on that last emit
                self._done.set()
                for barrier in self._barriers.values():  # nobody will answer them any more
                    barrier.done.set()

    async def _watch_replaced(self, view_scope: trio.CancelScope) -> None:
        assert self._link is not None
        await self._link.replaced.wait()
        view_scope.cancel()

    async def _serve(
        self,
        inbox: trio.MemorySendChannel[Delivery],
        task_status: trio.TaskStatus[ViewLink] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # Closing the inbox when the serve loop ends (a newer client replaced this one) ends
        # the view task.
        async with inbox:
            await self._mesh.serve_view(inbox, task_status=task_status)

    async def _emit_leftovers(
        self,
        recv: trio.MemoryReceiveChannel[list[Output | _Signal]],
        inbox: trio.MemoryReceiveChannel[Delivery],
    ) -> None:
        """At the end: what the sink task did not get to, the deliveries already received,
        and the aggregator's held lines, straight to the sink (bounded by ``close_timeout``;
        never into a sink that raised; nothing more for a replaced client)."""
        entries: list[Output | _Signal] = []
        while True:
            try:
                entries.extend(recv.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        if self._link is not None and not self._link.replaced.is_set():
            while True:
                try:
                    self._handle(inbox.receive_nowait(), entries)
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
        items: list[Output] = []
        signals: list[_Signal] = []
        for x in entries:
            (signals if isinstance(x, _SIGNALS) else items).append(x)  # type: ignore[arg-type]
        items.extend(x for x in self._pending_out if not isinstance(x, _SIGNALS))  # type: ignore[misc]
        self._pending_out.clear()
        agg = self._aggregator
        if agg is not None:
            items.extend(agg.drain(trio.current_time()))
        if items and not self._sink_failed:
            with trio.move_on_after(self.close_timeout):
                await self._sink.emit(items)
                for s in signals:
                    self._apply(s)

    async def _view_task(self, inbox: trio.MemoryReceiveChannel[Delivery]) -> None:
        link = self._link
        assert link is not None
        async for delivery in inbox:
            if link.replaced.is_set():
                return
            out: list[Output | _Signal] = []
            self._handle(delivery, out)
            # The host may forget these frames once the sink has emitted them: until then
            # they count against the rank's buffer limit.
            out.extend(_Confirm(rank, frames[-1].seq) for rank, frames in delivery)
            await self._emit(out)
            if all(st.finished for st in self._states):
                return

    def _handle(self, delivery: Delivery, out: list[Output | _Signal]) -> None:
        """Turn one delivery's frames into output and signals, in order."""
        states = self._states
        lost: dict[tuple[str, str], list[int]] = {}
        for rank, frames in delivery:
            st = states[rank]
            for frame in frames:
                if frame.seq <= st.last_seq:
                    continue  # handled before (a replay)
                if isinstance(frame, Log):
                    self._log(st, frame, out)
                elif isinstance(frame, Mark):
                    barrier = self._barriers.get(frame.version)
                    if barrier is not None:
                        barrier.seen.add(rank)
                    out.append(_Ack(rank, frame.version))
                elif isinstance(frame, Exit):
                    st.finished = True
                    st.exit_code = frame.code
                    where = f" on {st.host}" if st.host else ""
                    notices = [] if frame.code == 0 else [
                        Notice("stderr", _exit_text(rank, frame.code) + where, rank,
                               time.time())]
                    agg = self._aggregator
                    if agg is not None:  # its exit notice after the lines it still holds
                        out.extend(agg.rank_ended(rank, trio.current_time(), notices))
                    else:
                        out.extend(notices)
                    out.append(_Ended(rank))
                elif isinstance(frame, Lost):
                    # Its host is gone: the rank's output ends here, without an exit.  A
                    # barrier waiting for it fails now, not at its timeout.
                    st.finished = True
                    st.lost = frame.reason
                    lost.setdefault((frame.host, frame.reason), []).append(rank)
                    for barrier in self._barriers.values():
                        if rank in barrier.pending:
                            barrier.lost.add(rank)
                            barrier.done.set()
                    agg = self._aggregator
                    if agg is not None:
                        out.extend(agg.rank_ended(rank, trio.current_time()))
                    out.append(_Ended(rank))
                st.last_seq = frame.seq
        for (host, reason), ranks in lost.items():
            out.append(Notice("stderr", f"host {host} was lost ({reason}): rank(s) "
                                        f"{fold_ranks(ranks)} ended without their exit",
                              None, time.time()))

    def _log(self, st: RankState, frame: Log, out: list[Output | _Signal]) -> None:
        if not self._streams(st.rank):
            # Sent before the host saw our set_streaming(False): not for the live view.
            st.resync = True
            return
        lines = st.decode(frame, out)  # type: ignore[arg-type]
        if lines is None:
            return
        agg = self._aggregator
        if agg is None:
            out.append(lines)
            return
        before = agg.next_deadline()
        out.extend(agg.add(lines, trio.current_time()))
        if agg.next_deadline() != before:
            self._agg_changed.set()

    async def _sink_task(self, recv: trio.MemoryReceiveChannel[list[Output | _Signal]]) -> None:
        sink = self._sink
        try:
            async for entry in recv:
                entries = [entry]
                while True:  # everything queued goes out in one emit
                    try:
                        entries.append(recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                items: list[Output] = []
                signals: list[_Signal] = []
                for e in entries:
                    for x in e:
                        if isinstance(x, _SIGNALS):
                            signals.append(x)  # type: ignore[arg-type]
                        else:
                            items.append(x)  # type: ignore[arg-type]
                if items:
                    self._emit_started = trio.current_time()
                    await sink.emit(items)
                    self._emit_started = None
                for s in signals:
                    self._apply(s)
        except BaseException as exc:
            if not isinstance(exc, trio.Cancelled):
                self._sink_failed = True
            raise

    def _apply(self, signal_: _Signal) -> None:
        if isinstance(signal_, _Ack):
            barrier = self._barriers.get(signal_.version)
            if barrier is not None:
                self._acked(barrier, signal_.rank)
        elif isinstance(signal_, _Ended):
            self._states[signal_.rank].ended = True
            for barrier in list(self._barriers.values()):
                self._acked(barrier, signal_.rank)
        elif isinstance(signal_, _Confirm):
            if self._link is not None:
                self._link.confirm(signal_.rank, signal_.seq)
        else:
            signal_.event.set()

    @staticmethod
    def _acked(barrier: _Barrier, rank: int) -> None:
        barrier.pending.discard(rank)
        if not barrier.pending:
            barrier.done.set()

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

    async def _notice(self, text: str) -> None:
        await self._emit([Notice("stderr", text, None, time.time())])

    @classmethod
    async def _for_mesh(
        cls,
        nursery: trio.Nursery,
        mesh: MeshPort,
        *,
        sink: object,
        stream_to_client: bool,
        aggregate_window_sec: float | None,
        level: int | str | None,
        fold: Fold = "ranks",
    ) -> LoggingMeshClient:
        """The client of ``mesh.logging_option(...)``: validated before anything starts."""
        check_mode(stream_to_client, aggregate_window_sec, level)
        check_fold(fold)
        client = await cls.spawn(nursery, mesh, sink=sink)
        client.set_mode(stream_to_client, aggregate_window_sec, level, fold=fold)
        return client


def _exit_text(rank: int, code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"rank {rank} was killed by {name}"
    return f"rank {rank} exited with code {code}"


@asynccontextmanager
async def open_logging_client(
    mesh: MeshPort,
    *,
    sink: object = None,
    ranks: Iterable[int] | None = None,
    stream_to_client: bool = True,
    aggregate_window_sec: float | None = None,
    level: int | str | None = logging.INFO,
    fold: Fold = "ranks",
    exit_timeout: float = 5.0,
) -> AsyncIterator[LoggingMeshClient]:
    """A client for ``mesh`` that owns its nursery, in the mode given; see
    :class:`LoggingMeshClient` for the arguments.

    Leaving the block normally flushes (at most ``exit_timeout`` seconds; a rank that did not
    answer is named in a notice on the sink) and closes the client; leaving it with an
    exception only closes it.  The body's exception always surfaces; errors of the client's
    tasks (a sink that raised) are attached to it.  Raises ``ValueError`` for a window without
    streaming before anything starts.
    """
    check_mode(stream_to_client, aggregate_window_sec, level)
    check_fold(fold)
    body_error: BaseException | None = None
    errors: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            client = await LoggingMeshClient.spawn(nursery, mesh, sink=sink, ranks=ranks)
            client.set_mode(stream_to_client, aggregate_window_sec, level, fold=fold)
            try:
                yield client
            except BaseException as exc:
                body_error = exc
            finally:
                with trio.CancelScope(shield=True):
                    if body_error is None:
                        try:
                            await client.flush(timeout=exit_timeout)
                        except FlushTimeout as exc:
                            with trio.move_on_after(exit_timeout):
                                await client._notice(f"flush at the end of the client: {exc}")
                        except LogmeshError:
                            pass  # closed or replaced: nothing more to show
                    await client.aclose()
    except BaseException as exc:
        errors = leaf_errors(exc)
        if not errors and body_error is None:
            raise
    raise_this = surface(body_error, errors)
    if raise_this is not None:
        raise raise_this
