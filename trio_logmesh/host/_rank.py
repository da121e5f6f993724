"""RankProc: one child of the mesh -- its process, its pipes, its outbox and its barrier.

The barrier on the host, :meth:`RankProc.barrier`: every byte the child wrote before the call
ends up in the outbox and the files, then ``done()`` runs.  When the rank's Python process has
its agent connected, the agent first flushes Python and C stdio (``FORCE_SYNC_FLUSH`` ->
``FLUSHED``); then -- or at once, without an agent -- both StreamFwders cut their pipe at what
it holds (``FIONREAD``) and report once they have read past it.  A barrier never waits for an
agent: one starts before the user's code and is welcomed before that code runs, so a process
without one has buffered nothing yet.  A barrier asked of an agent that goes away is cut
without it.  A barrier asked after the child exited completes once its pipes reached EOF and
its ``Exit`` frame is in the outbox: what follows it comes after the rank's exit code.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio
import trio_util

from ._agents import AgentLink
from ._outbox import RankOutbox
from ._process import RankProcess
from ._stream import FileAppender, StreamFwder, pipe_pending


def process_state(pid: int) -> str:
    """The one-letter state of ``pid`` from ``/proc`` (``"T"`` stopped, ...); ``""`` if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


@attrs.define(eq=False)
class RankProc:
    """One child of the mesh; see the module docstring."""

    rank: int
    process: RankProcess
    outbox: RankOutbox
    fwds: tuple[StreamFwder, StreamFwder]
    appenders: tuple[FileAppender, FileAppender]
    agent: AgentLink | None = None
    #: The logging level the view asked for; sent to the agent when it connects.
    level: int | None = None
    returncode: trio_util.AsyncValue[int | None] = attrs.field(
        factory=lambda: trio_util.AsyncValue(None)
    )
    exited: trio.Event = attrs.field(factory=trio.Event)
    drained: trio.Event = attrs.field(factory=trio.Event)
    #: Errors closing the rank's files (reported by the mesh when it closes).
    file_errors: list[OSError] = attrs.field(factory=list)
    _asked: dict[int, tuple[float, Callable[[], None]]] = attrs.field(factory=dict)
    _after_drain: list[Callable[[], None]] = attrs.field(factory=list)
    _next_request: int = 1
    _cutting: int = 0
    _exit_appended: bool = False
    #: The :meth:`run` task has returned (or was cancelled).
    task_ended: bool = False

    # -- the barrier ---------------------------------------------------------------------
    def barrier(self, done: Callable[[], None]) -> None:
        """Call ``done()`` once every byte written before now is in the outbox and files."""
        if self._exit_appended:
            done()
        elif self.exited.is_set():
            self._after_drain.append(done)
        elif self.agent is not None:
            request = self._next_request
            self._next_request += 1
            self._asked[request] = (trio.current_time(), done)
            self.agent.send(self.agent.conn.force_sync_flush(request))
        else:
            self._cut(done)

    def _cut(self, done: Callable[[], None]) -> None:
        remaining = len(self.fwds)
        self._cutting += 1

        def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                self._cutting -= 1
                done()

        for fwd in self.fwds:
            fwd.cut(one_done)

    def set_level(self, level: int) -> None:
        """Set the child's root logging level (now, or when its agent connects)."""
        self.level = level
        if self.agent is not None:
            self.agent.send(self.agent.conn.set_level(level))

    # -- the agent -------------------------------------------------------------------------
    def agent_connected(self, link: AgentLink) -> Callable[[AgentLink, int], None] | None:
        """A hello for this rank: welcome the link (it replaces an older one: the rank's latest
        Python process is the one that counts); ``None`` refuses it, the process has exited."""
        if self.exited.is_set():
            return None
        old, self.agent = self.agent, link
        if self.level is not None:  # ahead of the welcome: in force before the user's code
            link.send(link.conn.set_level(self.level))
        link.send(link.conn.welcome())
        if old is not None:
            old.close()  # its reader reports it lost, which cuts what it was asked
        return self._agent_flushed

    def _agent_flushed(self, link: AgentLink, request: int) -> None:
        entry = self._asked.pop(request, None)
        if entry is not None:
            self._cut(entry[1])

    def agent_lost(self, link: AgentLink) -> None:
        """An accepted agent link closed: cut, without it, the barriers it was asked."""
        for request in link.conn.outstanding:
            entry = self._asked.pop(request, None)
            if entry is not None:
                self._cut(entry[1])
        if link is self.agent:
            self.agent = None

    # -- liveness --------------------------------------------------------------------------
    def describe(self) -> str:
        """Why this rank may not have answered a barrier yet, as well as the host can tell."""
        if self.drained.is_set():
            return "its output has ended"
        if self.exited.is_set():
            return "exited; its pipes are still being read (a descendant holds them open?)"
        if process_state(self.process.pid) in ("T", "t"):
            return "is stopped (SIGSTOP, Ctrl-Z or a debugger)"
        if self._asked:
            since = trio.current_time() - min(t for t, _ in self._asked.values())
            return f"did not answer the flush request for {since:.1f} s (busy or blocked)"
        if self._cutting:
            if self.outbox.policy == "block" and self.outbox.held_bytes > self.outbox.limit_bytes:
                return "is held back: the live view is behind and the drop policy is 'block'"
            return "its pipes are not read up to the barrier yet"
        return "its output up to the barrier has not reached the view yet"

    # -- the task --------------------------------------------------------------------------
    async def run(
        self,
        drain_timeout: float,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Read the pipes, wait for the process, read its last output, end the stream.

        Ends once the process exited and its pipes reached EOF (or were given up after
        ``drain_timeout`` seconds of silence from a descendant holding them), with
        :meth:`finish`.  Cancelled while the process runs, it leaves the pipes open for the
        mesh's teardown to :meth:`finish` after stopping the process.
        """
        try:
            async with trio.open_nursery() as nursery:
                read_scope = trio.CancelScope()
                readers_done = trio.Event()

                async def read_pipes() -> None:
                    try:
                        with read_scope:
                            async with trio.open_nursery() as readers:
                                for fwd in self.fwds:
                                    readers.start_soon(fwd.run)
                    finally:
                        readers_done.set()

                nursery.start_soon(read_pipes)
                task_status.started()
                await self.reap()
                await _drain_after_exit(self.fwds, drain_timeout)
                read_scope.cancel()
                await readers_done.wait()  # their held partial lines are in the outbox now
                nursery.cancel_scope.cancel()
        finally:
            self.task_ended = True
            if self.exited.is_set():
                self.finish()
            # Else the process still runs: its pipes stay open (closing them would kill it
            # with SIGPIPE on its next write) until the mesh stopped it and calls finish().

    def finish(self) -> None:
        """End the rank's stream: take what its pipes still hold (without waiting), append
        ``Exit``, close the pipes and the files.  Idempotent; after the process was reaped
        when possible (else the code shown is -9)."""
        if self.drained.is_set():
            return
        for fwd in self.fwds:
            fwd.salvage()
        code = self.returncode.value
        self._append_exit(code if code is not None else -9)
        self.process.close_pipes()
        for appender in self.appenders:
            error = appender.close()
            if error is not None:
                self.file_errors.append(error)
        self.drained.set()

    async def reap(self) -> int:
        """Wait for the process to end (reaping it), note its code, let go of its agent."""
        code = await self.process.wait()
        if not self.exited.is_set():
            self.returncode.value = code
            self.exited.set()
            if self.agent is not None:
                # The process is gone: whatever still holds its socket open (a forked
                # descendant) is not its agent.
                self.agent.close()
        return code

    def _append_exit(self, code: int) -> None:
        if not self._exit_appended:
            self._exit_appended = True
            self.outbox.append_exit(code)
            waiting, self._after_drain = self._after_drain, []
            for done in waiting:
                done()


async def _drain_after_exit(fwds: tuple[StreamFwder, StreamFwder], timeout: float) -> None:
    """Read the pipes of an exited child to EOF.  Give up only when a descendant keeps them
    open but silent: nothing read and nothing waiting in them for ``timeout`` seconds.
    (Back-pressure from a slow live view can slow draining down; it never cuts it short.)"""
    last = [f.offset for f in fwds]
    quiet_since = trio.current_time()
    while not all(f.eof for f in fwds):
        await trio.sleep(0.05)
        now = [f.offset for f in fwds]
        waiting = any(not f.eof and pipe_pending(f.fd) for f in fwds)
        if now != last or waiting:
            last, quiet_since = now, trio.current_time()
        elif trio.current_time() - quiet_since >= timeout:
            return
