"""HostMesh: a run over many hosts, as one mesh for the view.  ``open_host_mesh`` starts it.

The driver listens on one TCP port (TLS 1.3); host agents dial in -- started by a launcher
(``_launchers``) or by anyone holding the join document -- and present the run's token.  Once
``nnodes`` hosts joined, each is told to start its ``procs_per_host`` ranks; from then on each
host's link carries all its ranks' ordered streams.  :class:`HostMesh` is a
:class:`~trio_logmesh.view._port.MeshPort`: ``LoggingMeshClient.spawn`` and
``open_logging_client`` take it unchanged, and a barrier is as exact across hosts as on one
(each rank's marker travels behind its data, on its host's one ordered link).

Failures get an answer, never a hang: a host not heard from for ``dead_after`` seconds (its
agent died, or the network parted) is given up: its ranks' streams end with a ``Lost`` frame,
a pending ``flush()`` raises :class:`~trio_logmesh.HostLost` at once, ``wait()`` too.  A link
that breaks and comes back within ``dead_after`` resumes where it stopped, each rank from the
last sequence number the driver received: nothing lost, nothing twice.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from .._errors import HostLost, LogmeshError, leaf_errors, surface
from .._levels import level_number
from ..host._launch import new_run_name
from ..host._link import LinkIO, tune_socket
from ..protocol._join import JoinInfo
from ..protocol._link import DRIVER, LINK_TOKEN_SIZE, LinkConnection, ProtocolError
from . import _launchers
from ._hostlink import Delivery, HostLink, serve_connection
from ._tls import ServerIdentity, load_identity, make_self_signed, server_context

_log = logging.getLogger("trio_logmesh")

#: Default seconds without a word from a host before it is given up (and, on the agent's
#: side, from the driver before the agent leaves).
DEAD_AFTER = 10.0
#: Seconds a new connection has for its TLS handshake and its JOIN.
HANDSHAKE_TIMEOUT = 10.0
#: A delivery to the view is about this big at most.
DELIVERY_BYTES = 1024 * 1024
#: After SIGKILL: seconds the hosts have to report their ranks' exits.
KILL_WAIT = 2.0
#: At teardown: seconds the views may take to flush.
FLUSH_AT_CLOSE = 2.0
#: Seconds agents have to say goodbye after END.
BYE_WAIT = 3.0


class HostView:
    """The view's handle on every rank of a :class:`HostMesh` (a
    :class:`~trio_logmesh.view._port.ViewLink`)."""

    def __init__(self, mesh: HostMesh) -> None:
        self._mesh = mesh
        self.replaced = trio.Event()
        self._scope = trio.CancelScope()

    def new_version(self) -> int:
        """A barrier version no other view of this mesh used."""
        return next(self._mesh._versions)

    def set_streaming(self, rank: int, on: bool) -> None:
        """Stream ``rank``'s lines to the view, or not (marks and the exit always come)."""
        if self.replaced.is_set():
            return
        host = self._mesh.host_of(rank)
        (host.streaming_off.discard if on else host.streaming_off.add)(rank)
        host.send(LinkConnection.streaming, rank, on)

    def force_sync_flush(self, rank: int, version: int) -> None:
        """Put ``Mark(version)`` in ``rank``'s stream behind every byte it wrote before now."""
        if self.replaced.is_set():
            return
        host = self._mesh.host_of(rank)
        # A rank whose exit arrived, or whose host was lost, answers with its stream's end,
        # which is on its way to the view.
        if host.lost is None and rank not in host.exit_received:
            host.pending_flush.setdefault(rank, set()).add(version)
            host.send(LinkConnection.flush, rank, version)

    def set_level(self, rank: int, level: int) -> None:
        """Set the root logging level of ``rank``'s Python process."""
        if self.replaced.is_set():
            return
        host = self._mesh.host_of(rank)
        host.levels[rank] = level
        host.send(LinkConnection.level, rank, level)

    def confirm(self, rank: int, seq: int) -> None:
        """The view handled ``rank``'s frames up to ``seq``: its host may forget them."""
        host = self._mesh.host_of(rank)
        if seq >= 2**62:
            return  # a frame the driver made
        if seq > host.confirmed.get(rank, 0):
            host.confirmed[rank] = seq
            host.send(LinkConnection.confirm, rank, seq)

    def describe(self, rank: int) -> str:
        """Why ``rank`` has not answered a barrier, as far as the driver can tell."""
        mesh = self._mesh
        return mesh.host_of(rank).describe(rank, trio.current_time(), mesh.dead_after)

    def origin(self, rank: int) -> tuple[str, int]:
        """``(host, pid)`` of ``rank``: the host as lines name it."""
        host = self._mesh.host_of(rank)
        i = rank - host.first_rank
        return host.label, host.pids[i] if i < len(host.pids) else 0

    def _replace(self) -> None:
        self.replaced.set()
        self._scope.cancel()


@attrs.define(eq=False)
class HostMesh:
    """A running mesh over ``nnodes`` hosts of ``procs_per_host`` ranks each (see
    :func:`open_host_mesh`).  Rank ``r`` runs on node ``r // procs_per_host``."""

    nnodes: int
    procs_per_host: int
    session: str
    dead_after: float
    hosts: list[HostLink] = attrs.field(factory=list)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _view: HostView | None = None
    _served: bool = False
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _turn: int = 0
    _grace: float = 5.0
    _closed: bool = False
    say: Callable[[str], None] = _log.warning

    @property
    def size(self) -> int:
        """The number of ranks, on every host."""
        return self.nnodes * self.procs_per_host

    def host_of(self, rank: int) -> HostLink:
        """The host ``rank`` runs on."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in a mesh of {self.size}")
        return self.hosts[rank // self.procs_per_host]

    @property
    def run_dirs(self) -> dict[str, str]:
        """Each host's run directory (on that host), by host name."""
        return {h.label: h.run_dir for h in self.hosts}

    @property
    def run_dir(self) -> str:
        """Where the files are: one directory when every host uses the same path (shared
        storage, or the same default), else ``host:dir`` for each."""
        dirs = set(self.run_dirs.values())
        if len(dirs) == 1:
            return f"{dirs.pop()} (on each host)" if self.nnodes > 1 else self.hosts[0].run_dir
        return ", ".join(f"{h}:{d}" for h, d in self.run_dirs.items())

    @property
    def pids(self) -> list[int]:
        """Process ids by rank (on their hosts)."""
        return [p for h in self.hosts for p in (h.pids + [0] * h.procs)[: h.procs]]

    @property
    def returncodes(self) -> list[int | None]:
        """Exit codes by rank (None while running, or when its host was lost first)."""
        return [c for h in self.hosts for c in h.returncodes]

    @property
    def lost_hosts(self) -> dict[str, str]:
        """The hosts given up on, and why."""
        return {h.label: h.lost for h in self.hosts if h.lost is not None}

    @property
    def incomplete_files(self) -> list[tuple[str, OSError, int]]:
        """Files that could not be written whole: reported by each host in its own notices;
        none are known here."""
        return []

    def log_files(self, rank: int) -> tuple[str, str]:
        """``host:path`` of ``rank``'s stdout and stderr files."""
        from ..host._launch import log_paths

        host = self.host_of(rank)
        out, err = log_paths(host.run_dir, rank, self.size)
        return f"{host.label}:{out}", f"{host.label}:{err}"

    def stderr_tail(self, rank: int, n: int = 3) -> list[str]:
        """The last lines of a failed rank's stderr file, as its host sent them."""
        return self.host_of(rank).tails.get(rank, "").splitlines()[-n:]

    def where(self, rank: int) -> str:
        """``host h1 (node 0, ranks 0-3)`` for ``rank``."""
        return self.host_of(rank).describe_ranks()

    def _lost_error(self, ranks: Sequence[int]) -> HostLost:
        hosts = {self.host_of(r).label: self.host_of(r).lost or "" for r in ranks}
        reasons = {r: f"its host {self.host_of(r).label} was lost" for r in ranks}
        return HostLost(hosts, sorted(ranks), 0, reasons)

    async def wait_rank(self, rank: int) -> int:
        """Wait for ``rank``'s process to exit; return its code.  Raises
        :class:`~trio_logmesh.HostLost` if its host is lost first."""
        host = self.host_of(rank)
        i = rank - host.first_rank
        while host.returncodes[i] is None:
            if host.lost is not None:
                raise self._lost_error([rank])
            await self._changed.wait()
        code = host.returncodes[i]
        assert code is not None
        return code

    async def wait(self) -> list[int]:
        """Wait for every rank to exit; return the exit codes by rank.  Raises
        :class:`~trio_logmesh.HostLost` (naming the hosts and their ranks) as soon as a host
        is lost with ranks whose exit never came."""
        while True:
            codes = self.returncodes
            missing = [r for r, c in enumerate(codes) if c is None and self.host_of(r).lost]
            if missing:
                raise self._lost_error(missing)
            if None not in codes:
                return codes  # type: ignore[return-value]
            await self._changed.wait()

    async def wait_survivors(self) -> list[int | None]:
        """Wait until every rank whose host was not lost exited; return the codes by rank
        (None for ranks of lost hosts)."""
        while any(c is None and h.lost is None for h in self.hosts for c in h.returncodes):
            await self._changed.wait()
        return self.returncodes

    def send_signal(self, sig: int, ranks: Sequence[int] | None = None) -> None:
        """Send ``sig`` to the ranks' process groups (all, or the given ranks), on their
        hosts.  Hosts not connected right now miss it."""
        by_host: dict[int, list[int]] = collections.defaultdict(list)
        for rank in range(self.size) if ranks is None else ranks:
            by_host[self.host_of(rank).node_rank].append(rank)
        for node, rs in by_host.items():
            host = self.hosts[node]
            host.send(LinkConnection.signal, sig, None if ranks is None else rs)

    async def stop(self, grace: float | None = None, sig: int = signal.SIGTERM
                   ) -> list[int | None]:
        """Stop every rank on every host: ``sig`` to the process groups, SIGKILL after
        ``grace`` seconds (default: the mesh's), and wait (about ``grace`` plus a few seconds
        at most) for the hosts to report the exits.  Returns the codes by rank; None for ranks
        of lost hosts.  A host that reconnects later is asked again."""
        grace = self._grace if grace is None else grace
        for host in self.hosts:
            if host.lost is None:
                host.stop_request = (sig, grace)
                host.send(LinkConnection.stop, sig, grace)
        with trio.move_on_after(grace + KILL_WAIT + 1.0):
            while any(c is None and h.lost is None for h in self.hosts for c in h.returncodes):
                await self._changed.wait()
        return self.returncodes

    # -- the view ---------------------------------------------------------------------------
    async def serve_view(
        self,
        inbox: trio.MemorySendChannel[Delivery],
        task_status: trio.TaskStatus[HostView] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Be served as the mesh's view: every rank's frames, from every host, go into
        ``inbox`` in order per rank, until this task is cancelled or a newer view replaces it.
        A newer view gets every rank again from its first unconfirmed frame.  Raises
        :class:`~trio_logmesh.LogmeshError` when the mesh is closed."""
        if self._closed:
            raise LogmeshError("the mesh is closed")
        old = self._view
        if old is not None:
            old._replace()
        view = self._view = HostView(self)
        if self._served:
            for host in self.hosts:
                host.start_stream(resume=False)
                if host.lost is not None:
                    host.append_ends()
        self._served = True
        task_status.started(view)
        try:
            with view._scope:
                while True:
                    if not any(h.buffer for h in self.hosts):
                        self._wake = trio.Event()
                        await self._wake.wait()
                    if view.replaced.is_set():
                        return
                    delivery, taken = self._collect()
                    try:
                        await inbox.send(delivery)
                    finally:  # taken either way: a view that gets them no more gets all again
                        for host, nbytes in taken:
                            host.taken(nbytes)
        finally:
            if self._view is view:
                self._view = None

    def _collect(self) -> tuple[Delivery, list[tuple[HostLink, int]]]:
        # Hosts take turns, one received chunk each, so one busy host cannot starve the others.
        delivery: Delivery = []
        taken: list[tuple[HostLink, int]] = []
        size = 0
        n = len(self.hosts)
        while size < DELIVERY_BYTES:
            progressed = False
            for i in range(n):
                host = self.hosts[(self._turn + i) % n]
                if host.buffer and size < DELIVERY_BYTES:
                    part, nbytes = host.buffer.popleft()
                    delivery.extend(part)
                    taken.append((host, nbytes))
                    size += nbytes + 64
                    progressed = True
            self._turn = (self._turn + 1) % n
            if not progressed:
                break
        return delivery, taken

    def _wake_view(self) -> None:
        self._wake.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- hosts --------------------------------------------------------------------------------
    def _labels(self) -> None:
        names = collections.Counter(h.hostname for h in self.hosts)
        for h in self.hosts:
            h.label = h.hostname if names[h.hostname] == 1 else f"{h.hostname}/{h.node_rank}"

    async def _monitor(self) -> None:
        """Give up on hosts not heard from for ``dead_after`` seconds."""
        tick = min(0.25, self.dead_after / 10)
        while True:
            await trio.sleep(tick)
            now = trio.current_time()
            for host in self.hosts:
                if not host.joined or host.lost is not None or host.complete:
                    continue
                if host.bye is not None and not host.connected:
                    await self._give_up(host, f"its agent left ({host.bye or 'no reason given'})")
                elif now - host.last_heard > self.dead_after:
                    how = (f"; its link closed {now - host.disconnected_at:.1f} s ago"
                           if host.disconnected_at is not None and not host.connected else "")
                    await self._give_up(host, f"no word from its agent for {self.dead_after:g} s"
                                        f"{how}")

    async def _give_up(self, host: HostLink, reason: str) -> None:
        host.give_up(reason)  # the view says so, behind what the host delivered
        io = host.io
        if io is not None:  # an agent that comes back finds the door shut
            host.io = None
            await io.aclose()

    async def _accept(self, stream: trio.SocketStream, token: bytes,
                      ctx: object, accept_info: dict) -> None:
        """One incoming connection: TLS, the token, then serve it as its host's link."""
        peer = "?"
        with contextlib.suppress(OSError):
            peer = stream.socket.getpeername()[0]
        tune_socket(stream.socket, self.dead_after)  # type: ignore[arg-type]
        tls = trio.SSLStream(stream, ctx, server_side=True)  # type: ignore[arg-type]
        io = LinkIO(tls, LinkConnection(DRIVER, token))
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
                events = await io.receive()
        except ProtocolError as exc:
            self.say(f"refused an agent from {peer}: {exc}")
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                with trio.move_on_after(1.0):
                    await tls.send_all(LinkConnection(DRIVER, token).refuse(str(exc)))
            await io.aclose()
            return
        except (trio.BrokenResourceError, trio.TooSlowError, EOFError, OSError) as exc:
            cause = exc.__cause__ or exc
            self.say(f"a connection from {peer} failed before joining (another run's join "
                     f"document, or not an agent?): {cause or 'timeout'}")
            await io.aclose()
            return
        _, node, info = events[0]
        refusal = self._check_join(node, info, peer)
        if refusal is not None:
            self.say(f"refused an agent from {peer}: {refusal}")
            with trio.move_on_after(1.0):
                with contextlib.suppress(trio.BrokenResourceError):
                    await tls.send_all(io.conn.refuse(refusal))
            await io.aclose()
            return
        host = self.hosts[node]
        old = host.io
        resumed = host.joined
        host.io = io
        host.last_heard = io.last_heard
        host.disconnected_at = None
        if old is not None:
            await old.aclose()
        if not resumed:
            host.joined = True
            host.hostname = str(info.get("hostname") or peer)
            host.label = host.hostname
            host.address = str(info.get("address") or peer)
            host.join_info = info
            self._notify()
        io.send(io.conn.accept(accept_info))
        host.grant_credit()
        if resumed:
            self.say(f"{host.describe_ranks()} reconnected")
            if host.spec is not None:
                io.send(io.conn.start(host.spec))
            host.start_stream(resume=True)
        for event in events[1:]:
            host.handle([event])
        await serve_connection(host, io, self.dead_after / 4)

    def _check_join(self, node: int, info: dict, peer: str) -> str | None:
        if not 0 <= node < self.nnodes:
            return f"node rank {node} is not below nnodes {self.nnodes}"
        host = self.hosts[node]
        if host.lost is not None:
            return (f"node {node} was given up on ({host.lost}); the run goes on without it")
        if host.joined and not info.get("resume"):
            return f"node {node} already joined (from {host.address})"
        if self._closed:
            return "the run is ending"
        return None


def _parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"rdzv endpoint must be HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _advertised(bind: str) -> str:
    if bind in ("0.0.0.0", "::", ""):
        return socket.getfqdn() or socket.gethostname()
    return bind


def write_join_file(path: str | os.PathLike[str], join: JoinInfo) -> None:
    """Write ``join`` to ``path`` with mode 0600, atomically (never readable by others, not
    even for a moment; a reader never sees half of it)."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(join.dumps() + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@asynccontextmanager
async def open_host_mesh(
    cmd: Sequence[str | os.PathLike[str]],
    nnodes: int | None = None,
    procs_per_host: int = 1,
    *,
    launcher: str = "none",
    hosts: Sequence[str] = (),
    rdzv_endpoint: str = "0.0.0.0:0",
    join_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str | None] | None = None,
    log_root: str | os.PathLike[str] | None = None,
    dead_after: float = DEAD_AFTER,
    join_timeout: float | None = None,
    cert: str | None = None,
    key: str | None = None,
    ca: str | None = None,
    server_name: str = "",
    agent_cmd: Sequence[str] | None = None,
    grace: float = 5.0,
    log_level: int | str | None = None,
    on_listening: Callable[[JoinInfo], None] | None = None,
    say: Callable[[str], None] | None = None,
    **rank_options: object,
) -> AsyncIterator[HostMesh]:
    """Run ``cmd`` as ``procs_per_host`` ranks on each of ``nnodes`` hosts; yield the mesh
    once every rank runs.

    Each host runs a host agent (``logmesh agent``), started by ``launcher``: ``"none"``
    (someone else starts them with the join document), ``"local"`` (on this machine, on
    loopback addresses), ``"ssh"`` (one per entry of ``hosts``) or ``"slurm"`` (``srun``
    inside an allocation; ``nnodes`` defaults to ``SLURM_NNODES``).  The agents dial the
    driver at ``rdzv_endpoint`` (``HOST:PORT``; port 0 picks a free one) over TLS 1.3 and
    present the run's token.  ``join_file`` is where the join document (address, token,
    certificate) is written, mode 0600, once the driver listens; ``on_listening(join)`` is
    called then too.  The driver's certificate is made for the run and pinned by the agents,
    unless ``cert`` and ``key`` (PEM files) are given -- with ``ca``, agents check the
    certificate against that CA and ``server_name`` (default: the endpoint's host).

    Rank ``r`` runs on node ``r // procs_per_host`` with torchrun's variables (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``NODE_RANK``/``GROUP_RANK``, node 0's ``MASTER_ADDR`` and
    a free ``MASTER_PORT`` there, unless ``env`` or this process's environment sets them).
    ``env`` applies on every host.  Files stay on each host under ``log_root`` (default:
    that host's ``$LOGMESH_LOG_DIR`` or ``/tmp/logmesh-<uid>``), in a run directory named by
    the run's session; point ``log_root`` at shared storage to have them all in one place.
    Other keyword arguments (``drop_policy``, ``buffer_bytes``, ``partial_idle``,
    ``flush_interval``, ``max_line``, ``progress_interval``, ``drain_timeout``, ``python``,
    ``keep_runs``) are :func:`~trio_logmesh.open_proc_mesh`'s, on each host.

    A host not heard from for ``dead_after`` seconds is given up on (see
    :class:`HostMesh`).  ``join_timeout`` bounds the wait for the agents (None: wait; a
    launcher's process that ends before its agent joined ends the wait with an error).
    Leaving the block flushes, stops the ranks (SIGTERM, SIGKILL after ``grace``), tells the
    agents to leave and waits for the launcher's processes.  ``say(line)`` gets the driver's
    notices (default: warnings on the ``trio_logmesh`` logger).

    Raises ``ValueError`` for bad arguments, :class:`~trio_logmesh.LogmeshError` when the
    agents do not all join or a host cannot start its ranks (the message names the host),
    ``OSError`` when the endpoint cannot be listened on.
    """
    argv = [os.fspath(c) for c in cmd]
    if not argv:
        raise ValueError("cmd must name a program")
    if launcher not in _launchers.LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(_launchers.LAUNCHERS)}, "
                         f"not {launcher!r}")
    if nnodes is None:
        nnodes = (_launchers.slurm_nnodes() if launcher == "slurm" else None) or (
            len(hosts) if launcher == "ssh" and hosts else None)
        if nnodes is None:
            raise ValueError("nnodes is needed (SLURM_NNODES is not set)" if launcher == "slurm"
                             else "nnodes is needed")
    for name, value in (("nnodes", nnodes), ("procs_per_host", procs_per_host)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    if not (isinstance(dead_after, (int, float)) and dead_after > 0):
        raise ValueError(f"dead_after must be a positive number of seconds, not {dead_after!r}")
    if (cert is None) != (key is None):
        raise ValueError("cert and key go together")
    bind, port = _parse_endpoint(rdzv_endpoint)
    advertised = _advertised(bind)
    level = None if log_level is None else level_number(log_level)
    say = say or _log.warning
    if cert is not None and key is not None:
        identity = load_identity(cert, key, ca, server_name or advertised)
    else:
        identity = make_self_signed([advertised, socket.gethostname(), "localhost",
                                     "127.0.0.1"])
    ctx = server_context(identity)
    token = secrets.token_bytes(LINK_TOKEN_SIZE)
    session = new_run_name()
    listeners = await trio.open_tcp_listeners(port, host=bind)
    port = listeners[0].socket.getsockname()[1]
    join = _join_info(identity, advertised, port, token, nnodes, session)
    mesh = HostMesh(nnodes, procs_per_host, session, float(dead_after), grace=grace, say=say)
    mesh.hosts = [HostLink(i, procs_per_host, mesh._wake_view, mesh._notify)
                  for i in range(nnodes)]
    try:
        plans = _launchers.plan_launch(launcher, nnodes, join, hosts=hosts,
                                       agent_cmd=agent_cmd)
    except BaseException:
        for listener in listeners:
            await listener.aclose()
        raise
    accept_info = {"session": session, "nnodes": nnodes, "dead_after": float(dead_after)}
    spec = {
        "cmd": argv, "procs": procs_per_host,
        "env": {k: v for k, v in (env or {}).items()},
        "log_root": os.fspath(log_root) if log_root is not None else None,
        "options": {**rank_options, "grace": grace, "log_level": level},
    }
    made_join_file = False
    launched: list[_launchers.Launched] = []
    body_error: BaseException | None = None
    errors: list[BaseException] = []
    try:
        async with trio.open_nursery() as nursery:
            try:
                async def serve(stream: trio.SocketStream) -> None:
                    try:
                        await mesh._accept(stream, token, ctx, accept_info)
                    except Exception as exc:  # one connection's trouble is not the run's
                        say(f"a host link failed: {exc!r}")
                        await trio.aclose_forcefully(stream)

                nursery.start_soon(trio.serve_listeners, serve, listeners)
                nursery.start_soon(mesh._monitor)
                if join_file is not None:
                    write_join_file(join_file, join)
                    made_join_file = True
                if on_listening is not None:
                    on_listening(join)
                launched = _launchers.start_plans(plans, join)
                for one in launched:
                    nursery.start_soon(_launchers.run_launched, one, say)
                if launcher == "none" and on_listening is None:
                    say(f"waiting for {nnodes} agent(s) at {advertised}:{port}: on each host "
                        f"run 'logmesh agent --join FILE --node-rank I' with the join "
                        f"document" + (f" ({os.fspath(join_file)})" if join_file else ""))
                await _assemble(mesh, spec, launched, join_timeout, env)
                for host in mesh.hosts:
                    host.start_stream(resume=False)
                try:
                    yield mesh
                except BaseException as exc:
                    body_error = exc
                finally:
                    with trio.CancelScope(shield=True):
                        await _teardown(mesh, launched, grace)
            finally:
                mesh._closed = True
                nursery.cancel_scope.cancel()
    except BaseException as exc:
        errors = leaf_errors(exc)
        if not errors and body_error is None:
            raise
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await listener.aclose()
        if made_join_file and join_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(join_file)
    raise_this = surface(body_error, errors)
    if raise_this is not None:
        raise raise_this


def _join_info(identity: ServerIdentity, host: str, port: int, token: bytes, nnodes: int,
               session: str) -> JoinInfo:
    return JoinInfo(host=host, port=port, token=token, nnodes=nnodes, session=session,
                    cert=identity.cert if not identity.ca else "",
                    fingerprint=identity.fingerprint, ca=identity.ca,
                    server_name=identity.server_name)


class RanksNotStarted(LogmeshError):
    """A host could not start its ranks (``status``: 127 for a program not found, 126 for
    one that cannot run, else 1)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


async def _assemble(mesh: HostMesh, spec: dict, launched: list[_launchers.Launched],
                    join_timeout: float | None, env: Mapping[str, str | None] | None) -> None:
    """Wait for every host to join, start their ranks, wait until they run."""
    with trio.move_on_after(join_timeout if join_timeout is not None else math.inf) as scope:
        while not all(h.joined for h in mesh.hosts):
            _check_launchers(mesh, launched)
            with trio.move_on_after(0.2):
                await mesh._changed.wait()
    if scope.cancelled_caught:
        waiting = [h.node_rank for h in mesh.hosts if not h.joined]
        raise LogmeshError(f"{len(waiting)} of {mesh.nnodes} agent(s) did not join within "
                           f"{join_timeout:g} s (node(s) {', '.join(map(str, waiting))})")
    mesh._labels()
    info0 = mesh.hosts[0].join_info
    master_addr = ((env or {}).get("MASTER_ADDR") or os.environ.get("MASTER_ADDR")
                   or str(info0.get("address") or mesh.hosts[0].address))
    master_port = ((env or {}).get("MASTER_PORT") or os.environ.get("MASTER_PORT")
                   or info0.get("master_port") or 29500)
    full = {**spec, "master_addr": master_addr, "master_port": int(master_port)}
    for host in mesh.hosts:
        host.spec = full
        host.send(LinkConnection.start, full)
    while not all(h.started or h.lost for h in mesh.hosts):
        _check_launchers(mesh, launched)
        with trio.move_on_after(0.2):
            await mesh._changed.wait()
    for h in mesh.hosts:
        if h.start_error is not None:
            raise RanksNotStarted(f"{h.describe_ranks()} could not start its ranks: "
                                  f"{h.start_error.get('error')}",
                                  int(h.start_error.get("status", 1)))
    lost = [h for h in mesh.hosts if h.lost]
    if lost:
        raise HostLost({h.label: h.lost or "" for h in lost},
                       [r for h in lost for r in h.ranks])


def _check_launchers(mesh: HostMesh, launched: list[_launchers.Launched]) -> None:
    for one in launched:
        if one.exited.is_set():
            waiting = [n for n in one.plan.nodes if not mesh.hosts[n].joined]
            if waiting:
                last = "; ".join(one.last_lines[-3:])
                raise LogmeshError(
                    f"{one.plan.name} exited with status {one.returncode} before node(s) "
                    f"{', '.join(map(str, waiting))} joined" + (f": {last}" if last else ""))


async def _teardown(mesh: HostMesh, launched: list[_launchers.Launched], grace: float) -> None:
    """Stop what runs, let the view get the last frames, tell the agents to leave, and wait
    for the launchers' processes; about ``grace`` plus a few seconds at most."""
    if any(c is None for h in mesh.hosts if h.lost is None for c in h.returncodes):
        await mesh.stop(grace)
    with trio.move_on_after(KILL_WAIT):  # the last frames to whatever view is attached
        while mesh._view is not None and any(h.buffer for h in mesh.hosts):
            await trio.sleep(0.01)
        while any(len(h.exit_received) < h.procs and h.lost is None and h.connected
                  for h in mesh.hosts):
            await trio.sleep(0.02)
    for host in mesh.hosts:
        host.send(LinkConnection.end)
    with trio.move_on_after(BYE_WAIT):
        while any(h.connected and h.bye is None for h in mesh.hosts):
            await trio.sleep(0.02)
    for host in mesh.hosts:
        if host.io is not None:
            await host.io.aclose()
    await _launchers.stop_launched(launched, 1.0)


__all__ = ["HostMesh", "HostView", "RanksNotStarted", "open_host_mesh", "write_join_file"]
