"""Folding across ranks: the k-th "step 5 loss ..." of every rank becomes one line.

This is the default fold of the driver's view (``aggregate_window_sec=W``), a pure engine: no
trio, no I/O; the caller passes ``now`` (``trio.current_time()``) to every method.

The typical multi-rank job is SPMD: every rank prints the same sequence of lines with
different values.  So the engine lines the ranks' output up, line by line:

* Each rank's output is cut into *units* (``_blocks``): a line, or a block kept whole (a
  traceback, a warning with its source line, a log record with its continuation lines).
* A unit joins a *slot* of its kind (stream + template for a line, stream + exact text for a
  block): the oldest open slot of that kind the rank has no unit in yet, else a new one.  So
  the k-th occurrence of a kind in one rank goes with the k-th in the others -- unless the
  counters disagree: a line joins a slot only if its whole-number fields that every rank
  agreed on so far (the step of "step 5 loss ...") match the slot's, so a rank that skipped
  a step does not shift the rest.  A rank's line for a slot already shown without it is
  *late*: it goes with the other ranks late for that slot, never with the next one.
* A slot is shown once every rank expected to print its kind has (``[ranks 0-63] step 5
  loss 0.41..0.43``), or when ``window`` seconds have passed since it opened, with the ranks
  it has.  A rank is not waited for where it has shown it will not print the line: it
  printed, without it, a later line of the same stream (rank 0's "saving checkpoint" does
  not wait for ranks already at the next step), or it has exited.  A kind that timed out
  expects, from then on, the ranks that printed it in time; a rank printing it again is
  expected again.
* Each rank's units come out in the order the rank wrote them: a slot waits for every unit
  of the same stream its ranks wrote before, and for the other stream's units before it
  unless it is complete (two pipes' relative order is only approximate: a stdout line does
  not wait for a stderr line that waits for its peers).  When its window has passed, the
  units blocking it go out first, as they are, so no line waits much longer than
  ``window``.
* Partial lines (no newline yet) and their rest are shown as themselves, in order.
* A flood -- more than ``FLOOD_LINES`` lines a second, or ``FLOOD_CHUNK`` lines in one
  chunk -- is shown as it is, unfolded, with a notice, until it calms down (below
  ``CALM_LINES`` a second): folding costs work per line, and nobody reads a flood anyway.
* Progress-bar states (``\\r`` redraws) are not lined up: each rank's latest state of a bar
  is kept, and the bar's ranks are shown together at most once per window, drawn as the least
  advanced rank's bar (``_spread``).  A bar's final line is a line like any other.

Trailing whitespace (tqdm pads a bar's last state) is not part of a template: lines differing
only in it fold together, shown without it.  A slot of one rank prints as that rank's own
lines.  A line slot shows its template with each
field's values over the slot's ranks (``_spread``: exact, never sampled, never a value no rank
printed); a block slot holds one exact text, shown once with its ranks.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

import attrs

from ._aggregate import check_window, fold_ranks
from ._blocks import BLOCK_IDLE, BlockAssembler, Unit
from ._records import GroupLine, LogLines, Notice, Output, Stream
from ._shapes import TO_ZERO, ShapeCache, Template, strip_ansi
from ._spread import FieldValues

__all__ = ["CALM_LINES", "FLOOD_CHUNK", "FLOOD_LINES", "Aligner"]

_OTHER: Final[dict[str, Stream]] = {"stdout": "stderr", "stderr": "stdout"}

FLOOD_LINES: Final = 20_000
"""Lines a second (all ranks) past which lines are shown as they are instead of folded."""
FLOOD_CHUNK: Final = 1_000
"""Lines in one chunk of one rank that also count as a flood."""
CALM_LINES: Final = 5_000
"""Lines a second below which folding resumes."""


@attrs.define(eq=False, slots=True)
class _Unit:
    rank: int
    lines: list[str]  # as written
    clean: list[str]  # without escapes
    time: float
    hostname: str
    pid: int
    partial: bool = False
    progress: bool = False
    item: Output | None = None  # shown as it is (a notice about the rank)
    spans: Any = None  # where a line's fields are
    seq: int = 0  # the order its rank wrote it in, across both streams
    ints: dict[int, str] | None = None  # its line's whole-number fields (``_ints``)


@attrs.define(eq=False, slots=True)
class _Slot:
    serial: int
    stream: Stream
    key: Any  # (stream, Template) for a line, (stream, text) for a block, None: shown as is
    deadline: float
    pos: int = 0  # where it stands among its kind's slots
    #: Expected ranks (still running) that have no unit in it yet.
    waiting: set[int] = attrs.field(factory=set)
    units: dict[int, _Unit] = attrs.field(factory=dict)
    forced: bool = False
    closed: bool = False
    #: Whole-number fields its units all agree on (a line's template only), by field index.
    agreed: dict[int, str] | None = None


@attrs.define(eq=False, slots=True)
class _Kind:
    """The slots of one kind, oldest first, and where each rank looks for its next one."""

    expect: set[int]
    slots: list[_Slot] = attrs.field(factory=list)
    base: int = 0  # the position of slots[0]
    first: int = 0  # index of the first slot not yet shown
    cursor: dict[int, int] = attrs.field(factory=dict)  # rank -> position to look from
    late: dict[int, _Slot] = attrs.field(factory=dict)  # position -> slot of late lines
    #: Whole-number fields every rank agreed on in each slot of several ranks shown so far
    #: (the step of "step 5 loss ..."); None before the first.
    sync: set[int] | None = None

    def trim(self) -> None:
        """Forget the shown slots at the front."""
        slots = self.slots
        first = self.first
        while first < len(slots) and slots[first].closed:
            first += 1
        if first > 64 and first * 2 > len(slots):
            del slots[:first]
            self.base += first
            first = 0
        self.first = first


@attrs.define(eq=False, slots=True)
class _Board:
    """The latest progress-bar state of each rank, for one bar template."""

    stream: Stream
    template: Template
    states: dict[int, _Unit] = attrs.field(factory=dict)
    due: float | None = None  # when the board is next shown (None: nothing new)


class Aligner:
    """Folds lines across ranks; see the module docstring.  Not thread-safe."""

    def __init__(self, window: float, ranks: Iterable[int]) -> None:
        """Fold over ``window`` seconds (> 0, else :exc:`ValueError`) for the view's ``ranks``."""
        self._window = check_window(window)
        self._live = set(ranks)
        self._serial = 0
        # Each rank's slots per stream, in the order it wrote their units.
        self._fifo: dict[tuple[int, Stream], deque[_Slot]] = {}
        self._seq = 0
        self._kinds: dict[Any, _Kind] = {}
        self._heap: list[tuple[float, int, _Slot]] = []
        self._blocks: dict[tuple[int, Stream], BlockAssembler] = {}
        self._open_blocks: dict[tuple[int, Stream], BlockAssembler] = {}
        self._boards: dict[tuple[Stream, Template], _Board] = {}
        # The board holding each rank's current bar state per stream: a rank redraws one
        # line at a time, so a new state (or a finished line) ends the one before.
        self._bar_of: dict[tuple[int, Stream], _Board] = {}
        self._continued: set[tuple[int, Stream]] = set()
        self._shapes = ShapeCache()
        self._origin: dict[int, tuple[str, int]] = {}
        self._host_of: dict[int, str] = {}  # the host tag of each rank (runs over many hosts)
        self._dirty: set[_Slot] = set()
        self._sweep: set[tuple[int, Stream]] = set()  # queues where a slot completed
        # The flood valve: lines counted since ``_since``; while ``_flooding``, every chunk is
        # shown as it is.
        self._since = 0.0
        self._counted = 0
        self._flooding = False

    @property
    def window(self) -> float:
        """The window length in seconds."""
        return self._window

    # -- the clock -----------------------------------------------------------------------
    def next_deadline(self) -> float | None:
        """When :meth:`expire` next has something to do; ``None`` when nothing waits."""
        times = [t for t in (self._heap_top(), *(b.due for b in self._boards.values()))
                 if t is not None]
        times.extend(b.last + BLOCK_IDLE for b in self._open_blocks.values())
        return min(times) if times else None

    def _heap_top(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].closed:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now: float) -> list[Output]:
        """What is due at ``now``: blocks idle long enough, slots whose window passed, bars."""
        out: list[Output] = []
        for key, asm in list(self._open_blocks.items()):
            if asm.last + BLOCK_IDLE <= now:
                self._close_block(key, now, out)
        heap = self._heap
        while heap and (heap[0][2].closed or heap[0][0] <= now):
            slot = heapq.heappop(heap)[2]
            if not slot.closed:
                if slot.key is not None:  # who printed in time is who prints this kind
                    self._kinds[slot.key].expect = set(slot.units)
                self._force(slot)
        self._pump(out)
        for board in self._boards.values():
            if board.due is not None and board.due <= now:
                self._show_board(board, out, now)
        return out

    def set_window(self, window: float, now: float) -> list[Output]:
        """Change the window (> 0, else :exc:`ValueError`); open slots keep their deadlines."""
        self._window = check_window(window)
        return self.expire(now)

    def drain(self, now: float) -> list[Output]:
        """Everything held, now (a flush, the end, folding turned off)."""
        out: list[Output] = []
        for key in list(self._open_blocks):
            self._close_block(key, now, out)
        # A slot cut short here still expects its waiting ranks: their line for it, when it
        # comes, is late for that slot, not the first of their next one (a rank that has not
        # printed the kind yet starts counting there).
        start: dict[tuple[Any, int], int] = {}
        for slots in self._fifo.values():
            for slot in slots:
                if slot.key is not None and not slot.forced:
                    for w in slot.waiting:
                        k = (slot.key, w)
                        start[k] = min(start.get(k, slot.pos), slot.pos)
                slot.forced = True
        for (key, w), pos in start.items():
            self._kinds[key].cursor.setdefault(w, pos)
        self._pump(out, all_ranks=True)
        for board in self._boards.values():
            if board.due is not None:
                self._show_board(board, out, now)
        return out

    def rank_ended(self, rank: int, now: float, notices: Iterable[Output] = ()) -> list[Output]:
        """``rank`` exited: no slot waits for it any more, and ``notices`` (its exit) come
        right after its last lines."""
        out: list[Output] = []
        for stream in ("stdout", "stderr"):
            self._close_block((rank, stream), now, out)
        self._live.discard(rank)
        for kind in self._kinds.values():
            for slot in kind.slots[kind.first:]:
                slot.waiting.discard(rank)
        for item in notices:
            u = _Unit(rank, [], [], now, "", 0, item=item)
            self._join(None, item.stream, u, now)
        self._pump(out, all_ranks=True)
        for stream in ("stdout", "stderr"):
            board = self._bar_of.pop((rank, stream), None)
            if board is not None and board.states.pop(rank, None) is not None \
                    and board.due is None:
                board.due = now
        return out

    # -- lines ---------------------------------------------------------------------------
    def add(self, batch: LogLines, now: float) -> list[Output]:
        """Feed one chunk of one rank and stream; return what can be shown now."""
        out: list[Output] = []
        if self._flood(batch.line_count, now, out):
            out.append(batch)
            return out
        rank, stream = batch.rank, batch.stream
        if batch.host:
            self._host_of[rank] = batch.host
        key = (rank, stream)
        other = (rank, "stdout" if stream == "stderr" else "stderr")
        if other in self._open_blocks:  # the rank's order across its streams
            self._close_block(other, now, out)
        lines = list(batch.lines)
        units: list[Unit] = []
        if batch.progress:
            self._progress(batch, now)
            return self._pumped(out)
        if key in self._continued:  # the rest of a partial line shown before
            self._close_block(key, now, out)
            first = lines.pop(0)
            still = batch.partial and not lines
            self._place_solo(batch, [first], still, now)
            if not still:
                self._continued.discard(key)
        tail: list[str] = []
        if batch.partial and lines:
            tail = [lines.pop()]
            self._continued.add(key)
        if lines:
            asm = self._blocks.get(key)
            if asm is None:
                asm = self._blocks[key] = BlockAssembler()
            for line in lines:
                asm.feed(line, strip_ansi(line), now, units)
            if asm.open:
                self._open_blocks[key] = asm
            else:
                self._open_blocks.pop(key, None)
            for unit in units:
                self._place(batch, unit, now)
        if tail:
            self._close_block(key, now, out)
            self._place_solo(batch, tail, True, now)
        return self._pumped(out)

    def _flood(self, lines: int, now: float, out: list[Output]) -> bool:
        """Count ``lines``; whether they come too fast to fold (then they are shown as they
        are, after everything held, with a notice; folding resumes once the rate fell)."""
        elapsed = now - self._since
        if elapsed >= 1.0:
            if self._flooding and self._counted < CALM_LINES * elapsed:
                self._flooding = False
                out.append(Notice("stderr", "output calmer: folding lines again", None,
                                  time.time()))
            self._since, self._counted, elapsed = now, 0, 0.0
        self._counted += lines
        # The rate so far this second (judged after a quarter of it at the earliest), or one
        # chunk holding a thousand lines: a rank writing faster than the pipe is read.
        if not self._flooding and (self._counted > FLOOD_LINES * max(elapsed, 0.25)
                                   or lines >= FLOOD_CHUNK):
            self._flooding = True
            out.extend(self.drain(now))
            out.append(Notice("stderr", f"more than {FLOOD_LINES:,} lines a second: every line "
                                        "is shown as it is, unfolded, until output calms down",
                              None, time.time()))
        return self._flooding

    def _pumped(self, out: list[Output]) -> list[Output]:
        self._pump(out)
        return out

    def _close_block(self, key: tuple[int, Stream], now: float, out: list[Output]) -> None:
        asm = self._open_blocks.pop(key, None)
        if asm is None:
            return
        units: list[Unit] = []
        asm.close(units)
        rank, stream = key
        for lines, clean, is_block in units:
            self._enter(rank, stream, lines, clean, is_block, asm.last, "", 0, now)

    def _place(self, batch: LogLines, unit: Unit, now: float) -> None:
        lines, clean, is_block = unit
        self._enter(batch.rank, batch.stream, lines, clean, is_block, batch.time,
                    batch.hostname, batch.pid, now)

    def _place_solo(self, batch: LogLines, lines: list[str], partial: bool, now: float) -> None:
        u = _Unit(batch.rank, lines, lines, batch.time, batch.hostname, batch.pid, partial)
        self._join(None, batch.stream, u, now)

    def _enter(self, rank: int, stream: Stream, lines: list[str], clean: list[str],
               is_block: bool, t: float, hostname: str, pid: int, now: float) -> None:
        if not hostname:  # a block closed by the clock: the rank's last known origin
            hostname, pid = self._origin.get(rank, ("", 0))
        else:
            self._origin[rank] = (hostname, pid)
        u = _Unit(rank, lines, clean, t, hostname, pid)
        if is_block:
            key: Any = (stream, "\n".join(clean))
        else:
            info = self._shapes.shape(clean[0].rstrip().translate(TO_ZERO), "\n")
            u.spans = info.spans
            key = (stream, info.template)
        board = self._bar_of.pop((rank, stream), None)
        if board is not None:  # the line ends the rank's bar: that state is no longer live
            board.states.pop(rank, None)
        self._join(key, stream, u, now)

    def _join(self, key: Any, stream: Stream, u: _Unit, now: float) -> None:
        rank = u.rank
        slot = None
        if key is not None:
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind(set(self._live))
            kind.expect.add(rank)
            slots = kind.slots
            # The rank's next slot of this kind is the one after the last it joined.  If that
            # was shown without it already (its window passed, or a flush), the line is late:
            # it goes with the other ranks late for that slot, never with the next slot's
            # lines (which would show its "step 15" as one of the others' "step 16").  A rank
            # printing a kind for the first time joins the oldest open slot.
            want = kind.cursor.get(rank, -1)
            j = want - kind.base
            if want >= 0 and (want < kind.base + kind.first or (
                    j < len(slots) and (slots[j].closed or slots[j].forced))):
                self._join_late(kind, key, stream, u, want, now)
                return
            # Else the oldest open slot without a unit of this rank, from there on.
            j = max(j, kind.first)
            n = len(slots)
            ints = u.ints = _ints(key[1], u, kind.sync) if isinstance(key[1], Template) \
                else None
            while j < n:
                s = slots[j]
                if not s.closed and not s.forced and rank not in s.units \
                        and (ints is None or _agrees(kind, s, ints)):
                    slot = s
                    break
                j += 1
            if slot is None:
                self._serial += 1
                slot = _Slot(self._serial, stream, key, now + self._window, kind.base + n,
                             kind.expect & self._live)
                slots.append(slot)
                heapq.heappush(self._heap, (slot.deadline, slot.serial, slot))
            kind.cursor[rank] = slot.pos + 1
        else:
            self._serial += 1
            slot = _Slot(self._serial, stream, None, now)
        self._add_unit(slot, u)

    def _add_unit(self, slot: _Slot, u: _Unit) -> None:
        rank = u.rank
        key = slot.key
        if key is not None and isinstance(key[1], Template):
            ints = u.ints if u.ints is not None else _ints(key[1], u, self._kinds[key].sync)
            agreed = slot.agreed
            slot.agreed = ints if agreed is None else {
                i: v for i, v in agreed.items() if ints.get(i) == v}
        self._seq += 1
        u.seq = self._seq
        slot.units[rank] = u
        fifo = self._fifo.get((rank, slot.stream))
        if fifo is None:
            fifo = self._fifo[(rank, slot.stream)] = deque()
        fifo.append(slot)
        self._dirty.add(slot)
        if rank in slot.waiting:
            slot.waiting.discard(rank)
            if not slot.waiting:
                self._sweep.update((q, slot.stream) for q in slot.units)

    def _join_late(self, kind: _Kind, key: Any, stream: Stream, u: _Unit, pos: int,
                   now: float) -> None:
        """``u`` is its rank's line for the slot at ``pos``, shown already without it: it goes
        with the other ranks late for that slot, not with the next slot's lines."""
        rank = u.rank
        slot = kind.late.get(pos)
        if slot is None or slot.closed or slot.forced or rank in slot.units:
            self._serial += 1
            cursor = kind.cursor
            waiting = {r for r in kind.expect & self._live
                       if r != rank and cursor.get(r, 0) <= pos}
            slot = kind.late[pos] = _Slot(self._serial, stream, key, now + self._window, pos,
                                          waiting)
            heapq.heappush(self._heap, (slot.deadline, slot.serial, slot))
        kind.cursor[rank] = pos + 1
        if len(kind.late) > 64:  # forget late slots already shown
            kind.late = {p: s for p, s in kind.late.items() if not s.closed}
        self._add_unit(slot, u)

    def _passed(self) -> None:
        """Slots completed: their ranks printed their line without a line a member wrote
        before it, so they are not waited for there (a line only some ranks print, such as
        rank 0's "saving checkpoint", does not hold the others' lines back).

        One pass over each queue where a slot completed, from its end: the ranks of the
        complete slots seen so far are not waited for by the slots before them.  Only the
        same stream tells: a rank's stdout and stderr are read from two pipes (one often
        block-buffered), so their order between them is not known.
        """
        sweep, self._sweep = self._sweep, set()
        fifo = self._fifo
        dirty = self._dirty
        for key in sweep:
            q = fifo.get(key)
            if not q:
                continue
            passed: set[int] = set()
            for s in reversed(q):
                waiting = s.waiting
                if not waiting:
                    if s.key is not None:
                        passed.update(s.units)
                elif passed and not waiting.isdisjoint(passed):
                    waiting.difference_update(passed)
                    dirty.add(s)

    # -- showing -------------------------------------------------------------------------
    def _ready(self, slot: _Slot) -> bool:
        return slot.forced or slot.key is None or not slot.waiting

    def _force(self, slot: _Slot) -> None:
        """Show ``slot`` (its window passed) and, first, every unit of its stream its ranks
        wrote before."""
        stack = [slot]
        while stack:
            s = stack.pop()
            if s.forced:
                continue
            s.forced = True
            self._dirty.add(s)
            for r in s.units:
                for before in self._fifo[(r, s.stream)]:
                    if before is s:
                        break
                    if not before.forced:
                        stack.append(before)

    def _pump(self, out: list[Output], all_ranks: bool = False) -> None:
        """Show every slot that is ready and first in line for all its ranks, oldest first.

        First in line means first of its stream for the rank: a complete line is not held
        back by the rank's other stream (two pipes' relative order is only approximate); a
        notice (a rank's exit) waits for everything of its rank.
        """
        if self._sweep:
            self._passed()
        fifo = self._fifo
        touched: dict[Stream, set[int]] = {"stdout": set(), "stderr": set()}
        for s in self._dirty:
            touched[s.stream].update(s.units)
        self._dirty.clear()
        if all_ranks:
            for r, stream in fifo:
                touched[stream].add(r)
        slots: dict[int, _Slot] = {}
        work: list[tuple[int, int]] = []
        for stream, ranks in touched.items():
            for r in ranks:
                q = fifo.get((r, stream))
                if q:
                    slots[q[0].serial] = q[0]
                    work.append((q[0].serial, r))
        heapq.heapify(work)
        while work:
            serial, r = heapq.heappop(work)
            slot = slots[serial]
            if slot.closed or r not in slot.units or not self._ready(slot):
                continue  # stale, or not ready
            first = [rr for rr in slot.units if self._first_in_line(rr, slot)]
            if len(first) == len(slot.units):
                shown = slot.units
                slot.closed = True
                if slot.key is not None:
                    self._kinds[slot.key].trim()
            elif slot.forced and first:  # what is first in line goes; the rest follows
                shown = {rr: slot.units.pop(rr) for rr in first}
            else:
                continue
            for rr in shown:
                q = fifo[(rr, slot.stream)]
                q.popleft()
                for s in (q, fifo.get((rr, _OTHER[slot.stream]))):
                    if s:
                        slots[s[0].serial] = s[0]
                        heapq.heappush(work, (s[0].serial, rr))
            self._render(slot, shown, out)

    def _first_in_line(self, rank: int, slot: _Slot) -> bool:
        """Whether ``slot`` is first of its stream for ``rank`` (first of all, for a notice)."""
        q = self._fifo[(rank, slot.stream)]
        if q[0] is not slot:
            return False
        u = slot.units[rank]
        if slot.key is None and u.item is not None:
            other = self._fifo.get((rank, _OTHER[slot.stream]))
            return not other or other[0].units[rank].seq > u.seq
        return True

    def _render(self, slot: _Slot, units: dict[int, _Unit], out: list[Output]) -> None:
        if len(units) == 1:
            (u,) = units.values()
            if u.item is not None:
                out.append(u.item)
                return
            data = "\n".join(u.lines).encode("utf-8", "surrogateescape")
            out.append(LogLines(u.rank, slot.stream, data, u.hostname, u.pid, u.time, u.partial,
                                u.progress, self._host_of.get(u.rank, "")))
            return
        ranks = tuple(sorted(units))
        us = [units[r] for r in ranks]
        times = [u.time for u in us]
        first = us[0]
        if slot.agreed is not None and len(units) == len(slot.units):
            kind = self._kinds[slot.key]
            agreed = set(slot.agreed)
            kind.sync = agreed if kind.sync is None else kind.sync & agreed
        if isinstance(slot.key[1], str):  # a block: one exact text
            text = "\n".join(first.clean)
        elif all(u.clean[0] == first.clean[0] for u in us):
            text = first.clean[0]
        else:
            text = _fold_line(slot.key[1], self._shapes, us)
        out.append(GroupLine(slot.stream, text, len(us), ranks, fold_ranks(ranks),
                             min(times), max(times), self._hosts(ranks)))

    def _hosts(self, ranks: tuple[int, ...]) -> tuple[str, ...]:
        host_of = self._host_of
        if not host_of:
            return ()
        return tuple(sorted({host_of[r] for r in ranks if r in host_of}))

    # -- progress bars -------------------------------------------------------------------
    def _progress(self, batch: LogLines, now: float) -> None:
        line = batch.lines[-1]
        clean = strip_ansi(line)
        info = self._shapes.shape(clean.rstrip().translate(TO_ZERO), "\n")
        key = (batch.stream, info.template)
        board = self._boards.get(key)
        if board is None:
            board = self._boards[key] = _Board(batch.stream, info.template)
        before = self._bar_of.get((batch.rank, batch.stream))
        if before is not None and before is not board:
            before.states.pop(batch.rank, None)
        self._bar_of[(batch.rank, batch.stream)] = board
        board.states[batch.rank] = _Unit(batch.rank, [line], [clean], batch.time,
                                         batch.hostname, batch.pid, False, True,
                                         spans=info.spans)
        if board.due is None:
            board.due = now + min(self._window, 1.0)

    def _show_board(self, board: _Board, out: list[Output], now: float) -> None:
        board.due = None
        # A rank's bar state is not shown ahead of its earlier lines of the same stream that
        # still wait for their peers: it waits with them (the board comes again soon).
        fifo = self._fifo
        states = {r: u for r, u in board.states.items() if not fifo.get((r, board.stream))}
        if len(states) < len(board.states):
            board.due = now + min(self._window, 1.0)
        if not states:
            return
        if len(states) == 1:
            (u,) = states.values()
            out.append(LogLines(u.rank, board.stream, u.lines[0].encode("utf-8", "surrogateescape"),
                                u.hostname, u.pid, u.time, False, True,
                                self._host_of.get(u.rank, "")))
            return
        ranks = tuple(sorted(states))
        us = [states[r] for r in ranks]
        text = _fold_line(board.template, self._shapes, us)
        times = [u.time for u in us]
        out.append(GroupLine(board.stream, text, len(us), ranks, fold_ranks(ranks),
                             min(times), max(times), self._hosts(ranks)))


def _ints(template: Template, u: _Unit, only: set[int] | None) -> dict[int, str]:
    """The whole-number fields of ``u``'s line, by field index (only those in ``only``, the
    kind's counters, once they are known)."""
    line = u.clean[0]
    out = {}
    if only is not None:
        spans = u.spans
        for i in only:
            a, b = spans[i]
            v = line[a:b]
            if v.isdigit():
                out[i] = v
        return out
    i = 0
    for (a, b), t in zip(u.spans, template.types, strict=True):
        if t == "num":
            v = line[a:b]
            if v.isdigit():
                out[i] = v
        i += 1
    return out


def _agrees(kind: _Kind, slot: _Slot, ints: dict[int, str]) -> bool:
    """Whether a line with whole-number fields ``ints`` may join ``slot``: it must match the
    fields the slot's ranks agree on that are counters -- fields every rank agreed on so far
    in this kind (``sync``), or, before that is known, that two ranks or more agree on here.
    So a rank that skipped "step 3" puts its "step 4" with the others' "step 4", not with
    their "step 3"."""
    agreed = slot.agreed
    if not agreed:
        return True
    sync = kind.sync
    if sync is None:
        if len(slot.units) < 2:
            return True
        for i, v in agreed.items():
            if ints.get(i, v) != v:
                return False
        return True
    for i in sync:
        v = agreed.get(i)
        if v is not None and ints.get(i, v) != v:
            return False
    return True


def _fold_line(template: Template, shapes: ShapeCache, units: list[_Unit]) -> str:
    """The template with each field shown over the units' lines (``_spread``)."""
    columns: list[list[str]] = [[] for _ in template.types]
    for u in units:
        line = u.clean[0]
        spans = u.spans or shapes.shape(line.rstrip().translate(TO_ZERO), "\n").spans
        for column, (start, end) in zip(columns, spans, strict=True):
            column.append(line[start:end])
    ranks = [u.rank for u in units]
    parts = template.parts
    pieces = [parts[0]]
    for kind, column, part in zip(template.types, columns, parts[1:], strict=True):
        fv = FieldValues(kind)
        fv.add_each(column, ranks)
        pieces.append(fv.render())
        pieces.append(part)
    return "".join(pieces)
