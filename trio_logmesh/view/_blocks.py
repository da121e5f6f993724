"""Multi-line blocks: a traceback, a warning with its source line, a log record with its
continuation lines -- kept whole, so folding never merges two ranks' blocks frame by frame.

One :class:`BlockAssembler` per rank and stream turns that stream's lines, in order, into
*units*: a single line, or a block of lines.  Blocks:

* a Python traceback: ``Traceback (most recent call last):``, its indented frame lines, the
  exception line, indented lines after it (notes), and chained tracebacks (a blank line,
  ``During handling of the above exception, ...`` or ``The above exception was the direct
  cause ...``, a blank line, the next traceback); an exception group's traceback
  (``  + Exception Group Traceback ...`` and the indented lines after it);
* a warning (``path:line: SomeWarning: message``) with the indented source line after it;
* a log record (a line naming a level: ``INFO``, ``WARNING``, ..., or glog's ``I1123 ...``)
  followed by indented continuation lines or a traceback (``logger.exception``).

A block ends at the first line that does not continue it, or when :meth:`close` is called:
after ``BLOCK_IDLE`` seconds without a line, at a flush, at the rank's exit, or before a
line of the rank's other stream (so a rank's units keep the order it wrote them in).  A
warning or log line that nothing continued is a single line again.
"""

from __future__ import annotations

import re
from typing import Final

BLOCK_IDLE: Final = 0.5
"""Seconds an open block waits for its next line before it is complete."""

TRACEBACK: Final = "Traceback (most recent call last):"
_GROUP_TRACEBACK: Final = re.compile(r"\s*\+ Exception Group Traceback \(most recent call last\):$")
_CHAINED: Final = frozenset({
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
})
_WARNING: Final = re.compile(r"\S.*:\d+: \w*Warning: ")
_GLOG: Final = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")
_LEVEL: Final = re.compile(r"\b(?:CRITICAL|FATAL|ERROR|WARNING|WARN|INFO|DEBUG)\b")
_LEVEL_WITHIN: Final = 60  # a level named this far into the line makes it a log record

Unit = tuple[list[str], list[str], bool]
"""A unit: its lines as written, the same lines without escapes, and whether it is a block."""


def _indented(line: str) -> bool:
    return line[:1] in (" ", "\t")


class BlockAssembler:
    """Cuts one rank's stream into units; see the module docstring."""

    __slots__ = ("lines", "clean", "kind", "state", "last")

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.clean: list[str] = []
        self.kind = ""  # "", "tb", "warn" or "log"
        self.state = ""  # for tracebacks: "frames", "exc", "gap", "chain"
        self.last = 0.0  # time of the last line

    @property
    def open(self) -> bool:
        """Whether a block is being assembled (its lines are not out yet)."""
        return bool(self.lines)

    def feed(self, line: str, clean: str, now: float, out: list[Unit]) -> None:
        """One line (as written, and without escapes): append the units it completes."""
        self.last = now
        if self.lines and self._continues(line, clean):
            return
        if self.lines:
            self.close(out)
        self._start(line, clean, out)

    def close(self, out: list[Unit]) -> None:
        """End the open block (if any) and append it as a unit."""
        if not self.lines:
            return
        lines, clean = self.lines, self.clean
        gap = self.state == "gap"
        if gap:  # a blank line after the exception, with no chained traceback after it
            lines, clean = lines[:-1], clean[:-1]
        out.append((lines, clean, len(lines) > 1))
        if gap:
            out.append((self.lines[-1:], self.clean[-1:], False))
        self.lines, self.clean, self.kind, self.state = [], [], "", ""

    def _start(self, line: str, clean: str, out: list[Unit]) -> None:
        if clean == TRACEBACK:
            self.kind, self.state = "tb", "frames"
        elif clean[:1] == " " and _GROUP_TRACEBACK.match(clean):
            self.kind = "group"  # an exception group's traceback: all of it is indented
        elif "Warning: " in clean and _WARNING.match(clean):
            self.kind = "warn"
        elif _LEVEL.search(clean, 0, _LEVEL_WITHIN) or (clean[:1] in "IWEF" and _GLOG.match(clean)):
            self.kind = "log"
        else:
            out.append(([line], [clean], False))
            return
        self.lines, self.clean = [line], [clean]

    def _continues(self, line: str, clean: str) -> bool:
        kind = self.kind
        ok = False
        if kind == "tb":
            state = self.state
            if state == "frames":
                ok = True
                if not _indented(clean):
                    self.state = "exc"  # the exception line
            elif state == "exc":
                if _indented(clean):
                    ok = True
                elif not clean:
                    ok, self.state = True, "gap"
            elif state == "gap":
                ok = clean in _CHAINED
                if ok:
                    self.state = "chain"
            elif state == "chain":
                if not clean:
                    ok = True
                elif clean == TRACEBACK:
                    ok, self.state = True, "frames"
        elif _indented(clean):
            ok = True
        elif kind == "log" and clean == TRACEBACK:
            ok = True
            self.kind, self.state = "tb", "frames"
        if ok:
            self.lines.append(line)
            self.clean.append(clean)
        return ok
