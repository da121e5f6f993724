"""RankProcess: one rank's process, started so that it never outlives logmesh.

* **Its own process group** (a new session): every signal goes to the group, so a rank's
  descendants -- a ``subprocess.Popen(["sleep", "120"])``, a data loader -- get it too.
* **Parent-death signal**: between fork and exec the child asks the kernel for SIGKILL when
  its parent dies (``PR_SET_PDEATHSIG``), so a logmesh killed with SIGKILL takes its ranks
  with it.  The kernel sends it when the *thread* that forked the child ends: ranks are
  therefore started on the calling thread -- the trio thread, which lives as long as the run
  -- not in a worker thread that may end when idle (trio's own ``open_process`` forks in one).
  Starting a process blocks the loop for a few milliseconds, once per rank.
* **Its end**: ``wait()`` waits on a pidfd (or, without one, ``waitid`` in a thread) and reaps
  the child, so no zombie is left.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import signal
import subprocess
from collections.abc import Mapping, Sequence

import trio

_PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _die_with(parent: int, libc: ctypes.CDLL | None, nofile: int | None) -> None:
    # Runs in the child between fork and exec: little work, nothing that takes a lock.
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before we asked: follow it now
        os._exit(1)
    if nofile is not None:  # the limit we raised for ourselves is not the program's business
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


class RankProcess:
    """A started rank: ``pid``, the read ends of its pipes, ``wait()``, group signals."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: int, stderr: int,
                 stdin: int | None) -> None:
        self.pid = popen.pid
        self.returncode: int | None = None
        # The pipes are ours alone: non-blocking reads affect nobody else.
        self.stdout: int | None = stdout
        self.stderr: int | None = stderr
        self.stdin: int | None = stdin
        for fd in (stdout, stderr):
            os.set_blocking(fd, False)
        self._popen = popen  # for its returncode bookkeeping only
        # One task waits on the pidfd at a time; a cancelled one hands over to the next.
        self._wait_lock = trio.Lock()
        try:
            self._pidfd: int | None = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._pidfd = None

    async def wait(self) -> int:
        """Wait until the process exits, reap it, and return its code (negative: the signal
        that killed it).  Any number of tasks may wait."""
        if self.returncode is not None:
            return self.returncode
        async with self._wait_lock:
            if self.returncode is not None:
                return self.returncode
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
            else:
                await trio.to_thread.run_sync(
                    functools.partial(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT),
                    abandon_on_cancel=True,
                )
            if self.returncode is None:
                _, status = os.waitpid(self.pid, 0)
                self.returncode = os.waitstatus_to_exitcode(status)
                self._popen.returncode = self.returncode
                self._close_pidfd()
        return self.returncode

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the rank's process group (it and its descendants), quietly nothing
        when the group is gone."""
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            if self.returncode is None:
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass

    def close_pipes(self) -> None:
        """Close the read ends of the rank's pipes (and the write end of its stdin)."""
        for name in ("stdout", "stderr", "stdin"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def start_rank(
    cmd: Sequence[str], env: Mapping[str, str], *, stdin: bool = False,
    nofile: int | None = None,
) -> RankProcess:
    """Start one rank: its own session and process group, pipes for its output (and its
    input when ``stdin``, else ``/dev/null``), SIGKILL when this process dies, and its soft
    open-file limit set back to ``nofile`` when given.

    Raises ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) if it cannot start.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    in_r, in_w = os.pipe() if stdin else (subprocess.DEVNULL, None)
    theirs = [out_w, err_w] + ([in_r] if stdin else [])
    try:
        popen = subprocess.Popen(
            list(cmd),
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            env=dict(env),
            start_new_session=True,
            preexec_fn=functools.partial(_die_with, os.getpid(), _libc(), nofile),
        )
    except BaseException:
        for fd in [out_r, err_r, *theirs] + ([in_w] if in_w is not None else []):
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)
    return RankProcess(popen, out_r, err_r, in_w)
