"""What the driver's sinks receive: chunks of lines from one rank, group summaries, notices.

The view turns each ``Log`` frame into one :class:`LogLines` (many lines, one rank, one
stream) holding the chunk's bytes, so the hot path does work per chunk, never per line:
rendering a chunk for the terminal is one ``bytes.replace``, with no decoding at all.
``LogLines.text`` and ``LogLines.lines`` decode and split on first use.  The aggregator turns repeated kinds of lines into :class:`GroupLine` summaries;
:class:`Notice` carries the pipeline's own messages (dropped-line counts, exit codes).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

import attrs

Stream = Literal["stdout", "stderr"]
STREAMS: tuple[Stream, Stream] = ("stdout", "stderr")


@attrs.frozen
class LogLines:
    """Consecutive lines one rank wrote to one stream, in order.

    ``data`` holds the lines' bytes as the rank wrote them, joined by ``\\n``, without the last
    line's terminator (so it always holds at least one line, maybe empty); ``text`` is them
    decoded (invalid UTF-8 as U+FFFD), ``lines`` split.  ``partial`` is true when the last line
    had no ``\\n`` yet (delivered after an idle time or at a flush barrier); the rest of that
    line, if it ever comes, arrives as the first line of a later chunk.
    """

    rank: int
    stream: Stream
    data: bytes
    hostname: str = ""
    pid: int = 0
    time: float = 0.0  # wall-clock time (time.time()) the view received the chunk
    partial: bool = False
    #: One line: the latest state of a line redrawn with ``\r`` (a progress bar), shown at a
    #: throttled rate; its final state comes later as a complete line.
    progress: bool = False
    #: The host shown in the tag when the run spans more than one host ("" otherwise).
    host: str = ""

    @classmethod
    def of(
        cls,
        rank: int,
        stream: Stream,
        lines: Iterable[str],
        hostname: str = "",
        pid: int = 0,
        time: float = 0.0,
        partial: bool = False,
        progress: bool = False,
    ) -> LogLines:
        """Build one from lines of text (``lines`` must not be empty)."""
        lines = tuple(lines)
        if not lines:
            raise ValueError("LogLines needs at least one line")
        return cls(rank, stream, "\n".join(lines).encode("utf-8", "surrogateescape"), hostname,
                   pid, time, partial, progress)

    @functools.cached_property
    def text(self) -> str:
        """The lines decoded and joined by ``\\n`` (decoded on first use)."""
        return self.data.decode("utf-8", "replace")

    @functools.cached_property
    def lines(self) -> tuple[str, ...]:
        """The lines, without terminators (split on first use)."""
        return tuple(self.text.split("\n"))

    @functools.cached_property
    def line_count(self) -> int:
        """How many lines (the last one maybe partial), counted on first use."""
        return self.data.count(b"\n") + 1

    def prefix(self) -> str:
        """The short tag printed in front of each line: ``[3]``, or ``[node-b:3]`` in a run
        over many hosts."""
        return f"[{self.host}:{self.rank}]" if self.host else f"[{self.rank}]"


@attrs.frozen
class GroupLine:
    """One line (or one block of lines) that stands for ``count`` lines from ``ranks``.

    ``text`` is the line with each variable field shown over the lines it stands for
    (``loss=0.41..0.43``, see ``_spread``), or the block's exact text (several lines);
    ``ranks_text`` is the ranks folded as ranges (``0-6,9``).
    ``first_time``/``last_time`` are the wall-clock span the group really covers.
    """

    stream: Stream
    text: str
    count: int
    ranks: tuple[int, ...]
    ranks_text: str
    first_time: float
    last_time: float
    #: The hosts of ``ranks`` when the run spans more than one host (else empty).
    hosts: tuple[str, ...] = ()

    def prefix(self) -> str:
        """The tag printed in front of the group's lines: ``[ranks 0-63]`` for one line (or
        block) of each rank, ``[120x ranks 0-3]`` when it stands for more lines than ranks;
        in a run over many hosts, with them: ``[ranks 0-3 on node-a,node-b]`` (past three,
        ``on 8 hosts``)."""
        where = ""
        if self.hosts:
            named = ",".join(self.hosts) if len(self.hosts) <= 3 else f"{len(self.hosts)} hosts"
            where = f" on {named}"
        if self.count == len(self.ranks):
            return f"[ranks {self.ranks_text}{where}]"
        return f"[{self.count}x ranks {self.ranks_text}{where}]"


@attrs.frozen
class Notice:
    """A message of the pipeline itself (dropped lines, a rank's exit), tagged by rank."""

    stream: Stream
    text: str
    rank: int | None = None
    time: float = 0.0  # wall-clock time (time.time())

    def prefix(self) -> str:
        """The tag printed in front of the notice: ``[logmesh]``, never a rank's tag, so it
        cannot be taken for something the rank printed (``rank`` says which rank it is about)."""
        return "[logmesh]"


Output = LogLines | GroupLine | Notice
"""Everything a sink can receive."""


def format_output(item: Output) -> str:
    """Render one output item as plain text (one or more lines, no trailing newline)."""
    p = item.prefix() + " "
    return p + item.text.replace("\n", "\n" + p)
