"""StreamFwder: reads one child pipe on the host, per chunk, and feeds the file and the outbox.

For every chunk read: the raw bytes go to the FileAppender (and the host's own stdout/stderr
when mirroring is on), the complete lines go to the rank's outbox as one ``Log`` frame (the
LineSplitter in ``_lines`` cuts them, handles ``\r`` progress bars and over-long lines).
The file never waits on the live view: only the ``"block"`` policy, by choice, holds reading.  A
trailing partial line is held until its newline arrives, until ``partial_idle`` seconds pass
without more bytes, until a barrier needs it, or until EOF -- whichever comes first.

The pipe barrier (``cut``): when asked, the forwarder notes how many bytes the pipe holds right
now (``FIONREAD``) and reports the cut as reached once it has read past them.  Together with the
in-child flush that precedes it, that is every byte the child wrote before the barrier.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import termios
from collections.abc import Callable
from typing import BinaryIO

import attrs
import trio

from ._lines import COMPLETE, PROGRESS, LineSplitter
from ._outbox import RankOutbox

_log = logging.getLogger("trio_logmesh")

READ_SIZE = 256 * 1024
#: After a read that found the pipe less than half full, wait this long before the next one,
#: so that a busy child's output is handled in bigger chunks, at the price of at most this
#: much latency.  A read that found it fuller is followed at once: a fast child is never held
#: back by the pause.
COALESCE_SEC = 0.002
#: The pipe size asked for: room for what a busy child writes during a pause.  (128 KiB and
#: 1 MiB measured the same, host and children, over 16 alternating trials of each.)
PIPE_SIZE = 1024 * 1024
#: Output of one stream held behind the other stream's partial line, at most (bytes).
PARK_BYTES = 1024 * 1024
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)

_INT = struct.Struct("i")


def pipe_pending(fd: int) -> int:
    """Bytes waiting in a pipe (``FIONREAD``); 0 if the pipe is gone."""
    try:
        buf = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return _INT.unpack(buf)[0]


@attrs.define
class FileAppender:
    """Appends one stream's raw bytes to its per-process file, exactly as the child wrote them.

    A write that fails (a full disk, a quota, an I/O error) ends the file there: the error
    and how many bytes the file holds are kept (``error``, ``written``) and reported once as a
    warning on the ``trio_logmesh`` logger; the rank and the live view go on.
    """

    path: str
    written: int = 0
    error: OSError | None = None
    _fd: int = -1

    def __attrs_post_init__(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def write(self, data: bytes) -> None:
        """Append ``data``.  A local file append of one chunk does not block the loop for long;
        a thread hop per chunk would cost more than it saves."""
        if self.error is not None:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                self.written += n
                view = view[n:]
        except OSError as exc:
            self.error = exc
            _log.warning("cannot write %s: %s; the file stops at %s bytes, the rank and the "
                         "live view go on", self.path, exc.strerror or exc, f"{self.written:,}")

    def close(self) -> OSError | None:
        """Close the file (idempotent).  Returns the error closing reported, if any (a full
        or failing disk can report a lost write only now), rather than raising it: the
        caller decides how loudly to report it."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError as exc:
                if self.error is None:
                    self.error = exc
                return exc
        return None


class ReadBuffer:
    """The buffer the StreamFwders of one mesh read into, shared: a chunk is copied out before
    the reader next awaits anything.  (``os.read`` of a large size allocates a fresh buffer of
    that size every time; on Linux that costs more than the copy.)"""

    def __init__(self, size: int = READ_SIZE) -> None:
        self.buf = bytearray(size)
        self.view = memoryview(self.buf)


@attrs.define(eq=False)
class StreamFwder:
    """Forwards one pipe of one child; see the module docstring."""

    stream_id: int
    fd: int  # the pipe's read end, non-blocking, owned by the rank's process
    outbox: RankOutbox
    appender: FileAppender | None = None
    mirror: BinaryIO | None = None
    partial_idle: float = 0.2
    offset: int = 0  # bytes read so far
    eof: bool = False
    splitter: LineSplitter = attrs.field(factory=LineSplitter)
    read_buffer: ReadBuffer = attrs.field(factory=ReadBuffer)
    #: The rank's other stream: a partial line it holds is older than what this one reads.
    sibling: StreamFwder | None = None
    _parked: list[tuple[bytes, int]] = attrs.field(factory=list)
    _parked_bytes: int = 0
    _cuts: list[tuple[int, Callable[[], None]]] = attrs.field(factory=list)
    _busy: int = READ_SIZE  # a read at least this big means the pipe was filling up

    def __attrs_post_init__(self) -> None:
        try:  # Linux: room for what arrives during a pause, so the child does not block
            fcntl.fcntl(self.fd, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
        try:
            self._busy = min(READ_SIZE, fcntl.fcntl(self.fd, _F_GETPIPE_SZ)) // 2
        except OSError:
            self._busy = 32 * 1024

    # -- output --------------------------------------------------------------------------
    # Order across the rank's two streams: while the other stream holds a partial line (a
    # prompt waiting for its newline), this stream's output waits behind it ("parked") until
    # that line is resolved -- its newline came, it was handed on idle, at a barrier or at
    # EOF -- so the prompt comes before the traceback that followed it, and no line is split
    # in two for it.  A park holds at most PARK_BYTES: past that, the partial line goes out.
    def _emit(self, data: bytes, kind: int, force: bool = False) -> None:
        sibling = self.sibling
        behind = (sibling is not None and not sibling.eof
                  and sibling.splitter.holds_plain_partial)
        if not force and (self._parked or behind):
            self._parked.append((data, kind))
            self._parked_bytes += len(data)
            if self._parked_bytes > PARK_BYTES and sibling is not None:
                sibling._emit_pending()  # its partial line, then what waited behind it
            return
        if self._parked:
            if behind:
                sibling._emit_pending()  # type: ignore[union-attr]  # releases ours after it
            if self._parked:
                self._flush_parked()
        self._append(data, kind)
        if sibling is not None and sibling._parked and not self.splitter.holds_plain_partial:
            sibling._flush_parked()

    def _append(self, data: bytes, kind: int) -> None:
        self.outbox.append_log(self.stream_id, data, kind != COMPLETE, kind == PROGRESS)

    def _flush_parked(self) -> None:
        parked, self._parked, self._parked_bytes = self._parked, [], 0
        for data, kind in parked:
            self._append(data, kind)

    def _emit_pending(self) -> None:
        """Hand on the held partial line now (idle, barrier, EOF), and what waits behind it.
        Output of ours that waits behind the other stream's partial line lets that go first."""
        for data, kind in self.splitter.take_partial():
            self._emit(data, kind, force=True)
        sibling = self.sibling
        if self._parked:
            if sibling is not None and sibling.splitter.holds_plain_partial:
                sibling._emit_pending()
            if self._parked:
                self._flush_parked()
        if sibling is not None and sibling._parked and not self.splitter.holds_plain_partial:
            sibling._flush_parked()

    def _check_cuts(self) -> None:
        if not self._cuts:
            return
        reached = [c for c in self._cuts if self.eof or self.offset >= c[0]]
        if reached:
            self._emit_pending()
            self._cuts = [c for c in self._cuts if c not in reached]
            for _target, done in reached:
                done()

    # -- control -------------------------------------------------------------------------
    def cut(self, done: Callable[[], None]) -> None:
        """Call ``done()`` once every byte now in the pipe was read and handed on (partial line
        included).  Calls it at once when the pipe holds nothing unread or is at EOF."""
        self._cuts.append((self.offset + (0 if self.eof else pipe_pending(self.fd)), done))
        self._check_cuts()

    def _consume(self, chunk: bytes) -> None:
        """One chunk read from the pipe: to the file (and the mirror), its lines to the outbox."""
        self.offset += len(chunk)
        if self.appender is not None:
            self.appender.write(chunk)
        if self.mirror is not None:
            self.mirror.write(chunk)
            self.mirror.flush()
        for data, kind in self.splitter.feed(chunk, trio.current_time()):
            self._emit(data, kind)

    def take_waiting(self) -> None:
        """Read and hand on, now, whatever waits in the pipe (nothing if it is empty)."""
        if self.eof or not pipe_pending(self.fd):
            return
        rb = self.read_buffer
        try:
            n = os.readv(self.fd, [rb.buf])
        except BlockingIOError:
            return
        if n:
            self._consume(bytes(rb.view[:n]))
            self._check_cuts()

    def salvage(self) -> None:
        """Read, without waiting, whatever the pipe still holds (its reader task is gone: the
        rank is ending) and hand it all on, partial line included.  Bounded: a descendant
        that still writes is not followed for long."""
        rb = self.read_buffer
        budget = 4 * PIPE_SIZE
        while budget > 0:
            try:
                n = os.readv(self.fd, [rb.buf])
            except (BlockingIOError, OSError):
                break
            if not n:
                break
            budget -= n
            self._consume(bytes(rb.view[:n]))
        self.eof = True
        self._emit_pending()
        self._check_cuts()

    # -- the task ------------------------------------------------------------------------
    async def _read(self) -> bytes:
        """The next chunk of the pipe (``b""`` at EOF).  Not a checkpoint when data is waiting:
        the loop in :meth:`run` yields after every chunk."""
        rb = self.read_buffer
        while True:
            try:
                n = os.readv(self.fd, [rb.buf])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            return bytes(rb.view[:n])

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read the pipe until EOF.  Cancelling it stops reading; held bytes are handed on."""
        task_status.started()
        try:
            while True:
                await self.outbox.wait_room()
                chunk: bytes | None = None
                if self.splitter.pending:
                    with trio.move_on_after(self.partial_idle):
                        chunk = await self._read()
                    if chunk is None:  # idle: deliver the partial line
                        self._emit_pending()
                        continue
                else:
                    chunk = await self._read()
                if not chunk:
                    break
                sibling = self.sibling
                if sibling is None or sibling.eof:
                    self._consume(chunk)
                elif self.stream_id == 0:
                    # Output on both pipes at once has no knowable order: stdout's goes first
                    # (a prompt or a progress line usually precedes the error on stderr).
                    self._consume(chunk)
                    sibling.take_waiting()
                else:
                    sibling.take_waiting()
                    self._consume(chunk)
                self._check_cuts()
                if len(chunk) < self._busy and not self._cuts:
                    await trio.sleep(COALESCE_SEC)
                else:
                    await trio.lowlevel.checkpoint()
        finally:
            self.eof = True
            self._emit_pending()
            self._check_cuts()
