"""Group repeated kinds of lines from many ranks into one summary line per window.

This module is the pure engine behind the driver's aggregated view: no trio, no I/O, no clock.
The caller passes ``now`` (seconds, from ``trio.current_time()``) to every method, so the window
logic is deterministic and testable with plain numbers or trio's ``MockClock``.

What a line's *kind* is
-----------------------
Two lines are the same kind when they came on the same stream (stdout and stderr never mix) and
have the same *template*: the line with its variable fields masked.  :func:`template_of` returns
it.  ANSI escape sequences (CSI such as colours, OSC, two-byte escapes) are removed first, so
colouring never changes a kind.  Then the fields below are masked, tried in this order at each
position (leftmost match wins, then the first alternative that matches):

=========  ===========================================================  =======================
field      what matches                                                 examples
=========  ===========================================================  =======================
``uuid``   8-4-4-4-12 hex digits                                        ``1b4e28ba-2fa1-...``
``time``   ISO date with optional time, fraction and zone;               ``2024-11-23T15:31:58Z``
           ``H:MM:SS`` / ``HH:MM:SS`` with optional ``.``/``,`` fraction  ``15:31:58.123456``
``hex``    a digit, ``x``/``X``, hex digits (``0x7f3a``; also reads      ``0x7f3a``, ``3x3``
           ``3x3`` this way); a word of >= 8 hex digits holding at
           least one digit and one letter a-f                           ``e3b0c44298fc``
``bar``    a progress bar: a padded percentage, then ``|`` block glyphs    `` 25%|██▌       |``
           (U+2588..U+258F), ``#``, digits or spaces ``|`` (tqdm, ascii
           or not); its spread is its latest state
``num``    any run of digits, with optional ``.digits`` fraction and     ``12``, ``0.5321``,
           exponent, and a ``-`` sign when not preceded by a word        ``3e-4``, ``-1.5``
           character or ``.``                                           ``rank3`` -> ``rank<num>``
=========  ===========================================================  =======================

Every digit belongs to some field (a digit inside a word is a ``num``: ``rank3``, ``I1123``,
``conv2d``), so the literal text of a template never holds a digit.  In the template each field
reads ``<uuid>``, ``<time>``, ``<hex>``, ``<bar>`` or ``<num>``: ``template_of("step 12 loss 0.5321")`` is
``"step <num> loss <num>"``.

Templates are computed on the line's *shape*: the line with every digit replaced by ``0``.  The
patterns above treat all digits alike, so a shape determines its template and the positions of
its fields, and a cache ``shape -> template`` lets the hot path classify a whole batch with
C-level string operations, never running the regular expression on a shape seen before:

* one ``bytes.translate`` (``str.translate`` for non-ASCII text) over the joined batch;
* a batch whose lines all have one shape is confirmed with one string comparison;
* a mixed batch is cut into runs of equal shapes, each measured with O(log run) memcmp-only
  ``startswith`` calls (doubling strings, and the length of the shape's last complete run as a
  first guess), and a repeated block of two runs ("50 step lines, then a throughput line") is
  measured as one unit.

So the cost is one translation pass per character plus a few Python operations per *run* of
lines, not per line.  A plain ASCII chunk is shaped straight from its bytes, and when all its
lines have one shape (so one length, the common case of a flood) it is never split into line
objects at all: the sampler slices the few lines it keeps out of the chunk's bytes.  Lines whose shapes keep changing (a new hex id or UUID on every line)
cost one regex pass each.  A consequence of masking on the shape: any ``<digit>x<hex>`` token,
such as ``8x8``, is a ``hex`` field.

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

* ``num``: ``min..max`` as the values were written (``loss 0.4100..0.4290``, ``step 5..9``), or
  the value when all are equal;
* ``uuid``, ``time``, ``hex``: up to three distinct values as ``a|b|c`` in order of appearance,
  else the first value and ``…``.

Summaries come out in order of first appearance of their kind in the window.

Two kinds of lines are never held: the last line of a batch marked ``partial`` and the first
line of the next batch of that rank and stream (the rest of that partial line).  Holding them
would print a line's two halves apart; they are printed live and are not counted as a kind.

``across_ranks_only=True`` never collapses a rank's own repeats: a group holds at most one line
per rank per window.  A rank's second line of a kind in the window (including the rank whose
line opened the kind) is printed live, as itself.

Bounds
------
Counts, ranks and time spans are exact.  The spreads are exact while a group holds fewer than
``2 * SAMPLE_LINES`` (512) lines in a window; past that, the group keeps a systematic sample,
every k-th held line (``SAMPLE_LINES`` to ``2 * SAMPLE_LINES - 1`` lines, k doubling as
needed), and the group line says so with a `` [spread of 1 in k lines]`` suffix.  At most
``MAX_KINDS`` kinds are tracked per window; lines of further new kinds are printed live.  The
shape cache is cleared when it holds ``MAX_SHAPES`` shapes or ``MAX_SHAPE_CHARS`` characters.
(A batch whose lines the run-measuring pass cannot account for is classified line by line:
a safety net that chunks from the view, which never hold a ``\n`` inside a line, do not need.)
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any, Final

import attrs

from ._records import GroupLine, LogLines, Output, Stream

__all__ = ["MAX_KINDS", "SAMPLE_LINES", "Aggregator", "fold_ranks", "template_of"]

SAMPLE_LINES: Final = 256
"""A group's spreads are exact up to ``2 * SAMPLE_LINES - 1`` held lines per window."""
MAX_KINDS: Final = 1024
"""Kinds tracked per window; lines of further new kinds are printed live."""
MAX_SHAPES: Final = 4096
MAX_SHAPE_CHARS: Final = 1 << 22
_REP_CHARS: Final = 1 << 13  # longest run-matching string kept per shape (see _Shape.reps)

_ANSI: Final = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|[@-Z\\-_])"  # two-byte escapes
)

# Only ASCII digits and classes that treat all digits alike: a shape (digits -> "0") must
# match exactly where its line would.
_MASK: Final = re.compile(
    r"""
    (?P<uuid>\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b)
    |(?P<time>\b\d{4}-\d\d-\d\d(?:[T\ ]\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)?
        |\b\d{1,2}:\d\d:\d\d(?:[.,]\d+)?)
    |(?P<hex>\b\d[xX][0-9a-fA-F]+\b
        |\b(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b)
    |(?P<bar>\ *\d{1,3}%\|[\u2588-\u258f#0 ]*\|)
    |(?P<num>(?:(?<![\w.])-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
    """,
    re.VERBOSE | re.ASCII,
)
_TO_ZERO: Final = str.maketrans("123456789", "000000000")
_TO_ZERO_B: Final = bytes.maketrans(b"123456789", b"000000000")

Spans = tuple[tuple[int, int], ...]


@attrs.frozen(cache_hash=True)
class _Template:
    """A kind's template; equal by text and field types (``parts`` only renders it)."""

    text: str
    types: tuple[str, ...]
    parts: tuple[str, ...] = attrs.field(eq=False)


@attrs.define(eq=False)
class _Shape:
    """What one shape means: its template, where its fields are, and run-matching strings."""

    template: _Template
    spans: Spans
    # reps[i] == (shape + "\n") * 2**i, grown on demand while no longer than _REP_CHARS: a run
    # of k equal shapes is measured with O(log k) str.startswith calls (memcmp, no copies).
    reps: list[Any]
    # The last complete run of this shape had guess_n + 1 lines; guess == reps[0] * guess_n.
    # Periodic output (50 step lines, then one other line) is then measured with two calls.
    guess: Any = None
    guess_n: int = 0


def _parse(shape: str) -> tuple[_Template, Spans]:
    parts: list[str] = []
    types: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in _MASK.finditer(shape):
        start, end = m.span()
        parts.append(shape[pos:start])
        types.append(m.lastgroup or "num")
        spans.append((start, end))
        pos = end
    parts.append(shape[pos:])
    text = "".join(p + "<" + t + ">" for p, t in zip(parts[:-1], types, strict=True)) + parts[-1]
    return _Template(text, tuple(types), tuple(parts)), tuple(spans)


def template_of(line: str) -> str:
    """Return the grouping key of ``line``: escapes removed, variable fields masked.

    ``template_of("\\x1b[32mstep 12\\x1b[0m loss 0.5321")`` is ``"step <num> loss <num>"``.
    The masked fields are listed in the module docstring.  Runs in O(len(line)).
    """
    if "\x1b" in line:
        line = _ANSI.sub("", line)
    return _parse(line.translate(_TO_ZERO))[0].text


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


def _spread(kind: str, values: list[str]) -> str:
    first = values[0]
    if kind == "num":
        if values.count(first) == len(values):
            return first
        floats = list(map(float, values))
        lo, hi = min(floats), max(floats)
        if lo == hi:
            return first
        return f"{values[floats.index(lo)]}..{values[floats.index(hi)]}"
    if kind == "bar":  # a progress bar: its latest state says the most
        return values[-1]
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 3:
        return "|".join(distinct)
    return first + "…"


def _lift(s: Any, pos: int, reps: list[Any], size: int, limit: int) -> tuple[int, int]:
    """Count the copies of ``reps[0]`` in ``s`` at ``pos``: ``(copies, end position)``.

    ``reps[i]`` must be ``reps[0] * 2**i``; the list grows (doubling) while its strings fit in
    ``limit`` characters.  Gallops up, then halves down: O(log copies) calls.
    """
    n = 0
    i = 0
    while True:
        r = reps[i]
        if not s.startswith(r, pos):
            break
        pos += len(r)
        n += 1 << i
        i += 1
        if i == len(reps):
            if 2 * len(r) > limit or 2 * len(r) > size - pos:
                i -= 1
                while s.startswith(r, pos):
                    pos += len(r)
                    n += 1 << i
                break
            reps.append(r + r)
    while i > 0:
        i -= 1
        r = reps[i]
        if s.startswith(r, pos):
            pos += len(r)
            n += 1 << i
    return n, pos


# A stretch of one shape's lines in a batch: the lines a + t*period + [0, k) for t < reps.
_Segment = tuple[_Shape, int, int, int, int]


@attrs.define(eq=False)
class _Group:
    """The held lines of one kind in the current window."""

    stream: Stream
    template: _Template
    live_rank: int  # rank of the line printed live when the kind appeared
    count: int = 0
    ranks: set[int] = attrs.field(factory=set)
    batch: LogLines | None = None  # the last batch that brought held lines
    first_batch: LogLines | None = None  # batch and index of the first held line
    first_index: int = 0
    first_time: float = 0.0
    last_time: float = 0.0
    # Systematic sample of the held lines (escapes removed) for the spreads, as runs that
    # share field spans: every `stride`-th held line; `skip` held lines to pass before the next.
    chunks: list[tuple[Spans, list[str]]] = attrs.field(factory=list)
    sampled: int = 0
    stride: int = 1
    skip: int = 0

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

    def sample(
        self, clean: Sequence[str], a: int, k: int, reps: int, period: int, spans: Spans
    ) -> None:
        """Sample from ``clean[a + t*period : a + t*period + k]`` for ``t < reps``.

        Called (after :meth:`enter` and counting) only when the next pick is among them.
        """
        total = k * reps
        first = self.skip
        stride = self.stride
        picked: Sequence[str]
        if reps == 1:
            picked = clean[a + first : a + k : stride]
        elif k == 1:
            picked = clean[a + first * period : a + reps * period : stride * period]
        else:
            picked = [clean[a + i // k * period + i % k] for i in range(first, total, stride)]
        taken = len(picked)
        self.skip = first + taken * stride - total
        chunks = self.chunks
        if chunks and chunks[-1][0] is spans:
            chunks[-1][1].extend(picked)
        else:
            chunks.append((spans, list(picked)))
        self.sampled += taken
        while self.sampled >= 2 * SAMPLE_LINES:
            self._decimate()

    def hold(
        self,
        batch: LogLines,
        clean: Sequence[str],
        off: int,
        a: int,
        k: int,
        reps: int,
        period: int,
        spans: Spans,
    ) -> None:
        """Count lines ``clean[a + t*period : a + t*period + k]`` for ``t < reps`` in.

        ``clean`` holds lines ``off...`` of ``batch`` with escapes removed.
        """
        if self.batch is not batch:
            self.enter(batch, off + a)
        total = k * reps
        self.count += total
        if self.skip >= total:
            self.skip -= total
        else:
            self.sample(clean, a, k, reps, period, spans)

    def _decimate(self) -> None:
        # Keep the even positions of the sample: it stays "every stride-th held line" for
        # the doubled stride.  The next pick is two old strides after the last line kept: one
        # old stride further than planned when that last line was the last sampled one.
        kept_chunks: list[tuple[Spans, list[str]]] = []
        seen = 0
        for spans, lines in self.chunks:
            kept = lines[seen % 2 :: 2]
            seen += len(lines)
            if kept:
                kept_chunks.append((spans, kept))
        if seen % 2:
            self.skip += self.stride
        self.chunks = kept_chunks
        self.sampled = (seen + 1) // 2
        self.stride *= 2

    def summary(self) -> Output:
        """The output standing for the held lines (there is at least one)."""
        batch = self.first_batch
        assert batch is not None
        if self.count == 1:
            line = batch.lines[self.first_index]
            return LogLines(batch.rank, self.stream, line.encode("utf-8", "surrogateescape"),
                            batch.hostname, batch.pid, batch.time)
        template = self.template
        parts = template.parts
        pieces = [parts[0]]
        for j, kind in enumerate(template.types):
            values: list[str] = []
            for spans, lines in self.chunks:
                start, end = spans[j]
                values.extend(map(itemgetter(slice(start, end)), lines))
            pieces.append(_spread(kind, values))
            pieces.append(parts[j + 1])
        if self.stride > 1:
            pieces.append(f" [spread of 1 in {self.stride} lines]")
        ranks = tuple(sorted(self.ranks))
        return GroupLine(
            stream=self.stream,
            text="".join(pieces),
            count=self.count,
            ranks=ranks,
            ranks_text=fold_ranks(ranks),
            first_time=self.first_time,
            last_time=self.last_time,
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


def _check_window(window: float) -> float:
    if not (isinstance(window, (int, float)) and math.isfinite(window) and window > 0):
        raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
    return float(window)


class Aggregator:
    """Turns batches of lines into live lines now and group summaries at the window's end.

    Not thread-safe; one task feeds it.  See the module docstring for the exact semantics.
    """

    def __init__(self, window: float, *, across_ranks_only: bool = False) -> None:
        """Aggregate over windows of ``window`` seconds (> 0, else :exc:`ValueError`)."""
        self._window = _check_window(window)
        self._across = across_ranks_only
        self._open_time = 0.0
        self._deadline: float | None = None
        self._groups: dict[str, dict[_Template, _Group]] = {"stdout": {}, "stderr": {}}
        self._order: list[_Group] = []
        self._shapes: dict[Any, _Shape] = {}  # shape (str or ASCII bytes) -> its meaning
        self._shape_chars = 0
        self._templates: dict[_Template, _Template] = {}  # interned: lookups hit by identity
        self._continued: set[tuple[int, str]] = set()  # (rank, stream) ending mid-line

    @property
    def window(self) -> float:
        """The window length in seconds."""
        return self._window

    @property
    def across_ranks_only(self) -> bool:
        """Whether a group holds at most one line per rank per window."""
        return self._across

    # -- the window ------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the open window closes; ``None`` while no window is open."""
        return self._deadline

    def expire(self, now: float) -> list[Output]:
        """Summaries due at ``now`` (none while ``now`` is before the deadline).

        At or after the deadline this closes the window: the next line opens a new one.
        """
        if self._deadline is not None and now >= self._deadline:
            return self._close()
        return []

    def set_window(self, window: float, now: float) -> list[Output]:
        """Change the window length (> 0, else :exc:`ValueError`).

        An open window now closes at its opening time plus ``window``; if that is not after
        ``now``, its summaries are returned at once.
        """
        self._window = _check_window(window)
        if self._deadline is None:
            return []
        self._deadline = self._open_time + self._window
        return self.expire(now)

    def holds(self, rank: int) -> bool:
        """Whether the open window holds lines of ``rank`` (to print before its exit)."""
        return any(g.count and rank in g.ranks for g in self._order)

    def drain(self, now: float) -> list[Output]:
        """All summaries pending, at once (for flush, teardown, turning aggregation off).

        Closes the window.  ``now`` is accepted for symmetry; draining does not depend on it.
        """
        if self._deadline is None:
            return []
        return self._close()

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

        That is: the summaries of a window whose deadline ``now`` has reached, then the lines of
        ``batch`` that are printed live (new kinds, partial-line pieces, and in
        ``across_ranks_only`` mode a rank's repeats), as :class:`LogLines` keeping the batch's
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
                                batch.time, batch.partial and b == n))
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
            segments = self._segments(raw.translate(_TO_ZERO_B) + b"\n", m, b"\n")
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
                    segments = self._segments(shapes, m, b"\n")
                else:
                    segments = self._segments((joined + "\n").translate(_TO_ZERO), m, "\n")
            if segments is None:  # a "line" holding "\n": shape each one on its own
                clean = [_ANSI.sub("", ln) if "\x1b" in ln else ln for ln in seg]
                segments = [
                    (self._shape(ln.translate(_TO_ZERO), "\n"), i, 1, 1, 0)
                    for i, ln in enumerate(clean)
                ]
        assert segments is not None
        groups = self._groups[batch.stream]
        rank = batch.rank
        across = self._across
        for info, a, k, reps, period in segments:
            template = info.template
            g = groups.get(template)
            if g is None:
                if len(self._order) >= MAX_KINDS or reps > 1:
                    live.extend(
                        (off + a + t * period, off + a + t * period + k) for t in range(reps)
                    )
                    continue
                g = _Group(batch.stream, template, rank)
                groups[template] = g
                self._order.append(g)
                live.append((off + a, off + a + 1))
                a += 1
                k -= 1
                if not k:
                    continue
            if not across:
                # g.hold(), inlined: this runs once per segment of every batch.
                if g.batch is not batch:
                    g.enter(batch, off + a)
                total = k * reps
                g.count += total
                if g.skip >= total:
                    g.skip -= total
                else:
                    g.sample(clean, a, k, reps, period, info.spans)
                continue
            held = rank != g.live_rank and rank not in g.ranks
            if held:
                g.hold(batch, clean, off, a, 1, 1, 0, info.spans)
            for t in range(reps):
                start = a + t * period + (held and not t)
                if start < a + t * period + k:
                    live.append((off + start, off + a + t * period + k))
        return clean

    def _shape(self, key: Any, nl: Any) -> _Shape:
        """The meaning of shape ``key`` (str, or ASCII bytes with ``nl == b"\\n"``), cached."""
        info = self._shapes.get(key)
        if info is None:
            if len(self._shapes) >= MAX_SHAPES or self._shape_chars >= MAX_SHAPE_CHARS:
                self._shapes.clear()
                self._templates.clear()
                self._shape_chars = 0
            template, spans = _parse(key.decode("ascii") if isinstance(key, bytes) else key)
            template = self._templates.setdefault(template, template)
            info = self._shapes[key] = _Shape(template, spans, [key + nl])
            self._shape_chars += len(key)
        return info

    def _segments(self, s: Any, m: int, nl: Any) -> list[_Segment] | None:
        """Cut ``s`` (the shapes of ``m`` lines, each ending in ``nl``) into segments.

        A segment is a run of equal shapes, or (for output that repeats a block such as
        "50 step lines, then a throughput line") the runs of a repeated two-run block, measured
        with one :func:`_lift`.  ``None`` when ``s`` does not hold exactly ``m`` lines.
        """
        size = len(s)
        shapes = self._shapes
        end = s.find(nl)
        key = s[:end]
        info = shapes.get(key) or self._shape(key, nl)
        block = info.reps[0]
        if size == m * len(block) and s == block * m:
            return [(info, 0, m, 1, 0)]
        segments: list[_Segment] = []
        pos = a = 0
        # The last two runs: (shape, position, first line, lines).
        prev: tuple[_Shape, int, int, int] | None = None
        prev2: tuple[_Shape, int, int, int] | None = None
        while pos < size:
            info = None  # type: ignore[assignment]
            if prev2 is not None and prev is not None:
                info = prev2[0]
                block = info.reps[0]
                if s.startswith(block, pos):
                    # The shape of two runs ago is back.  Does the whole block of the last two
                    # runs repeat?  Its last byte must then be a newline (a cheap test that
                    # rules out most misses) before we compare it all.
                    width = pos - prev2[1]
                    if s[pos + width - 1 : pos + width] == nl and s.startswith(
                        s[prev2[1] : pos], pos
                    ):
                        copies, pos = _lift(s, pos, [s[prev2[1] : pos]], size, size)
                        period = a - prev2[2]
                        segments.append((prev2[0], a, prev2[3], copies, period))
                        segments.append((prev[0], a + prev2[3], prev[3], copies, period))
                        a += copies * period
                        prev = prev2 = None
                        continue
                    nxt = pos + len(block)
                else:
                    info = None  # type: ignore[assignment]
            if info is None:
                end = s.find(nl, pos)
                key = s[pos:end]
                info = shapes.get(key) or self._shape(key, nl)
                block = info.reps[0]
                nxt = end + 1
            copies = 0
            if s.startswith(block, nxt):
                guess = info.guess
                if guess is not None and s.startswith(guess, nxt):
                    nxt += len(guess)
                    copies = info.guess_n
                    if s.startswith(block, nxt):
                        more, nxt = _lift(s, nxt, info.reps, size, _REP_CHARS)
                        copies += more
                else:
                    copies, nxt = _lift(s, nxt, info.reps, size, _REP_CHARS)
                if pos and nxt < size and copies != info.guess_n:
                    # A complete run (another shape before and after it): expect its length.
                    info.guess_n = copies
                    info.guess = block * copies if copies * len(block) <= _REP_CHARS else None
            segments.append((info, a, copies + 1, 1, 0))
            prev2 = prev
            prev = (info, pos, a, copies + 1)
            pos = nxt
            a += copies + 1
        return segments if a == m else None
