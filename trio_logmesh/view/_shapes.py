"""Line shapes and templates: which lines are "the same line" with different values.

A line's *template* is the line with its variable fields masked: ``step <num> loss <num>``.
Two lines of one stream with one template are the same kind of line; folding (``_align``,
``_aggregate``) groups them and shows each field's values (``_spread``).  ANSI escape
sequences (colours, OSC titles) are removed first, so colouring never changes a kind.

The fields, tried in this order at each position:

=========  ==============================================================  ====================
field      what matches                                                    examples
=========  ==============================================================  ====================
``bar``    a progress bar: a padded percentage, then ``|`` block glyphs     `` 25%|██▌    |``
           (U+2588..U+258F), ``#``, digits or spaces, then ``|`` (tqdm)
``time``   ISO date with optional time, fraction and zone; ``H:MM:SS``      ``2024-11-23T15:31``
           with optional fraction                                          ``15:31:58.123``
``num``    a plain number standing alone: digits, optional fraction and     ``12``, ``0.5321``,
           exponent, optional ``-`` sign                                   ``3e-4``, ``-1.5``
``tok``    any other word holding a digit: a version, an address with its   ``2.3.1``,
           port, a device list, an id, a name with a number: kept whole     ``10.0.0.1:29500``,
                                                                           ``2,3,4,5``, ``gpu3``
=========  ==============================================================  ====================

A *word* is a run of letters, digits and ``_ . : @ + ~ , -`` (so ``/``, ``=``, ``%``,
brackets, quotes and spaces end it; a word's trailing ``. , : -`` is punctuation, not part of
it).  A word with a digit is a ``num`` when it is a plain number (or a number followed by a unit
made of letters: ``32GB``, ``9.9it``, whose unit stays literal text), else a ``tok``.  So
``step 5/100`` has two numbers, ``loss=0.41,`` one, and ``torch 2.10.2`` or
``CUDA_VISIBLE_DEVICES=2,3`` one token each: a range is only ever drawn between plain numbers.
Every digit belongs to a field, so a template's literal text never holds a digit.

Templates are computed on the line's *shape*: the line with every digit replaced by ``0``.  The
patterns above treat all digits alike, so a shape determines its template and the positions of
its fields, and a cache ``shape -> template`` lets the hot path classify a whole chunk with
C-level string operations (:meth:`ShapeCache.segments`): one ``translate`` over the chunk,
then runs of equal shapes measured with O(log run) ``startswith`` calls.  Lines whose shapes
keep changing cost one regular-expression pass each.
"""

from __future__ import annotations

import re
from typing import Any, Final

import attrs

MAX_SHAPES: Final = 4096
MAX_SHAPE_CHARS: Final = 1 << 22
_REP_CHARS: Final = 1 << 13  # longest run-matching string kept per shape (see _Shape.reps)

ANSI: Final = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]"  # CSI: colours, cursor moves
    r"|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"  # OSC: titles, hyperlinks
    r"|[@-Z\\-_])"  # two-byte escapes
)

_WORD_CHARS: Final = r"\w.:@+~,\-"
# Only ASCII digits and classes that treat all digits alike: a shape (digits -> "0") must
# match exactly where its line would.
MASK: Final = re.compile(
    rf"""
    (?P<bar>\ *\d{{1,3}}%\|[\u2588-\u258f\#0\ ]*\|)
    |(?P<time>\b\d{{4}}-\d\d-\d\d(?:[T\ ]\d\d:\d\d(?::\d\d)?(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?)?
        (?![{_WORD_CHARS}]*\d)
        |(?<![{_WORD_CHARS}])\d{{1,2}}:\d\d:\d\d(?:[.,]\d+)?(?![{_WORD_CHARS}]*\d))
    |(?P<word>(?<![{_WORD_CHARS}])[{_WORD_CHARS}]*\d[{_WORD_CHARS}]*)
    """,
    re.VERBOSE | re.ASCII,
)
_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", re.ASCII)
# 12GB, 9.9it (not 0x1f: a hex number is a token)
_WITH_UNIT: Final = re.compile(r"(?!0[xX])-?\d+(?:\.\d+)?(?=[A-Za-z]+$)", re.ASCII)
_TRAILING: Final = ".,:-"
TO_ZERO: Final = str.maketrans("123456789", "000000000")
TO_ZERO_B: Final = bytes.maketrans(b"123456789", b"000000000")

Spans = tuple[tuple[int, int], ...]


@attrs.frozen(cache_hash=True)
class Template:
    """A kind's template; equal by text and field types (``parts`` only renders it)."""

    text: str
    types: tuple[str, ...]
    parts: tuple[str, ...] = attrs.field(eq=False)


@attrs.define(eq=False)
class Shape:
    """What one shape means: its template, where its fields are, and run-matching strings."""

    template: Template
    spans: Spans
    # reps[i] == (shape + "\n") * 2**i, grown on demand while no longer than _REP_CHARS: a run
    # of k equal shapes is measured with O(log k) str.startswith calls (memcmp, no copies).
    reps: list[Any]
    # The last complete run of this shape had guess_n + 1 lines; guess == reps[0] * guess_n.
    # Periodic output (50 step lines, then one other line) is then measured with two calls.
    guess: Any = None
    guess_n: int = 0


def parse(shape: str) -> tuple[Template, Spans]:
    """The template of a shape (or of any line) and the spans of its fields."""
    parts: list[str] = []
    types: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for m in MASK.finditer(shape):
        start, end = m.span()
        kind = m.lastgroup or "word"
        if kind == "word":
            while shape[end - 1] in _TRAILING:
                end -= 1
            if _NUMBER.fullmatch(shape, start, end):
                kind = "num"
            else:
                unit = _WITH_UNIT.match(shape, start, end)
                if unit is not None:  # a number with its unit: the unit is literal text
                    kind, end = "num", unit.end()
                else:
                    kind = "tok"
        parts.append(shape[pos:start])
        types.append(kind)
        spans.append((start, end))
        pos = end
    parts.append(shape[pos:])
    text = "".join(p + "<" + t + ">" for p, t in zip(parts[:-1], types, strict=True)) + parts[-1]
    return Template(text, tuple(types), tuple(parts)), tuple(spans)


def strip_ansi(line: str) -> str:
    """``line`` without ANSI escape sequences."""
    return ANSI.sub("", line) if "\x1b" in line else line


def template_of(line: str) -> str:
    """Return the grouping key of ``line``: escapes removed, variable fields masked.

    ``template_of("\\x1b[32mstep 12\\x1b[0m loss 0.5321")`` is ``"step <num> loss <num>"``.
    The fields are listed in the module docstring.  Runs in O(len(line)).
    """
    return parse(strip_ansi(line).translate(TO_ZERO))[0].text


def lift(s: Any, pos: int, reps: list[Any], size: int, limit: int) -> tuple[int, int]:
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
Segment = tuple[Shape, int, int, int, int]



class ShapeCache:
    """Shape -> :class:`Shape`, bounded (cleared at ``MAX_SHAPES`` shapes or
    ``MAX_SHAPE_CHARS`` characters); templates interned, so lookups hit by identity."""

    def __init__(self) -> None:
        self.shapes: dict[Any, Shape] = {}  # shape (str or ASCII bytes) -> its meaning
        self.chars = 0
        self.templates: dict[Template, Template] = {}

    def shape(self, key: Any, nl: Any) -> Shape:
        """The meaning of shape ``key`` (str, or ASCII bytes with ``nl == b"\\n"``), cached."""
        info = self.shapes.get(key)
        if info is None:
            if len(self.shapes) >= MAX_SHAPES or self.chars >= MAX_SHAPE_CHARS:
                self.shapes.clear()
                self.templates.clear()
                self.chars = 0
            template, spans = parse(key.decode("ascii") if isinstance(key, bytes) else key)
            template = self.templates.setdefault(template, template)
            info = self.shapes[key] = Shape(template, spans, [key + nl])
            self.chars += len(key)
        return info

    def segments(self, s: Any, m: int, nl: Any) -> list[Segment] | None:
        """Cut ``s`` (the shapes of ``m`` lines, each ending in ``nl``) into segments.

        A segment is a run of equal shapes, or (for output that repeats a block such as
        "50 step lines, then a throughput line") the runs of a repeated two-run block, measured
        with one :func:`_lift`.  ``None`` when ``s`` does not hold exactly ``m`` lines.
        """
        size = len(s)
        shapes = self.shapes
        end = s.find(nl)
        key = s[:end]
        info = shapes.get(key) or self.shape(key, nl)
        block = info.reps[0]
        if size == m * len(block) and s == block * m:
            return [(info, 0, m, 1, 0)]
        segments: list[Segment] = []
        pos = a = 0
        # The last two runs: (shape, position, first line, lines).
        prev: tuple[Shape, int, int, int] | None = None
        prev2: tuple[Shape, int, int, int] | None = None
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
                        copies, pos = lift(s, pos, [s[prev2[1] : pos]], size, size)
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
                info = shapes.get(key) or self.shape(key, nl)
                block = info.reps[0]
                nxt = end + 1
            copies = 0
            if s.startswith(block, nxt):
                guess = info.guess
                if guess is not None and s.startswith(guess, nxt):
                    nxt += len(guess)
                    copies = info.guess_n
                    if s.startswith(block, nxt):
                        more, nxt = lift(s, nxt, info.reps, size, _REP_CHARS)
                        copies += more
                else:
                    copies, nxt = lift(s, nxt, info.reps, size, _REP_CHARS)
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
