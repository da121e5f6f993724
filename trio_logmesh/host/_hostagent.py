"""HostAgent: ``logmesh agent``, one per host of a run over many hosts.

It dials the driver named by the join document (TLS, the driver's certificate pinned), joins
as node ``node_rank`` with the run's token, and once every host joined, runs its ranks with
this host's mesh (:func:`~trio_logmesh.host._mesh.open_proc_mesh`, with global ranks).  It is
its mesh's view: it serves every rank's ordered stream onto the one link, and applies what the
driver asks (barriers, streaming, levels, confirmations, signals, stop).  It reads its ranks'
pipes itself; a launcher's stdio carries nothing but the agent's own few messages.

* **Credit.** Data goes out only while the driver granted credit for it, so the link stays
  readable for control and heartbeats whatever the view's speed; what waits stays in the ranks'
  outboxes, where the drop or block policy applies as on one host.
* **Epochs.** The driver opens each stream epoch with what it already has of each rank; the
  agent rewinds every rank to its first unconfirmed frame, skips what the driver has, and marks
  the start of the epoch in the data.  A reconnection after a partition resumes so: nothing is
  lost or repeated.
* **Liveness.** Heartbeats both ways.  A link that breaks is dialed again while the driver was
  heard from within ``dead_after``; past that the driver is gone, and the agent stops its
  ranks and exits (status 3).  Its ranks never outlive it (process groups, parent-death
  signal, the mesh's watchdog).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import attrs
import trio
import trio_util

from ..protocol import _wire as w
from ..protocol._frames import Mark, encode_frames
from ..protocol._join import JoinInfo
from ..protocol._link import AGENT, LinkConnection, ProtocolError
from ._forwarder import Delivery, ViewLink
from ._launch import World, free_port
from ._link import LinkIO, LinkRefused, dial
from ._mesh import ProcMesh, open_proc_mesh

#: Seconds to wait for the driver before its ``ACCEPT`` told us its ``dead_after``.
FIRST_CONTACT = 20.0
#: Heartbeats per ``dead_after``.
HEARTBEATS = 4
#: A barrier this old (seconds) on a rank makes the agent report why it waits.
STATUS_AFTER = 0.5
#: Seconds between two dials while the link is down.
REDIAL = (0.05, 1.0)
#: Seconds the agent waits for the driver's END after its ranks failed to start.
END_WAIT = 10.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_DRIVER_GONE = 3


class DriverGone(Exception):
    """The driver was not heard from for ``dead_after`` seconds, or said to leave."""


@attrs.define(eq=False)
class HostAgent:
    """One host's agent; :meth:`run` is all of its life."""

    join: JoinInfo
    node_rank: int
    say: Callable[[str], None]
    bind: str | None = None
    dead_after: float = FIRST_CONTACT
    mesh: ProcMesh | None = None
    procs: int = 0
    io: LinkIO | None = None
    #: The last time anything came from the driver, on any connection.
    last_heard: float = 0.0
    credit: int = 0
    _credit_changed: trio.Event = attrs.field(factory=trio.Event)
    view: ViewLink | None = None
    spec: dict | None = None
    _spec_event: trio.Event = attrs.field(factory=trio.Event)
    started_info: dict | None = None
    #: Barrier versions asked per local rank, and when.
    asked: dict[int, dict[int, float]] = attrs.field(factory=dict)
    status_sent: dict[int, str] = attrs.field(factory=dict)
    exits: dict[int, int] = attrs.field(factory=dict)
    tails: dict[int, str] = attrs.field(factory=dict)
    ended: trio.Event = attrs.field(factory=trio.Event)
    gone: str | None = None
    _gone_event: trio.Event = attrs.field(factory=trio.Event)
    _stops: list[tuple[int, float]] = attrs.field(factory=list)
    _stop_wake: trio.Event = attrs.field(factory=trio.Event)
    _session_nursery: trio.Nursery | None = None
    _inbox: trio.MemoryReceiveChannel[Delivery] | None = None
    _early: list[tuple] = attrs.field(factory=list)
    _outboxes: list = attrs.field(factory=list)
    _epoch_scope: trio.CancelScope | None = None

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.procs

    def lose_driver(self, reason: str) -> None:
        """The driver is gone (``reason`` says how we know): stop the ranks and leave."""
        if self.gone is None:
            self.gone = reason
            self._gone_event.set()

    # -- the whole life --------------------------------------------------------------------
    async def run(self) -> int:
        """Join, run the ranks, serve them until the driver ends the run or is gone; return
        the exit status (0, :data:`EXIT_REFUSED` or :data:`EXIT_DRIVER_GONE`).

        Raises nothing for a refusal or a lost driver: it says so with ``say`` instead.
        """
        try:
            io, accept = await self._connect(first=True)
        except LinkRefused as exc:
            self.say(f"refused: {exc}")
            return EXIT_REFUSED
        except (OSError, trio.TooSlowError, ProtocolError) as exc:
            self.say(f"cannot join the driver at {self.join.host}:{self.join.port}: {exc}")
            return EXIT_DRIVER_GONE
        self._accepted(accept)
        status = EXIT_OK
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_link, io)
            try:
                status = await self._run_ranks()
            finally:
                with trio.move_on_after(2.0):  # the ranks' last frames first, if they can go
                    while self._unsent():
                        await trio.sleep(0.01)
                if self.io is not None and not self.io.broken:
                    self.io.send(self.io.conn.bye(self.gone or ""))
                    with trio.move_on_after(1.0):  # let the writer send it; never wait long
                        while self.io is not None and self.io.queued and not self.io.broken:
                            await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
        return status

    async def _run_ranks(self) -> int:
        async with trio_util.move_on_when(trio_util.wait_any, self._gone_event.wait,
                                          self.ended.wait):
            await self._spec_event.wait()
        if self.spec is None:
            return self._leave_status()
        spec = self.spec
        self.procs = int(spec["procs"])
        world = World(node_rank=self.node_rank, nnodes=self.join.nnodes,
                      master_addr=spec["master_addr"], master_port=int(spec["master_port"]),
                      run_id=self.join.session)
        entered = False
        try:
            async with open_proc_mesh(spec["cmd"], self.procs, env=spec.get("env"),
                                      log_root=spec.get("log_root"), announce=False,
                                      world=world, **spec.get("options", {})) as mesh:
                entered = True
                await self._serve_mesh(mesh)
        except Exception as exc:
            if entered:
                raise
            # The ranks could not start (a program not found, a log root not writable):
            # the driver reports it, and ends the run.
            if isinstance(exc, OSError):
                status = 127 if isinstance(exc, FileNotFoundError) else 126
                if exc.filename is None or os.fspath(exc.filename) != spec["cmd"][0]:
                    status = 1
                text = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
            else:
                status, text = 1, str(exc)
            self.started_info = {"error": text, "status": status}
            self._send_control(lambda c: c.started(self.started_info or {}))
            with trio.move_on_after(END_WAIT):
                await trio_util.wait_any(self._gone_event.wait, self.ended.wait)
            return EXIT_REFUSED
        return self._leave_status()

    async def _serve_mesh(self, mesh: ProcMesh) -> None:
        self.mesh = mesh
        self._outboxes = [rp.outbox for rp in mesh._ranks]
        self.started_info = {"run_dir": mesh.run_dir, "pids": mesh.pids,
                             "hostname": socket.gethostname()}
        self._send_control(lambda c: c.started(self.started_info or {}))
        async with trio.open_nursery() as nursery:
            for rank in range(self.procs):
                nursery.start_soon(self._watch_rank, mesh, rank)
            nursery.start_soon(self._apply_stops, mesh)
            await trio_util.wait_any(self._gone_event.wait, self.ended.wait)
            nursery.cancel_scope.cancel()
        if self.gone is not None:
            last = self.first_rank + self.procs - 1
            which = (f"rank {last}" if self.procs == 1
                     else f"ranks {self.first_rank}-{last}")
            self.say(f"{self.gone}; stopping {which}")

    def _unsent(self) -> bool:
        """Frames of the ranks not yet handed to the link (while it is up)."""
        if self.io is None or self.io.broken or self.mesh is None:
            return False
        if self._inbox is not None and self._inbox.statistics().current_buffer_used:
            return True
        return self.io.queued > 0 or any(o.has_unsent for o in self._outboxes)

    def _leave_status(self) -> int:
        return EXIT_OK if self.gone is None else EXIT_DRIVER_GONE

    async def _watch_rank(self, mesh: ProcMesh, rank: int) -> None:
        code = await mesh.wait_rank(rank)
        self.exits[rank] = code
        self._send_control(lambda c: c.exited(self.first_rank + rank, code))
        await mesh.wait_output_ended(rank)
        self.asked.pop(rank, None)
        if code != 0:
            self.tails[rank] = "\n".join(mesh.stderr_tail(rank))
            self._send_control(lambda c: c.tail(self.first_rank + rank, self.tails[rank]))

    async def _apply_stops(self, mesh: ProcMesh) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                while self._stops:
                    sig, grace = self._stops.pop(0)
                    nursery.start_soon(mesh.stop, grace, sig)
                self._stop_wake = trio.Event()
                await self._stop_wake.wait()

    def _send_control(self, make: Callable[[LinkConnection], bytes]) -> None:
        io = self.io
        if io is not None and not io.broken:
            io.send(make(io.conn))

    # -- connections ------------------------------------------------------------------------
    async def _connect(self, first: bool) -> tuple[LinkIO, dict]:
        """Dial, present the token, and wait for the answer; raise :class:`LinkRefused`,
        ``OSError`` or ``trio.TooSlowError``."""
        with trio.fail_after(FIRST_CONTACT if first else self.dead_after):
            stream = await dial(self.join, self.dead_after, self.bind)
            conn = LinkConnection(AGENT, self.join.token)
            io = LinkIO(stream, conn)
            try:
                address = stream.transport_stream.socket.getsockname()[0]  # type: ignore[attr-defined]
                info = {"hostname": socket.gethostname(), "pid": os.getpid(),
                        "address": address, "resume": not first}
                if self.node_rank == 0 and first:
                    info["master_port"] = free_port(address)
                await stream.send_all(conn.join(self.node_rank, info))
                events = await io.receive()
                if events[0][0] == w.REFUSE:
                    raise LinkRefused(f"the driver refused node {self.node_rank}: "
                                      f"{events[0][1]}")
                self._early = events[1:]  # what came with the answer: the session's first
                return io, events[0][1]
            except BaseException:
                await io.aclose()
                raise

    def _accepted(self, accept: dict) -> None:
        self.dead_after = float(accept.get("dead_after", self.dead_after))
        self.last_heard = trio.current_time()

    async def _keep_link(self, io: LinkIO) -> None:
        """Serve connection after connection until the driver ends the run or is gone."""
        while True:
            reason = await self._session(io)
            if self.ended.is_set() or self.gone is not None:
                return
            deadline = self.last_heard + self.dead_after
            self.say(f"link to the driver lost ({reason}); dialing again for up to "
                     f"{max(0.0, deadline - trio.current_time()):.1f} s")
            delay = REDIAL[0]
            while True:
                if trio.current_time() >= deadline:
                    self.lose_driver(f"the driver is gone (no word for {self.dead_after:g} s)")
                    return
                try:
                    with trio.fail_after(max(0.01, deadline - trio.current_time())):
                        io, accept = await self._connect(first=False)
                except LinkRefused as exc:
                    self.lose_driver(str(exc))
                    return
                except (OSError, trio.TooSlowError, ProtocolError):
                    await trio.sleep(delay)
                    delay = min(REDIAL[1], delay * 2)
                    continue
                self._accepted(accept)
                self.say("link to the driver restored")
                break

    async def _session(self, io: LinkIO) -> str:
        """Serve one connection; return why it ended."""
        self.io = io
        self.credit = 0
        reason = "closed"
        try:
            async with trio.open_nursery() as nursery:
                self._session_nursery = nursery
                nursery.start_soon(io.run_writer)
                nursery.start_soon(self._heartbeats, io)
                if self.started_info is not None:  # a resumed connection: what it missed
                    info = self.started_info
                    io.send(io.conn.started(info))
                    for rank, code in self.exits.items():
                        io.send(io.conn.exited(self.first_rank + rank, code))
                    for rank, text in self.tails.items():
                        io.send(io.conn.tail(self.first_rank + rank, text))
                try:
                    early, self._early = self._early, []
                    for event in early:
                        await self._handle(io, event)
                    while True:
                        for event in await io.receive():
                            self.last_heard = io.last_heard
                            await self._handle(io, event)
                        if self.ended.is_set():
                            await trio.sleep_forever()  # until run() cancels us, BYE sent
                except EOFError:
                    reason = "the driver closed it"
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    reason = f"broken: {exc.__cause__ or exc}"
                except ProtocolError as exc:
                    reason = f"protocol error: {exc}"
                except DriverGone as exc:
                    reason = str(exc)
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:  # the writer's
            reason = f"broken: {exc.__cause__ or exc}"
        finally:
            self._session_nursery = None
            self.view = None
            self.io = None
            await io.aclose()
        return reason

    async def _heartbeats(self, io: LinkIO) -> None:
        interval = self.dead_after / HEARTBEATS
        next_beat = trio.current_time()
        while True:
            if trio.current_time() >= next_beat:
                io.send(io.conn.heartbeat())
                next_beat = trio.current_time() + interval
            self._report_waiting(io)
            if trio.current_time() - io.last_heard > self.dead_after:
                # Silent for dead_after on this connection: no point dialing again.
                self.lose_driver(f"the driver is gone (no word for {self.dead_after:g} s)")
                await io.aclose()
                return
            await trio.sleep(min(interval, 0.25))

    def _report_waiting(self, io: LinkIO) -> None:
        view = self.view
        if view is None:
            return
        now = trio.current_time()
        for rank, versions in self.asked.items():
            if versions and now - min(versions.values()) >= STATUS_AFTER:
                text = view.describe(rank)
                if self.status_sent.get(rank) != text:
                    self.status_sent[rank] = text
                    io.send(io.conn.status(self.first_rank + rank, text))

    # -- what the driver asks ---------------------------------------------------------------
    async def _handle(self, io: LinkIO, event: tuple) -> None:
        kind = event[0]
        if kind == w.HEARTBEAT:
            return
        if kind == w.CREDIT:
            self.credit += event[1]
            self._credit_changed.set()
        elif kind == w.START:
            if self.spec is None:
                self.spec = event[1]
                self._spec_event.set()
        elif kind == w.STREAM:
            assert self._session_nursery is not None
            if self._epoch_scope is not None:
                self._epoch_scope.cancel()
            if self.mesh is not None:
                await self._session_nursery.start(self._serve_epoch, io, event[1], event[2])
        elif kind == w.END:
            self.ended.set()
        elif kind in (w.SIGNAL, w.STOP):
            if kind == w.STOP:
                self._stops.append((event[1], event[2]))
                self._stop_wake.set()
            elif self.mesh is not None:
                ranks = [r - self.first_rank for r in event[2]] or None
                self.mesh.send_signal(event[1], ranks)
        else:
            local = event[1] - self.first_rank
            view = self.view
            if view is None or not 0 <= local < self.procs:
                return  # before the ranks run, or not ours: nothing to apply it to
            if kind == w.CONFIRM:
                view.confirm(local, event[2])
            elif kind == w.FLUSH:
                self.asked.setdefault(local, {})[event[2]] = trio.current_time()
                view.force_sync_flush(local, event[2])
            elif kind == w.STREAMING:
                view.set_streaming(local, event[2])
            elif kind == w.LEVEL:
                view.set_level(local, event[2])

    async def _serve_epoch(self, io: LinkIO, epoch: int, received: dict[int, int],
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        mesh = self.mesh
        assert mesh is not None
        first = self.first_rank
        skip = {g - first: s for g, s in received.items() if 0 <= g - first < self.procs}
        send, recv = trio.open_memory_channel[Delivery](2)
        self._inbox = recv
        with trio.CancelScope() as scope:
            self._epoch_scope = scope

            async def serve(task_status: trio.TaskStatus[ViewLink] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                async with send:
                    await mesh.serve_view(send, task_status=task_status)

            async with trio.open_nursery() as nursery:
                self.view = await nursery.start(serve)
                io.send(io.conn.epoch(epoch))
                task_status.started()
                await self._pump(io, recv, skip)

    async def _pump(self, io: LinkIO, recv: trio.MemoryReceiveChannel[Delivery],
                    skip: dict[int, int]) -> None:
        first = self.first_rank
        asked = self.asked
        async for delivery in recv:
            while self.credit <= 0:
                self._credit_changed = trio.Event()
                await self._credit_changed.wait()
            parts = []
            for rank, frames in delivery:
                already = skip.get(rank)
                if already is not None:
                    frames = [f for f in frames if f.seq > already]
                    if not frames:
                        continue
                    del skip[rank]  # frames come in order: the rest are all new
                if rank in asked:
                    for f in frames:
                        if isinstance(f, Mark):
                            asked[rank].pop(f.version, None)
                parts.append(encode_frames(first + rank, frames))
            if parts:
                data = b"".join(parts)
                self.credit -= len(data)
                io.send(data)


async def run_host_agent(join: JoinInfo, node_rank: int, *, bind: str | None = None,
                         say: Callable[[str], None] | None = None,
                         stdin_is_link: bool = False) -> int:
    """Run the agent of node ``node_rank`` for the run of ``join``; return its exit status.

    0 after the driver ended the run, 1 when it was refused (a bad token, a certificate that
    does not match, a node rank taken) or its ranks could not start, 3 when the driver is
    gone.  SIGTERM, SIGINT and SIGHUP stop the ranks (SIGKILL after their grace) and make it
    leave like a lost driver.  ``stdin_is_link``: the end of stdin means the driver is gone (an
    ssh session that carried the join document and closed).
    """
    if say is None:
        import sys

        def say(text: str) -> None:
            sys.stderr.write(f"logmesh agent (node {node_rank}): {text}\n")
            sys.stderr.flush()

    agent = HostAgent(join, node_rank, say, bind)

    async def on_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                agent.lose_driver(f"stopped by {signal.Signals(sig).name}")

    async def on_stdin_eof() -> None:
        stream = trio.lowlevel.FdStream(os.dup(0))
        async with stream:
            try:
                while await stream.receive_some(4096):
                    pass
            except (OSError, trio.BrokenResourceError):
                pass
        agent.lose_driver("the connection that started this agent closed (the driver is gone)")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(on_signals)
        if stdin_is_link:
            nursery.start_soon(on_stdin_eof)
        status = await agent.run()
        nursery.cancel_scope.cancel()
    return status
