"""The frames of a rank's ordered stream, from the host's pipe readers to the view.

Names follow Monarch's ``LogMessage``: :class:`Log` carries lines, :class:`Mark` is the seed's
``Flush{sync_version: v}`` -- the barrier marker behind the data -- and :class:`Exit` ends the
stream with the rank's exit code (or :class:`Lost`, when the driver gave up on the rank's host).  Every frame has its rank's sequence number, so a view that
is replaced, or reconnects over a link, resumes without losing or repeating anything.

In one process these objects go from host to view on a memory channel, never encoded.  Across
processes, :func:`encode_frames` / :func:`decode_frame` put them on a byte stream with the
layout of ``_wire`` (which this module only uses; it is not loaded by children).
"""

from __future__ import annotations

import attrs

from . import _wire as w

STREAM_NAMES = ("stdout", "stderr")


@attrs.frozen
class Log:
    """A chunk of complete lines of one stream, or one partial line (``partial``).

    ``data`` holds the raw bytes, each complete line ending in ``\\n``.  ``dropped`` is how many
    lines of the rank (both streams) the host dropped from the live view before this frame, in
    all (the ``"drop"`` policy): the view reports what it grew by.  ``progress``: the partial line is a
    progress bar's latest state.
    """

    seq: int
    stream: int  # 0 stdout, 1 stderr
    data: bytes
    dropped: int = 0
    partial: bool = False
    progress: bool = False


@attrs.frozen
class Mark:
    """Barrier marker: every byte the rank wrote before barrier ``version`` precedes it."""

    seq: int
    version: int


@attrs.frozen
class Exit:
    """The rank's process ended with ``code`` and its pipes reached EOF; nothing follows.

    ``code`` is negative for a process killed by signal ``-code``.
    """

    seq: int
    code: int


@attrs.frozen
class Lost:
    """The rank's stream ended without its exit: the link to its host was lost.

    Made by the driver (never sent over a link) for every rank of a host it gave up on, behind
    everything that host's link delivered; ``host`` names the host and ``reason`` says what
    happened (``"no word from its agent for 10 s"``).
    """

    seq: int
    host: str
    reason: str


Frame = Log | Mark | Exit | Lost


#: What a frame costs in memory besides its data, as counted against a rank's buffer limit.
FRAME_OVERHEAD = 64


def frame_size(frame: Frame) -> int:
    """What a frame counts for against a rank's buffer limit (its bytes, plus overhead)."""
    return len(frame.data) + FRAME_OVERHEAD if isinstance(frame, Log) else FRAME_OVERHEAD


def encode_frames(rank: int, frames: list[Frame]) -> bytes:
    """The frames of ``rank``, in order, as bytes for a byte stream."""
    out: list[bytes] = []
    for fr in frames:
        if isinstance(fr, Log):
            flags = (w.FLAG_PARTIAL if fr.partial else 0) | (w.FLAG_PROGRESS if fr.progress else 0)
            out.append(w.encode(w.LOG, rank, fr.seq, fr.stream, flags, fr.dropped,
                                tail=fr.data))
        elif isinstance(fr, Mark):
            out.append(w.encode(w.MARK, rank, fr.seq, fr.version))
        elif isinstance(fr, Exit):
            out.append(w.encode(w.EXIT, rank, fr.seq, fr.code))
        else:
            raise ValueError(f"{type(fr).__name__} frames are made by the driver, never sent")
    return b"".join(out)


def decode_frame(kind: int, payload: bytes) -> tuple[int, Frame]:
    """``(rank, frame)`` from one received data-link frame.

    Raises :class:`~trio_logmesh.protocol._wire.FrameError` for anything else or a malformed
    payload.
    """
    if kind == w.LOG:
        rank, seq, stream, flags, dropped, data = w.decode(kind, payload)
        if stream > 1:
            raise w.FrameError(f"bad stream id {stream}")
        return rank, Log(seq, stream, data, dropped, bool(flags & w.FLAG_PARTIAL),
                         bool(flags & w.FLAG_PROGRESS))
    if kind == w.MARK:
        rank, seq, version = w.decode(kind, payload)
        return rank, Mark(seq, version)
    if kind == w.EXIT:
        rank, seq, code = w.decode(kind, payload)
        return rank, Exit(seq, code)
    raise w.FrameError(f"frame type {kind} is not a data frame")
