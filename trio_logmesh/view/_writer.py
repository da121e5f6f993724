"""TextOutput: one text destination written without ever blocking the trio loop.

A terminal paused with Ctrl-S, or a pipe nobody reads, blocks a plain ``write`` for as long
as it likes.  So, by what the destination is:

* **a pipe or a terminal**: written through a private non-blocking descriptor, opened anew on
  the same pipe or terminal (``/proc/self/fd/N``) for each write and closed after it, and
  ``trio.lowlevel.wait_writable`` when it is full.  Setting ``O_NONBLOCK`` on the descriptor we
  inherited would change it for every process sharing it -- the user's shell included -- and
  keeping ours open would keep a pipe from ever reaching end-of-file;
* **a regular file** (``> out.txt``) or a device like ``/dev/null``: written at once, as the
  per-rank files are;
* **anything else with a descriptor** (a socket): written from a worker thread, abandoned on
  cancel.  The bytes go straight to the descriptor with ``os.write``, so an abandoned thread
  holds no Python stream lock (one held at interpreter exit aborts the interpreter);
* **a stream without a descriptor** (``io.StringIO``, a test's capture): its ``write``.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
from collections.abc import Sequence
from typing import TextIO

import trio

_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _private_nonblocking(fd: int) -> int | None:
    """A new non-blocking descriptor for the pipe or terminal behind ``fd``, or None."""
    try:
        new = os.open(f"/proc/self/fd/{fd}", _FLAGS)
    except OSError:
        return None
    try:
        same = os.path.samestat(os.fstat(new), os.fstat(fd))
    except OSError:
        same = False
    if not same:
        os.close(new)
        return None
    return new


class TextOutput:
    """Writes text to ``stream``; see the module docstring.

    ``raw=False`` always goes through the stream's own ``write`` (a file the caller owns and
    may write to as well); ``flush`` then says whether to flush it after each write.
    ``closed_by_reader`` turns true when the reader went away (``EPIPE``, as under ``| head``):
    later writes are dropped silently, like a Unix tool's output into a closed pipe.  Any other
    error writing a descriptor (a full disk, a terminal that hung up) is kept in ``error`` and
    ends the output the same way: the live view stops, the run and its files go on.
    """

    def __init__(self, stream: TextIO | None, *, flush: bool = True, raw: bool = True) -> None:
        self.stream = stream
        self._flush = flush
        self._fd: int | None = None
        #: Set once output has ended: the reader went away, or writing failed.
        self.ended = trio.Event()
        self.closed_by_reader = False
        self.error: OSError | None = None
        if stream is None:  # no such stream at all (Python's sys.stdout when fd 1 was closed)
            self.error = OSError(errno.EBADF, os.strerror(errno.EBADF))
            self.ended.set()
            self._mode = "closed"
            return
        if raw:
            try:
                self._fd = stream.fileno()
            except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
                self._fd = None
        self._mode = ""  # decided at the first write: "text", "inline", "nonblocking", "thread"
        self._lock = threading.Lock()  # thread mode: in order, even after an abandoned write

    def _decide(self) -> None:
        assert self.stream is not None
        if self._fd is None:
            self._mode = "text"
            return
        try:  # what the program printed on the stream itself so far goes out first
            self.stream.flush()
        except (OSError, ValueError):
            pass
        try:
            mode = os.fstat(self._fd).st_mode
        except OSError:
            self._mode = "inline"
            return
        if stat.S_ISREG(mode) or (stat.S_ISCHR(mode) and not os.isatty(self._fd)):
            self._mode = "inline"
            return
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            private = _private_nonblocking(self._fd)
            if private is not None:
                os.close(private)
                self._mode = "nonblocking"
                return
        self._mode = "thread"

    async def write(self, parts: Sequence[bytes]) -> None:
        """Write the concatenation of ``parts`` (UTF-8 text, or the ranks' own bytes), with
        one ``writev`` where the system allows.  Cancellable; a write cancelled half-way may
        leave half a line."""
        if not self._mode:
            self._decide()
        if self.closed_by_reader or self.error is not None:
            return
        pending = [memoryview(p) for p in parts if p]
        if not pending:
            return
        try:
            if self._mode == "text":
                assert self.stream is not None
                self.stream.write(b"".join(pending).decode("utf-8", "replace"))
                if self._flush:
                    self.stream.flush()
                return
            fd = self._fd
            assert fd is not None
            if self._mode == "inline":
                while pending:
                    pending = _advance(pending, os.writev(fd, pending[:_IOV_MAX]))
            elif self._mode == "nonblocking":
                try:
                    private = os.open(f"/proc/self/fd/{fd}", _FLAGS)
                except OSError:  # ENXIO: a pipe whose reader is gone
                    self.closed_by_reader = True
                    return
                try:
                    while pending:
                        try:
                            pending = _advance(pending, os.writev(private, pending[:_IOV_MAX]))
                        except BlockingIOError:
                            await trio.lowlevel.wait_writable(private)
                finally:
                    trio.lowlevel.notify_closing(private)
                    os.close(private)
            else:
                await trio.to_thread.run_sync(self._write_blocking, fd, pending,
                                              abandon_on_cancel=True)
        except BrokenPipeError:
            self.closed_by_reader = True
        except OSError as exc:
            if self._mode == "text":
                raise  # a stream object of the caller's: its error is theirs to see
            self.error = exc
        finally:
            if self.closed_by_reader or self.error is not None:
                self.ended.set()

    def _write_blocking(self, fd: int, pending: list[memoryview]) -> None:
        with self._lock:
            if self.closed_by_reader or self.error is not None:
                return
            try:
                while pending:
                    pending = _advance(pending, os.writev(fd, pending[:_IOV_MAX]))
            except BrokenPipeError:
                self.closed_by_reader = True
            except OSError as exc:
                self.error = exc


_IOV_MAX = 1024


def _advance(parts: list[memoryview], written: int) -> list[memoryview]:
    """What remains of ``parts`` after ``written`` bytes of them went out."""
    i = 0
    while i < len(parts) and written >= len(parts[i]):
        written -= len(parts[i])
        i += 1
    rest = parts[i:]
    if written:
        rest[0] = rest[0][written:]
    return rest
