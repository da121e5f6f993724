"""RankState: the view's account of one rank, and its ``Log`` frames turned into output.

Per chunk, never per line: the bytes are decoded once, and lines the host dropped from the
live view under the ``"drop"`` policy (each frame says how many in all) become one notice on
the stream of the frame that tells: ``[logmesh] 1,234 lines dropped for rank 3``.  A partial line
shown earlier is not shown again when its newline arrives, and a line holding ``\\r`` shows
what a terminal would: its last state.
"""

from __future__ import annotations

import time

import attrs

from ..protocol._frames import Log
from ._records import STREAMS, LogLines, Notice, Output


def clean_line(line: str) -> str:
    """The text a terminal would show for a line with ``\\r`` in it: its last state.

    A ``\\r`` right before the newline (``\\r\\n`` endings) is just removed.
    """
    if line.endswith("\r"):
        line = line[:-1]
    return line.rpartition("\r")[2]


@attrs.define(eq=False)
class RankState:
    """What the view knows of one rank."""

    rank: int
    hostname: str = ""
    pid: int = 0
    #: The host named in the rank's tag: its host name when the run spans several hosts.
    host: str = ""
    #: Why the rank's stream ended without its exit (its host was lost), or None.
    lost: str | None = None
    #: Sequence number of the last frame handled.
    last_seq: int = 0
    #: Lines the host reported dropped so far.
    dropped: int = 0
    #: Per stream: the last chunk ended with a partial line.
    partial_open: list[bool] = attrs.field(factory=lambda: [False, False])
    #: Streaming was off: what the next frame says was dropped is not news for the view.
    resync: bool = False
    #: The rank's ``Exit`` frame was handled by the view task.
    finished: bool = False
    #: ... and everything up to it was emitted by the sink.
    ended: bool = False
    exit_code: int | None = None

    def decode(self, msg: Log, out: list[Output]) -> LogLines | None:
        """Turn one ``Log`` frame into output: a drop notice goes to ``out``; the lines are
        returned (``None`` when the chunk only ended a line shown before)."""
        sid = msg.stream
        stream = STREAMS[sid]
        if self.resync:
            self.resync = False
        elif msg.dropped > self.dropped:
            dropped = msg.dropped - self.dropped
            out.append(Notice(stream, f"{dropped:,} lines dropped for rank {self.rank}",
                              self.rank, time.time()))
        self.dropped = max(self.dropped, msg.dropped)
        data = msg.data if msg.partial else msg.data[:-1]
        if b"\r" in data:  # one check per chunk; per-line work only for the rare \r lines
            text = data.decode("utf-8", "replace")
            data = "\n".join(clean_line(ln) if "\r" in ln else ln
                             for ln in text.split("\n")).encode()
        if self.partial_open[sid]:
            # The rest of a partial line shown earlier: its newline is not a line of its own.
            if not data:
                self.partial_open[sid] = msg.partial and not msg.progress
                return None
            if data[:1] == b"\n":
                data = data[1:]
        # A progress state is a whole line for the view: nothing continues it.
        partial = msg.partial and not msg.progress
        self.partial_open[sid] = partial
        return LogLines(self.rank, stream, data, self.hostname, self.pid, time.time(), partial,
                        msg.progress, self.host)
