"""Watchdog: a tiny process that ends the ranks' process groups if the host dies unannounced.

The parent-death signal (see ``_process``) kills each rank when the host is killed, but not the
rank's own children: they would be left running under PID 1.  The watchdog, started once per
mesh in its own session (so no terminal signal reaches it), reads the rank process groups from
a pipe whose write end only the host holds.  At a normal end the host writes ``done`` and
closes the pipe; end of file without ``done`` means the host died, and the watchdog sends
SIGKILL to every group it was told about.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import trio

_SCRIPT = r"""
import os, signal
groups, done, buf = [], False, b""
while True:
    try:
        data = os.read(0, 4096)
    except InterruptedError:
        continue
    if not data:
        break
    buf += data
    *lines, buf = buf.split(b"\n")
    for line in lines:
        if line == b"done":
            done = True
        elif line:
            groups.append(int(line))
if not done:
    for group in groups:
        try:
            os.killpg(group, signal.SIGKILL)
        except OSError:
            pass
"""


class Watchdog:
    """The host's side of the watchdog: :meth:`watch` each rank group, :meth:`close` at the
    end.  Start it with :meth:`start` (raises ``OSError`` if it cannot run)."""

    def __init__(self, process: trio.Process, fd: int) -> None:
        self._process = process
        self._fd: int | None = fd

    @classmethod
    async def start(cls) -> Watchdog:
        """Start the watchdog process (its own session, nothing but the pipe open in it)."""
        read_end, write_end = os.pipe()  # both close-on-exec: no rank inherits the write end
        try:
            process = await trio.lowlevel.open_process(
                [sys.executable, "-I", "-S", "-c", _SCRIPT], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(process, write_end)

    def watch(self, pgid: int) -> None:
        """Have the watchdog kill process group ``pgid`` should this process die."""
        self._write(b"%d\n" % pgid)

    def _write(self, data: bytes) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):  # a watchdog that is gone watches nothing
                os.write(self._fd, data)

    async def close(self) -> None:
        """Stand the watchdog down (the groups have ended) and reap it.  Idempotent."""
        if self._fd is not None:
            self._write(b"done\n")
            os.close(self._fd)
            self._fd = None
        with trio.CancelScope(shield=True):
            with trio.move_on_after(2):
                await self._process.wait()
                return
            self._process.kill()
            await self._process.wait()
