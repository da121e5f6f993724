"""The byte layout of frames on a logmesh channel (standard library only).

This module is loaded by file path inside every Python child (see ``_boot``), before and
without importing the ``trio_logmesh`` package, so it must stay free of third-party imports:
the child's start-up time is a cost we put on the user's job.

A frame is ``<type:u8><length:u32 little-endian><payload>``.  Data frames that travel from the
host to the client (``LOG``, ``MARK``, ``EXIT``) carry a per-rank sequence number so a client
that reconnects (its forwarder died with the child) can resume without losing or repeating
anything; ``LOG`` frames also carry the index of their first line in their stream, so any gap
(dropped lines) is visible to the receiver as a count.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<BI")
HEADER_SIZE = HEADER.size

#: Largest payload accepted.  A peer announcing more is broken or hostile: the connection is
#: closed instead of allocating the buffer.
MAX_FRAME = 16 * 1024 * 1024

# Frame types -------------------------------------------------------------------------
HELLO = 1  # anyone -> forwarder: role, token, rank, resume-after seq
WELCOME = 2  # forwarder -> client: rank, pid, hostname, kind
LOG = 3  # host -> forwarder -> client: seq, stream, flags, first line index, bytes
MARK = 4  # host -> forwarder -> client: seq, barrier version (in-band, behind the data)
HEARTBEAT = 5  # forwarder -> client: liveness
EXIT = 6  # host -> forwarder -> client: seq, exit code (after the rank's last byte)
REPLAY = 7  # host -> forwarder: the frames that follow restart at this seq
SET_MODE = 8  # client -> forwarder: stream_to_client
FORCE_SYNC_FLUSH = 9  # client -> forwarder: barrier version
SET_LEVEL = 10  # client -> forwarder: Python logging level
FLUSH_PIPES = 11  # forwarder -> host: user-space buffers are flushed; cut the pipes here
RESUME = 12  # forwarder -> host: replay data frames after this seq
REJECT = 13  # forwarder -> anyone: bad hello (wrong token/role); the connection closes next
ACK = 14  # client -> forwarder -> host: every data frame up to this seq was delivered

ROLE_HOST = 1
ROLE_CLIENT = 2

KIND_AGENT = 1  # forwarder inside the Python child
KIND_HOST = 2  # forwarder on the host side (non-Python child, or the child has exited)

STREAM_IDS = {"stdout": 0, "stderr": 1}
STREAM_NAMES = ("stdout", "stderr")

FLAG_PARTIAL = 1  # the last line of the LOG payload has no newline yet
FLAG_PROGRESS = 2  # the payload is the latest state of a line redrawn with \r (a progress bar)

TOKEN_SIZE = 16

HELLO_S = struct.Struct("<B16sqQ")  # role, token, rank, resume_after
WELCOME_S = struct.Struct("<qqB")  # rank, pid, kind (+ hostname as the rest)
LOG_S = struct.Struct("<QBBQ")  # seq, stream, flags, first line index (+ data as the rest)
MARK_S = struct.Struct("<Qq")  # seq, version
EXIT_S = struct.Struct("<Qi")  # seq, exit code
U64 = struct.Struct("<Q")
I64 = struct.Struct("<q")
I32 = struct.Struct("<i")
U8 = struct.Struct("<B")


class FrameError(Exception):
    """The peer sent bytes that are not a valid frame stream."""


def frame(kind: int, payload: bytes = b"") -> bytes:
    """Encode one frame."""
    return HEADER.pack(kind, len(payload)) + payload


def seq_of(kind: int, payload: bytes) -> int:
    """The sequence number of a host data frame (``LOG``, ``MARK``, ``EXIT``)."""
    return U64.unpack_from(payload)[0]


class FrameReader:
    """Incremental decoder: feed it received chunks, get whole frames back.

    Works per chunk: all complete frames in the buffer are sliced out in one pass.
    """

    __slots__ = ("_buf", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes | bytearray) -> list[tuple[int, bytes]]:
        """Add received bytes; return the complete ``(type, payload)`` frames, in order.

        Raises :class:`FrameError` when a header announces a payload over ``max_frame``.
        """
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = memoryview(buf)
        else:  # the common case: parse straight from what was received, no staging copy
            src = memoryview(data)
        out: list[tuple[int, bytes]] = []
        pos = 0
        n = len(src)
        while n - pos >= HEADER_SIZE:
            kind, length = HEADER.unpack_from(src, pos)
            if length > self.max_frame:
                raise FrameError(f"frame of {length} bytes exceeds the {self.max_frame} limit")
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            out.append((kind, bytes(src[pos + HEADER_SIZE : end])))
            pos = end
        if buf:
            src.release()  # type: ignore[union-attr]
            if pos:
                del buf[:pos]
        elif pos < n:
            buf += src[pos:]
        return out

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
