"""Group repeated kinds of lines from many ranks into one summary line per window.

This module is the pure engine behind the driver's aggregated view: no trio, no I/O, no clock.
The caller passes ``now`` (seconds, from ``trio.current_time()``) to every method, so the window
logic is deterministic and testable with plain numbers or trio's ``MockClock``.

What a line's *kind* is
-----------------------
Two lines are the same kind when they came on the same stream (stdout and stderr never mix) and
have the same *template* (``_shapes``: the line with its numbers, tokens, times and progress
bars masked).  The hot path classifies a whole chunk at once: one ``translate`` over the chunk
gives every line's shape, runs of equal shapes are measured with a few ``startswith`` calls,
and a plain ASCII chunk whose lines all have one shape is never split into line objects
until its values are read.

The window
----------
A line whose kind was not seen yet in the current window is returned by :meth:`Aggregator.add`
at once, as itself.  Its repeats in the same window are *held* and summarized when the window
closes.  The window opens with the first line after an idle spell (no window open):
``deadline = now + window``; at the deadline (:meth:`Aggregator.expire`) every held group is
emitted, and the next line opens a new window in which every kind is new again.  A call to
:meth:`Aggregator.add` at or after the deadline closes the old window first and returns its
summaries ahead of the new batch's lines.

Every line is represented exactly once: printed live, or counted in exactly one summary.  A held
group of one line prints as that line itself (a :class:`LogLines`, escapes kept); a group of two
or more prints as one :class:`GroupLine` whose ``count`` is the number of held lines, ``ranks``
the ranks that printed them, ``first_time``/``last_time`` the smallest and largest wall-clock
``time`` of the batches they came in, and ``text`` the template with each field shown as its
spread over those lines:

each field shown over all of those lines, exactly (``_spread``: numbers as their minimum and
maximum, ``loss 0.4100..0.4290``; tokens as their distinct values; never a value no line held).

Summaries come out in order of first appearance of their kind in the window.

Two kinds of lines are never held: the last line of a batch marked ``partial`` and the first
line of the next batch of that rank and stream (the rest of that partial line).  Holding them
would print a line's two halves apart; they are printed live and are not counted as a kind.

Bounds
------
Counts, ranks, time spans and every field's values are exact.  At most ``MAX_KINDS`` kinds are
tracked per window; lines of further new kinds are printed live.  (A batch whose lines the
run-measuring pass cannot account for is classified line by line: a safety net that chunks
from the view, which never hold a ``\n`` inside a line, do not need.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Final

import attrs

from ._blocks import BLOCK_IDLE, BlockAssembler
from ._records import GroupLine, LogLines, Output, Stream
from ._shapes import ANSI as _ANSI
from ._shapes import TO_ZERO as _TO_ZERO
from ._shapes import TO_ZERO_B as _TO_ZERO_B
from ._shapes import ShapeCache, Spans, Template, template_of
from ._spread import FieldValues

__all__ = ["MAX_KINDS", "Aggregator", "check_window", "fold_ranks", "template_of"]

MAX_KINDS: Final = 1024
"""Kinds tracked per window; lines of further new kinds are printed live."""


def fold_ranks(ranks: Iterable[int]) -> str:
    """Fold ranks into ranges: ``[0, 1, 2, 3, 4, 5, 6, 9]`` gives ``"0-6,9"``.

    Duplicates are ignored and order does not matter; no ranks give ``""``.
    """
    out: list[str] = []
    start = prev = -2
    for r in sorted(set(ranks)):
        if r == prev + 1 and out:
            prev = r
            out[-1] = f"{start}-{r}"
            continue
        start = prev = r
        out.append(str(r))
    return ",".join(out)


@attrs.define(eq=False)
class _Group:
    """The held lines of one kind in the current window."""

    stream: Stream
    template: Template
    count: int = 0
    ranks: set[int] = attrs.field(factory=set)
    hosts: set[str] = attrs.field(factory=set)  # in a run over many hosts
    batch: LogLines | None = None  # the last batch that brought held lines
    first_batch: LogLines | None = None  # batch and index of the first held line
    first_index: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    fields: list[FieldValues] | None = None  # each field's values over the held lines

    def enter(self, batch: LogLines, index: int) -> None:
        """Note that ``batch`` (its line ``index`` first) brings held lines to the group."""
        self.batch = batch
        t = batch.time
        if self.count:
            if t < self.first_time:
                self.first_time = t
            elif t > self.last_time:
                self.last_time = t
        else:
            self.first_batch = batch
            self.first_index = index
            self.first_time = self.last_time = t
        self.ranks.add(batch.rank)
        if batch.host:
            self.hosts.add(batch.host)

    def take(
        self, clean: Sequence[str], a: int, k: int, reps: int, period: int, spans: Spans,
        rank: int,
    ) -> None:
        """Add the field values of lines ``clean[a + t*period : a + t*period + k]``, ``t < reps``
        (lines of one shape, of ``rank``)."""
        fields = self.fields
        if fields is None:
            fields = self.fields = [FieldValues(kind) for kind in self.template.types]
        if not fields:
            return
        for t in range(reps):
            start = a + t * period
            run = clean[start : start + k]
            for fv, span in zip(fields, spans, strict=True):
                fv.add_run(list(map(itemgetter(slice(*span)), run)), rank)

    def summary(self) -> Output:
        """The output standing for the held lines (there is at least one)."""
        batch = self.first_batch
        assert batch is not None
        if self.count == 1:
            line = batch.lines[self.first_index]
            return LogLines(batch.rank, self.stream, line.encode("utf-8", "surrogateescape"),
                            batch.hostname, batch.pid, batch.time, host=batch.host)
        parts = self.template.parts
        pieces = [parts[0]]
        for fv, part in zip(self.fields or (), parts[1:], strict=True):
            pieces.append(fv.render())
            pieces.append(part)
        ranks = tuple(sorted(self.ranks))
        return GroupLine(
            stream=self.stream,
            text="".join(pieces),
            count=self.count,
            ranks=ranks,
            ranks_text=fold_ranks(ranks),
            first_time=self.first_time,
            last_time=self.last_time,
            hosts=tuple(sorted(self.hosts)),
        )


class _UniformLines(Sequence[str]):
    """The lines of a chunk whose lines all have one length, sliced from its bytes only when
    asked for (the sampler asks for a few): no per-line objects for the rest."""

    __slots__ = ("_raw", "_width", "_n")

    def __init__(self, raw: bytes, width: int, n: int) -> None:
        self._raw = raw  # ASCII: byte offsets are character offsets
        self._width = width  # a line and its newline
        self._n = n

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        start = i * self._width
        return self._raw[start : start + self._width - 1].decode("ascii")

    def raw(self, a: int, b: int) -> bytes:
        """Lines ``a..b`` as bytes, joined by newlines."""
        return self._raw[a * self._width : b * self._width - 1]


def check_window(window: float) -> float:
    if not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
        raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
    return float(window)


_BLOCK_START = re.compile(rb"Traceback \(most recent call last\):|Exception Group Traceback")


def _piece(batch: LogLines, lines: Sequence[str], partial: bool) -> LogLines:
    """Some of ``batch``'s lines, with its origin."""
    return LogLines(batch.rank, batch.stream, "\n".join(lines).encode("utf-8", "surrogateescape"),
                    batch.hostname, batch.pid, batch.time, partial, host=batch.host)


class Aggregator:
    """Turns batches of lines into live lines now and group summaries at the window's end.

    Not thread-safe; one task feeds it.  See the module docstring for the exact semantics.
    """

    def __init__(self, window: float) -> None:
        """Aggregate over windows of ``window`` seconds (> 0, else :exc:`ValueError`)."""
        self._window = check_window(window)
        self._open_time = 0.0
        self._deadline: float | None = None
        self._groups: dict[str, dict[Template, _Group]] = {"stdout": {}, "stderr": {}}
        self._order: list[_Group] = []
        self._cache = ShapeCache()
        self._continued: set[tuple[int, str]] = set()  # (rank, stream) ending mid-line
        # Tracebacks are kept whole, never grouped frame by frame: a chunk that starts one
        # (and the chunks of its rank and stream while it is open) is cut into blocks.
        self._blocks: dict[tuple[int, str], BlockAssembler] = {}
        self._open_blocks: dict[tuple[int, str], LogLines] = {}  # key -> a batch of it

    @property
    def window(self) -> float:
        """The window length in seconds."""
        return self._window

    # -- the window ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the open window closes (or an open traceback is given up waiting for more);
        ``None`` while nothing is held."""
        times = [self._blocks[k].last + BLOCK_IDLE for k in self._open_blocks]
        if self._deadline is not None:
            times.append(self._deadline)
        return min(times) if times else None

    def expire(self, now: float) -> list[Output]:
        """Summaries due at ``now`` (none while ``now`` is before the deadline), and
        tracebacks idle long enough to be whole.

        At or after the deadline this closes the window: the next line opens a new one.
        """
        out = self._close_blocks(now)
        if self._deadline is not None and now >= self._deadline:
            out += self._close()
        return out

    def _close_blocks(self, now: float | None, rank: int | None = None) -> list[Output]:
        """The open blocks idle since before ``now - BLOCK_IDLE`` (all, with ``None``; of
        ``rank`` only, when given), whole."""
        out: list[Output] = []
        for key, batch in list(self._open_blocks.items()):
            asm = self._blocks[key]
            if (rank is None or key[0] == rank) and (now is None or asm.last + BLOCK_IDLE <= now):
                del self._open_blocks[key]
                units: list[Any] = []
                asm.close(units)
                out += self._units(batch, units, now if now is not None else asm.last)
        return out

    def set_window(self, window: float, now: float) -> list[Output]:
        """Change the window length (> 0, else :exc:`ValueError`).

        An open window now closes at its opening time plus ``window``; if that is not after
        ``now``, its summaries are returned at once.
        """
        self._window = check_window(window)
        if self._deadline is None:
            return []
        self._deadline = self._open_time + self._window
        return self.expire(now)

    def rank_ended(self, rank: int, now: float, notices: Iterable[Output] = ()) -> list[Output]:
        """``rank`` exited: if the window holds lines of it, everything held, now, so that
        its lines come before ``notices`` (its exit), which follow."""
        out = self._close_blocks(None, rank)
        return [*out, *(self.drain(now) if self.holds(rank) else []), *notices]

    def holds(self, rank: int) -> bool:
        """Whether the open window holds lines of ``rank`` (to print before its exit)."""
        return any(g.count and rank in g.ranks for g in self._order)

    def drain(self, now: float) -> list[Output]:
        """All summaries pending, at once (for flush, teardown, turning aggregation off).

        Closes the window.  ``now`` is accepted for symmetry; draining does not depend on it.
        """
        out = self._close_blocks(None)
        if self._deadline is None:
            return out
        return out + self._close()

    def _close(self) -> list[Output]:
        out = [g.summary() for g in self._order if g.count]
        self._order = []
        for groups in self._groups.values():
            groups.clear()
        self._deadline = None
        return out

    # -- lines -----------------------------------------------------------------------------

    def add(self, batch: LogLines, now: float) -> list[Output]:
        """Feed one batch (many lines, one rank, one stream); return what to print at once.

        A traceback in it is kept whole and printed as its rank's own lines once complete
        (see ``_blocks``); the other lines as below.
        """
        key = (batch.rank, batch.stream)
        if key in self._open_blocks or _BLOCK_START.search(batch.data):
            return self._add_blocks(batch, now)
        return self._add_lines(batch, now)

    def _add_blocks(self, batch: LogLines, now: float) -> list[Output]:
        key = (batch.rank, batch.stream)
        lines = list(batch.lines)
        out: list[Output] = []
        if key in self._continued:  # the rest of a partial line shown before
            out += self._add_lines(_piece(batch, lines[:1], batch.partial and len(lines) == 1),
                                   now)
            lines = lines[1:]
        tail = lines.pop() if batch.partial and lines else None
        asm = self._blocks.get(key)
        if asm is None:
            asm = self._blocks[key] = BlockAssembler()
        units: list[Any] = []
        for line in lines:
            asm.feed(line, _ANSI.sub("", line), now, units)
        if tail is not None or not asm.open:  # a partial line ends any block
            asm.close(units)
            self._open_blocks.pop(key, None)
        else:
            self._open_blocks[key] = batch
        out += self._units(batch, units, now)
        if tail is not None:
            out += self._add_lines(_piece(batch, [tail], True), now)
        return out

    def _units(self, batch: LogLines, units: list[Any], now: float) -> list[Output]:
        """Blocks as their rank's own lines, whole; runs of other lines as usual."""
        out: list[Output] = []
        plain: list[str] = []
        for lines, _clean, is_block in units:
            if is_block and len(lines) > 1:
                if plain:
                    out += self._add_lines(_piece(batch, plain, False), now)
                    plain = []
                out.append(_piece(batch, lines, False))
            else:
                plain.extend(lines)
        if plain:
            out += self._add_lines(_piece(batch, plain, False), now)
        return out

    def _add_lines(self, batch: LogLines, now: float) -> list[Output]:
        """Feed one batch (many lines, one rank, one stream); return what to print at once.

        That is: the summaries of a window whose deadline ``now`` has reached, then the lines of
        ``batch`` that are printed live (new kinds, partial-line pieces), as :class:`LogLines`
        keeping the batch's
        rank, hostname, pid, time and (for the piece holding its last line) ``partial``.  When
        every line is live, the result holds ``batch`` itself.
        """
        out = self._close() if self._deadline is not None and now >= self._deadline else []
        n = batch.line_count  # no splitting yet: most chunks never need it
        live: list[tuple[int, int]] = []
        lo = 0
        if self._continued:
            key = (batch.rank, batch.stream)
            if key in self._continued:
                lo = 1
                live.append((0, 1))
                if not batch.partial:
                    self._continued.discard(key)
        if batch.partial:
            self._continued.add((batch.rank, batch.stream))
            hi = max(n - 1, lo)
        else:
            hi = n
        lines: Sequence[str] | None = None
        if hi > lo:
            if self._deadline is None:
                self._open_time = now
                self._deadline = now + self._window
            lines = self._classify(batch, lo, hi, live)
        if hi < n:
            live.append((hi, n))
        if not live:
            return out
        if len(live) > 1:
            live.sort()
            merged = [live[0]]
            for a, b in live[1:]:
                if a == merged[-1][1]:
                    merged[-1] = (merged[-1][0], b)
                else:
                    merged.append((a, b))
            live = merged
        for a, b in live:
            if b - a == n:
                out.append(batch)
                continue
            if isinstance(lines, _UniformLines):
                data = lines.raw(a, b)
            else:
                data = "\n".join(batch.lines[a:b]).encode("utf-8", "surrogateescape")
            out.append(LogLines(batch.rank, batch.stream, data, batch.hostname, batch.pid,
                                batch.time, batch.partial and b == n, host=batch.host))
        return out

    def _classify(
        self, batch: LogLines, lo: int, hi: int, live: list[tuple[int, int]]
    ) -> Sequence[str]:
        """Route lines ``lo..hi`` of ``batch`` to groups or to ``live``; return the batch's
        lines (as the sampler saw them: escapes removed, when it had to split them)."""
        off = lo
        m = hi - lo
        raw = batch.data
        segments = None
        clean: Sequence[str]
        if m == batch.line_count and raw.isascii() and b"\x1b" not in raw:
            # The whole chunk, plain ASCII: its shapes straight from its bytes, and when they
            # are all one shape (so all one length) its lines are sliced only when sampled.
            segments = self._cache.segments(raw.translate(_TO_ZERO_B) + b"\n", m, b"\n")
            if segments is not None and len(segments) == 1:
                clean = _UniformLines(raw, len(segments[0][0].reps[0]), m)
            else:
                clean = batch.lines
        else:
            seg = batch.lines if m == batch.line_count else batch.lines[lo:hi]
            clean = seg
            joined = batch.text if m == batch.line_count else "\n".join(seg)
            if "\x1b" in joined:
                joined = _ANSI.sub("", joined)
                clean = joined.split("\n")
            if len(clean) == m:
                if joined.isascii():  # bytes.translate is the cheaper pass; offsets stay equal
                    shapes: Any = joined.encode("ascii").translate(_TO_ZERO_B) + b"\n"
                    segments = self._cache.segments(shapes, m, b"\n")
                else:
                    segments = self._cache.segments((joined + "\n").translate(_TO_ZERO), m, "\n")
            if segments is None:  # a "line" holding "\n": shape each one on its own
                clean = [_ANSI.sub("", ln) if "\x1b" in ln else ln for ln in seg]
                segments = [
                    (self._cache.shape(ln.translate(_TO_ZERO), "\n"), i, 1, 1, 0)
                    for i, ln in enumerate(clean)
                ]
        assert segments is not None
        groups = self._groups[batch.stream]
        rank = batch.rank
        for info, a, k, reps, period in segments:
            template = info.template
            g = groups.get(template)
            if g is None:
                if len(self._order) >= MAX_KINDS or reps > 1:
                    live.extend(
                        (off + a + t * period, off + a + t * period + k) for t in range(reps)
                    )
                    continue
                g = _Group(batch.stream, template)
                groups[template] = g
                self._order.append(g)
                live.append((off + a, off + a + 1))
                a += 1
                k -= 1
                if not k:
                    continue
            if g.batch is not batch:
                g.enter(batch, off + a)
            g.count += k * reps
            g.take(clean, a, k, reps, period, info.spans, rank)
        return clean
