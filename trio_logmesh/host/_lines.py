"""LineSplitter: turns a pipe's chunks into runs of complete lines, per chunk, with limits.

Pure and clock-free (the caller passes ``now``), so it is tested with any bytes and any
chunking.  What it guarantees:

* Complete lines come out as one ``bytes`` run per chunk (many lines, each ending in
  ``\\n``), never one object per line.
* A partial line is held until its newline, or until the caller asks for it (idle time,
  barrier, EOF): then it comes out marked partial and the rest of the line, if any, starts
  the next run.
* **Progress bars.** While the held partial line contains ``\\r`` (tqdm, pip, custom bars
  redraw in place), only its latest state is kept: the text after the last ``\\r``.  That state
  comes out at most once per ``progress_interval`` seconds, and once more after an idle
  time if it was not out yet -- never twice.
* **Huge lines.** A line longer than ``max_line`` comes out cut: its first ``max_line`` bytes
  and ``" … [truncated 63.9 MiB]"``.  Once ``max_line`` bytes of a line were read without a
  newline, the rest is counted and discarded until the newline, so memory stays at
  ``max_line`` whatever the line's length; a long line that arrives whole within one read is
  cut the same way (:func:`cut_long_lines`).  (The per-process files keep every byte.)
"""

from __future__ import annotations

import attrs

#: The second item of a run: a complete run, a partial line, or a progress bar's state.
COMPLETE, PARTIAL, PROGRESS = 0, 1, 2

#: Lines longer than this (bytes) are cut in the live view.
MAX_LINE = 64 * 1024
PROGRESS_INTERVAL = 0.25


def human_size(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def truncation_marker(dropped: int) -> bytes:
    """The visible marker appended to a cut line."""
    return f" … [truncated {human_size(dropped)}]".encode()


def cut_long_lines(run: bytes, max_line: int) -> bytes:
    """``run`` (complete lines, ending in ``\\n``) with every line longer than ``max_line``
    cut to ``max_line`` bytes and the truncation marker.

    A handful of ``find`` calls per chunk, not work per line: a line longer than ``max_line``
    holds a whole aligned block of ``(max_line + 1) // 2`` bytes without a newline, so only
    such blocks are looked at closely.
    """
    block = (max_line + 1) // 2
    pieces: list[bytes] = []
    done = 0  # run[:done] is settled
    pos = 0
    n = len(run)
    while pos + block <= n:
        if run.find(b"\n", pos, pos + block) >= 0:
            pos += block
            continue
        start = run.rfind(b"\n", 0, pos) + 1
        end = run.find(b"\n", pos + block)  # the run ends in a newline: always found
        if end - start > max_line:
            pieces.append(run[done : start + max_line])
            pieces.append(truncation_marker(end - start - max_line))
            done = end
        pos = end + 1
    if not pieces:
        return run
    pieces.append(run[done:])
    return b"".join(pieces)


@attrs.define
class LineSplitter:
    """See the module docstring.  ``feed``/``take_partial`` return ``(data, kind)`` runs, kind
    being ``COMPLETE`` (0), ``PARTIAL`` (1) or ``PROGRESS`` (2)."""

    max_line: int = MAX_LINE
    progress_interval: float = PROGRESS_INTERVAL
    _pending: bytes = b""
    _dropped: int = 0  # bytes of the current line discarded past max_line
    _next_progress: float = float("-inf")
    _shown: bool = False  # the held line is a bar whose latest state was handed on already

    @property
    def pending(self) -> bool:
        """Whether a partial line is held that was not handed on yet."""
        return (bool(self._pending) and not self._shown) or self._dropped > 0

    @property
    def holds_plain_partial(self) -> bool:
        """Whether a partial line is held that is not a progress bar's state (no ``\\r``)."""
        return bool(self._pending) and b"\r" not in self._pending

    def feed(self, chunk: bytes, now: float) -> list[tuple[bytes, int]]:
        """Split a chunk; return the runs to hand on, in order."""
        out: list[tuple[bytes, int]] = []
        if self._dropped:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._dropped += len(chunk)
                return out
            self._dropped += nl
            out.append((self._cut_line() + b"\n", COMPLETE))
            chunk = chunk[nl + 1 :]
        cut = chunk.rfind(b"\n") + 1
        if cut:
            # One copy at most: the held partial line and the chunk up to its last newline.
            pending = self._pending
            if pending:
                run = b"".join((pending, memoryview(chunk)[:cut]))
            else:
                run = chunk if cut == len(chunk) else chunk[:cut]
            if len(run) > self.max_line:
                run = cut_long_lines(run, self.max_line)
            out.append((run, COMPLETE))
            rest = chunk[cut:]
        else:
            rest = self._pending + chunk if self._pending else chunk
        self._pending = rest
        self._shown = False
        if rest:
            if b"\r" in rest:
                self._progress(now, out)
            if len(self._pending) > self.max_line:
                self._dropped = len(self._pending) - self.max_line
                self._pending = self._pending[: self.max_line]
        return out

    def _cut_line(self) -> bytes:
        line = self._pending + truncation_marker(self._dropped)
        self._pending = b""
        self._dropped = 0
        return line

    def _progress(self, now: float, out: list[tuple[bytes, int]]) -> None:
        # Keep only the latest state of a line redrawn with \r: "\r" + that state (so a
        # later newline still ends the line in its final state).  A trailing \r may be the
        # first half of a \r\n, so it belongs to the state before it.
        p = self._pending
        body = p[:-1] if p.endswith(b"\r") else p
        last = body.rfind(b"\r")
        if last < 0:
            return
        self._pending = p[last:]
        state = body[last + 1 :]
        if state and now >= self._next_progress:
            self._next_progress = now + self.progress_interval
            self._shown = True
            out.append((state, PROGRESS))

    def take_partial(self) -> list[tuple[bytes, int]]:
        """Hand on the held partial line now (idle time, barrier or EOF)."""
        if self._dropped:
            # The rest of this over-long line, if it comes, is counted again from zero.
            return [(self._cut_line(), PARTIAL)]
        pending = self._pending
        if b"\r" in pending:
            # A bar: its latest state (the text after the last \r, a trailing \r -- maybe
            # half of a \r\n -- belonging to the state before it), once.  The line stays
            # held, so its newline, when it comes, ends it in its final state.
            if self._shown:
                return []
            body = pending[:-1] if pending.endswith(b"\r") else pending
            last = body.rfind(b"\r")
            state = body[last + 1 :]
            if last >= 0:
                self._pending = pending[last:]
            self._shown = True
            return [(state, PROGRESS)] if state else []
        self._pending = b""
        return [(pending, PARTIAL)] if pending else []
