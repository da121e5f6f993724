"""HostLink: the driver's account of one host of the run, across its connections.

It holds what the driver must remember for a host whose link may break and come back: the
highest sequence number received per rank (a resumed connection skips it), what the view asked
(streaming, levels, barriers, confirmations -- sent again on a new connection), exit codes as
the agent reported them, and the frames received but not yet handed to the view.

Frames wait here, per delivery as received, until the mesh's serve loop gives them to the view;
only then is the credit they used given back to the agent.  So the agent never sends more than
``window`` bytes the view has not taken, and the link stays readable: control frames and
heartbeats never wait behind data.

Data frames are counted for an epoch: the driver opens one (``STREAM``) on every new
connection and for every new view; frames that arrive before the agent marked the start of the
current epoch (``EPOCH``) are from before it, and are dropped (their credit given back).
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable

import attrs
import trio

from ..host._link import LinkIO
from ..protocol import _wire as w
from ..protocol._frames import Exit, Frame, Lost, Mark, decode_frame
from ..protocol._link import DATA_KINDS, ProtocolError

#: Bytes of data frames an agent may have sent that the view has not taken yet.
WINDOW = 4 * 1024 * 1024
#: The sequence number of a driver-made frame: after anything a rank's stream could hold.
END_SEQ = 2**63

Delivery = list[tuple[int, list[Frame]]]


@attrs.define(eq=False)
class HostLink:
    """One host: its ranks ``first_rank .. first_rank + procs - 1``; see the module docstring.

    ``on_data`` is called when frames wait for the view, ``on_change`` when an exit code, a
    loss or the host's start changed.
    """

    node_rank: int
    procs: int
    on_data: Callable[[], None]
    on_change: Callable[[], None]
    window: int = WINDOW
    hostname: str = ""
    address: str = ""
    label: str = ""
    io: LinkIO | None = None
    #: What the agent said of itself when it joined (host name, address, ...).
    join_info: dict = attrs.field(factory=dict)
    #: What it was told to start (sent again to an agent that reconnects before it started).
    spec: dict | None = None
    joined: bool = False
    started: bool = False
    start_error: dict | None = None
    run_dir: str = ""
    pids: list[int] = attrs.field(factory=list)
    returncodes: list[int | None] = attrs.field(factory=list)
    #: Why the host was given up on (None while it is not).
    lost: str | None = None
    #: The agent said goodbye (its reason; "" for a normal end).
    bye: str | None = None
    last_heard: float = 0.0
    disconnected_at: float | None = None
    epoch: int = 0
    _epoch_seen: int = -1
    received: dict[int, int] = attrs.field(factory=dict)
    exit_received: set[int] = attrs.field(factory=set)
    confirmed: dict[int, int] = attrs.field(factory=dict)
    streaming_off: set[int] = attrs.field(factory=set)
    levels: dict[int, int] = attrs.field(factory=dict)
    pending_flush: dict[int, set[int]] = attrs.field(factory=dict)
    statuses: dict[int, str] = attrs.field(factory=dict)
    tails: dict[int, str] = attrs.field(factory=dict)
    stop_request: tuple[int, float] | None = None
    buffer: deque[tuple[Delivery, int]] = attrs.field(factory=deque)
    buffered_bytes: int = 0
    _credit_due: int = 0

    def __attrs_post_init__(self) -> None:
        self.returncodes = [None] * self.procs

    @property
    def first_rank(self) -> int:
        return self.node_rank * self.procs

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + self.procs)

    @property
    def connected(self) -> bool:
        return self.io is not None and not self.io.broken

    @property
    def complete(self) -> bool:
        """Every rank's stream ended here (its ``Exit`` arrived): losing the host now loses
        nothing."""
        return len(self.exit_received) == self.procs

    def describe_ranks(self) -> str:
        """``host h1 (node 0, ranks 0-3)``."""
        last = self.first_rank + self.procs - 1
        ranks = f"rank {last}" if self.procs == 1 else f"ranks {self.first_rank}-{last}"
        return f"host {self.label} (node {self.node_rank}, {ranks})"

    # -- control to the agent ----------------------------------------------------------------
    def send(self, make: Callable[..., bytes], *args: object) -> None:
        """Send a control frame now if connected (else it is dropped: what matters is sent
        again on the next connection)."""
        io = self.io
        if io is not None and not io.broken:
            io.send(make(io.conn, *args))

    def start_stream(self, resume: bool) -> None:
        """Open a new epoch: on a new connection (``resume``: skip what we have, send again
        what the view asked) or for a new view (everything from the first unconfirmed frame)."""
        self.epoch += 1
        if not resume:
            self._drop_buffer()
            self.received.clear()
            self.streaming_off.clear()
            self.pending_flush.clear()
        io = self.io
        if io is None or io.broken or not self.started:
            return
        conn = io.conn
        io.send(conn.stream(self.epoch, self.received if resume else {}))
        if resume:
            for rank in sorted(self.streaming_off):
                io.send(conn.streaming(rank, False))
            for rank, level in sorted(self.levels.items()):
                io.send(conn.level(rank, level))
            for rank, seq in sorted(self.confirmed.items()):
                io.send(conn.confirm(rank, seq))
            for rank, versions in sorted(self.pending_flush.items()):
                for version in sorted(versions):
                    io.send(conn.flush(rank, version))
            if self.stop_request is not None:
                io.send(conn.stop(*self.stop_request))

    def grant_credit(self) -> None:
        """A new connection: the agent may send what the buffer leaves of the window."""
        self._credit_due = 0
        self.send(lambda c, n: c.credit(n), max(0, self.window - self.buffered_bytes))

    def _drop_buffer(self) -> None:
        dropped = sum(n for _, n in self.buffer)
        self.buffer.clear()
        self.buffered_bytes = 0
        self._give_credit(dropped)

    def _give_credit(self, nbytes: int) -> None:
        self._credit_due += nbytes
        if self._credit_due >= self.window // 4:
            self.send(lambda c, n: c.credit(n), self._credit_due)
            self._credit_due = 0

    def taken(self, nbytes: int) -> None:
        """The view took ``nbytes`` of this host's frames: the agent may send as much again."""
        self.buffered_bytes -= nbytes
        self._give_credit(nbytes)

    # -- what the agent sends ----------------------------------------------------------------
    def handle(self, events: list[tuple]) -> None:
        """Apply received events; data frames of the current epoch wait for the view as one
        delivery.  Raises ``ProtocolError`` for a frame about a rank not on this host."""
        delivery: Delivery = []
        nbytes = 0
        for event in events:
            kind = event[0]
            if kind in DATA_KINDS:
                size = len(event[1]) + w.HEADER_SIZE
                if self._epoch_seen != self.epoch:
                    self._give_credit(size)  # from before the current epoch: sent again
                    continue
                try:
                    rank, frame = decode_frame(kind, event[1])
                except w.FrameError as exc:
                    raise ProtocolError(str(exc)) from None
                self._check_rank(rank)
                if frame.seq <= self.received.get(rank, 0):
                    self._give_credit(size)
                    continue
                self.received[rank] = frame.seq
                if isinstance(frame, Mark):
                    versions = self.pending_flush.get(rank)
                    if versions is not None:
                        versions.discard(frame.version)
                elif isinstance(frame, Exit):
                    self.exit_received.add(rank)
                    self.pending_flush.pop(rank, None)
                    if self.returncodes[rank - self.first_rank] is None:
                        self.returncodes[rank - self.first_rank] = frame.code
                        self.on_change()
                if delivery and delivery[-1][0] == rank:
                    delivery[-1][1].append(frame)
                else:
                    delivery.append((rank, [frame]))
                nbytes += size
            elif kind == w.EPOCH:
                self._epoch_seen = event[1]
            elif kind == w.EXITED:
                self._check_rank(event[1])
                self.returncodes[event[1] - self.first_rank] = event[2]
                self.on_change()
            elif kind == w.STATUS:
                self._check_rank(event[1])
                self.statuses[event[1]] = event[2]
            elif kind == w.TAIL:
                self._check_rank(event[1])
                self.tails[event[1]] = event[2]
            elif kind == w.STARTED:
                info = event[1]
                if "error" in info:
                    self.start_error = info
                else:
                    self.run_dir = str(info.get("run_dir", ""))
                    self.pids = [int(p) for p in info.get("pids", [])][: self.procs]
                first = not self.started
                self.started = True
                if first:
                    self.on_change()
            elif kind == w.BYE:
                self.bye = event[1]
                self.on_change()
        if delivery:
            self.buffer.append((delivery, nbytes))
            self.buffered_bytes += nbytes
            self.on_data()

    def _check_rank(self, rank: int) -> None:
        if rank not in self.ranks:
            raise ProtocolError(f"rank {rank} is not on node {self.node_rank}")

    # -- loss ----------------------------------------------------------------------------------
    def give_up(self, reason: str) -> None:
        """The host is lost: what it delivered stays; every rank whose exit did not come
        ends with a :class:`~trio_logmesh.protocol._frames.Lost` frame behind it."""
        if self.lost is not None:
            return
        self.lost = reason
        self.append_ends()
        self.on_change()

    def append_ends(self) -> None:
        """(Lost host) the ends of its ranks' streams for the view: ``Lost``, or ``Exit`` for
        a rank whose exit came (a new view could not get it again)."""
        delivery: Delivery = []
        for rank in self.ranks:
            if rank in self.exit_received:
                if self.received.get(rank, 0) == 0:  # the buffer was dropped for a new view
                    code = self.returncodes[rank - self.first_rank]
                    delivery.append((rank, [Exit(END_SEQ, code if code is not None else -9)]))
            else:
                delivery.append((rank, [Lost(END_SEQ, self.label, self.lost or "")]))
        if delivery:
            self.buffer.append((delivery, 0))
            self.on_data()

    def describe(self, rank: int, now: float, dead_after: float) -> str:
        """Why ``rank`` may not have answered a barrier, as far as the driver can tell."""
        if self.lost is not None:
            return f"its host {self.label} was lost ({self.lost})"
        if not self.connected:
            since = now - (self.disconnected_at if self.disconnected_at is not None else now)
            return (f"its host {self.label} is unreachable for {since:.1f} s (the link is "
                    f"down; given up after {dead_after:g} s without a word)")
        status = self.statuses.get(rank)
        if status:
            return f"{status} (on {self.label})"
        return f"its output up to the barrier has not reached the driver yet (on {self.label})"


def signal_name(sig: int) -> str:
    """``SIGTERM`` for 15."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


async def serve_connection(host: HostLink, io: LinkIO, heartbeat: float,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> str:
    """Serve one accepted connection of ``host`` until it breaks or is replaced; return why it
    ended.  Cancelled, it closes the connection."""
    reason = "closed"
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(io.run_writer)
            nursery.start_soon(io.run_heartbeats, heartbeat)
            task_status.started()
            try:
                while True:
                    events = await io.receive()
                    host.last_heard = io.last_heard
                    host.handle(events)
            except EOFError:
                reason = "the agent closed the connection"
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = f"the connection broke ({exc.__cause__ or exc})"
            except ProtocolError as exc:
                reason = f"protocol error: {exc}"
            nursery.cancel_scope.cancel()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:  # the writer's
        reason = f"the connection broke ({exc.__cause__ or exc})"
    finally:
        if host.io is io:
            host.io = None
            host.disconnected_at = trio.current_time()
        await io.aclose()
    return reason
