"""Forward the driver's stdin to one rank, as mpirun does for rank 0.

The driver's stdin is shared with whoever started it -- the user's shell, a pipeline -- so it
is never set non-blocking in place: a pipe or a terminal is reopened privately
(``/proc/self/fd/0``, non-blocking) and a regular file is read as it is (it never blocks).
Anything else (a socket) is not forwarded: the rank reads end-of-file.  End of input closes the rank's stdin, so the rank
sees end-of-file too.  A rank that closes its stdin ends the forwarding; so does a terminal
that refuses a background job its input (``EIO`` with ``SIGTTIN`` ignored).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

import trio

CHUNK = 64 * 1024


def _open_input() -> tuple[int, bool] | None:
    """A descriptor to read the driver's stdin from, and whether it is non-blocking."""
    try:
        fd = sys.stdin.fileno() if sys.stdin is not None else 0
        mode = os.fstat(fd).st_mode
    except (OSError, ValueError, AttributeError):
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        try:
            return os.open(f"/proc/self/fd/{fd}",
                           os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC), True
        except OSError:
            return None
    if stat.S_ISREG(mode):
        return os.dup(fd), False
    return None


async def _read(fd: int, nonblocking: bool) -> bytes:
    if nonblocking:
        while True:
            try:
                return os.read(fd, CHUNK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(fd)
    await trio.lowlevel.checkpoint()  # a regular file: reading never blocks for long
    return os.read(fd, CHUNK)


async def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)


async def forward_stdin(dest: int) -> None:
    """Copy the driver's stdin into ``dest`` (the write end of a rank's stdin pipe, which this
    task owns and closes) until either side ends, or cancellation."""
    os.set_blocking(dest, False)
    source = _open_input()
    try:
        if source is None:
            return
        fd, nonblocking = source
        try:
            while True:
                try:
                    data = await _read(fd, nonblocking)
                except OSError as exc:
                    if exc.errno in (errno.EIO, errno.EBADF):
                        return  # a terminal that is not ours to read (a background job)
                    raise
                if not data:
                    return
                try:
                    await _write_all(dest, data)
                except (BrokenPipeError, ConnectionResetError):
                    return  # the rank closed its stdin, or ended
        finally:
            if nonblocking:
                trio.lowlevel.notify_closing(fd)
            os.close(fd)
    finally:
        trio.lowlevel.notify_closing(dest)
        os.close(dest)
