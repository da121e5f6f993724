"""The byte layout of every logmesh frame, and its one codec (standard library only).

Children load this module by file path (see ``child/``), before and without importing the
``trio_logmesh`` package, so it stays free of third-party imports: a child's start-up time is
a cost we put on the user's job.

A frame is ``<type:u8><length:u32 little-endian><payload>``; the payload of each type is one
fixed ``struct`` layout, followed by free bytes for the types in :data:`TAILED`.  Two channels
use frames:

* **the control channel** (``BOOTSTRAP_LOG_CHANNEL``, host and the agent in a Python child):
  ``HELLO``, ``WELCOME``, ``REJECT``, ``FORCE_SYNC_FLUSH``, ``FLUSHED``, ``SET_LEVEL``;
* **the data link** (a host to a view in another process): ``LOG``, ``MARK``, ``EXIT``, each
  carrying its rank and per-rank sequence number.  When the view and the host share a
  process, these frames travel as objects on a memory channel and are never encoded;
* **the host link** (a host agent to the driver, one TLS connection per host): the data frames
  above with global ranks, and the link's own control frames (``JOIN`` ... ``BYE``), whose
  conversation ``_link`` keeps.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<BI")
HEADER_SIZE = HEADER.size

#: Largest payload a :class:`FrameReader` accepts by default.  A peer announcing more is broken
#: or hostile: the connection is closed instead of allocating the buffer.
MAX_FRAME = 16 * 1024 * 1024

TOKEN_SIZE = 16

# Frame types: the control channel ---------------------------------------------------------
HELLO = 1  # agent -> host: token, rank, pid (first frame on a connection)
REJECT = 2  # host -> agent: bad hello; the connection closes next
FORCE_SYNC_FLUSH = 3  # host -> agent: flush Python and C stdio for barrier `version`
FLUSHED = 4  # agent -> host: buffers flushed for `version`; the host cuts the pipes now
SET_LEVEL = 5  # host -> agent: root Python logging level
WELCOME = 6  # host -> agent: the hello was accepted; the user's code may start

# Frame types: the data link --------------------------------------------------------------
LOG = 10  # rank, seq, stream, flags, lines dropped before it in its stream; then the bytes
MARK = 11  # rank, seq, barrier version: behind every byte the rank wrote before the barrier
EXIT = 12  # rank, seq, exit code: the rank's output ended; nothing follows

# Frame types: the host link (agent <-> driver); see ``_link`` for who sends what ----------
JOIN = 20  # agent: token, node rank, link version; then JSON (host name, pid, address, ...)
ACCEPT = 21  # driver: the join is accepted; then JSON (session, nnodes)
REFUSE = 22  # driver: refused; then the reason (UTF-8); the connection closes next
START = 23  # driver: start the ranks; then JSON (command, environment, options, world)
STARTED = 24  # agent: the ranks run (or could not start); then JSON (run dir, pids, error)
STREAM = 25  # driver: stream from epoch `e` on; then (rank u32, seq u64) pairs already received
EPOCH = 26  # agent, in the data: the frames after this one belong to epoch `e`
CONFIRM = 27  # driver: rank, seq: the view handled the rank's frames up to seq
FLUSH = 28  # driver: rank, version: put Mark(version) behind what the rank wrote
STREAMING = 29  # driver: rank, on: stream the rank's lines, or not
LEVEL = 30  # driver: rank, level: the rank's root Python logging level
CREDIT = 31  # driver: the agent may send this many more bytes of data frames
HEARTBEAT = 32  # either side: still here
SIGNAL = 33  # driver: signal; then the ranks (u32 each), none meaning all
STOP = 34  # driver: signal, grace: stop the ranks (then SIGKILL after grace seconds)
EXITED = 35  # agent: rank, code: the rank's process exited
STATUS = 36  # agent: rank; then the host's account of a barrier that waits (UTF-8)
TAIL = 37  # agent: rank; then the last lines of its stderr file (UTF-8), for a summary
END = 38  # driver: the run is over; stop and leave
BYE = 39  # agent: leaving; then why (UTF-8, empty for a normal end)

FLAG_PARTIAL = 1  # the last line of a LOG payload has no newline yet
FLAG_PROGRESS = 2  # the payload is the latest state of a line redrawn with \r (a progress bar)

LAYOUTS: dict[int, struct.Struct] = {
    HELLO: struct.Struct(f"<{TOKEN_SIZE}sqq"),
    REJECT: struct.Struct("<"),
    FORCE_SYNC_FLUSH: struct.Struct("<q"),
    FLUSHED: struct.Struct("<q"),
    SET_LEVEL: struct.Struct("<i"),
    WELCOME: struct.Struct("<"),
    LOG: struct.Struct("<IQBBQ"),
    MARK: struct.Struct("<IQq"),
    EXIT: struct.Struct("<IQi"),
    JOIN: struct.Struct("<32sII"),
    ACCEPT: struct.Struct("<"),
    REFUSE: struct.Struct("<"),
    START: struct.Struct("<"),
    STARTED: struct.Struct("<"),
    STREAM: struct.Struct("<Q"),
    EPOCH: struct.Struct("<Q"),
    CONFIRM: struct.Struct("<IQ"),
    FLUSH: struct.Struct("<Iq"),
    STREAMING: struct.Struct("<IB"),
    LEVEL: struct.Struct("<Ii"),
    CREDIT: struct.Struct("<Q"),
    HEARTBEAT: struct.Struct("<"),
    SIGNAL: struct.Struct("<i"),
    STOP: struct.Struct("<id"),
    EXITED: struct.Struct("<Ii"),
    STATUS: struct.Struct("<I"),
    TAIL: struct.Struct("<I"),
    END: struct.Struct("<"),
    BYE: struct.Struct("<"),
}
#: Types whose payload continues with free bytes after the fixed layout.
TAILED = frozenset({LOG, JOIN, ACCEPT, REFUSE, START, STARTED, STREAM, SIGNAL, STATUS, TAIL,
                    BYE})


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame stream."""


def encode(kind: int, *fields: object, tail: bytes = b"") -> bytes:
    """One frame of type ``kind`` with ``fields`` in its layout (and ``tail`` for LOG)."""
    head = LAYOUTS[kind].pack(*fields)
    return b"".join((HEADER.pack(kind, len(head) + len(tail)), head, tail))


def decode(kind: int, payload: bytes) -> tuple:
    """The fields of one frame's payload (plus the tail bytes last, for :data:`TAILED` types).

    Raises :class:`FrameError` for an unknown type or a payload that does not fit its layout.
    """
    layout = LAYOUTS.get(kind)
    if layout is None:
        raise FrameError(f"unknown frame type {kind}")
    if kind in TAILED:
        if len(payload) < layout.size:
            raise FrameError(f"frame of type {kind} too short ({len(payload)} bytes)")
        return (*layout.unpack_from(payload), payload[layout.size :])
    if len(payload) != layout.size:
        raise FrameError(f"frame of type {kind} has {len(payload)} bytes, not {layout.size}")
    return layout.unpack(payload)


class FrameReader:
    """Incremental decoder: feed it received chunks, get whole ``(type, payload)`` frames back.

    Works per chunk: all complete frames in the buffer are sliced out in one pass.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Add received bytes; return the complete frames, in order.

        Raises :class:`FrameError` when a header announces a payload over ``max_frame``.
        """
        buf = self._buf
        staged = bool(buf)
        if staged:
            buf += data
        # The common case parses straight from what was received: no staging copy.
        src = memoryview(buf if staged else data)
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(src)
        try:
            while n - pos >= HEADER_SIZE:
                kind, length = HEADER.unpack_from(src, pos)
                if length > self.max_frame:
                    raise FrameError(
                        f"frame of {length} bytes exceeds the {self.max_frame} limit"
                    )
                end = pos + HEADER_SIZE + length
                if end > n:
                    break
                out.append((kind, bytes(src[pos + HEADER_SIZE : end])))
                pos = end
            if not staged and pos < n:
                buf += src[pos:]
        finally:
            src.release()  # a bytearray cannot be resized while a view of it exists
        if staged and pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
