"""BootstrapProcManager: ``open_proc_mesh`` starts a mesh of children on this host.

The ``async with`` owns a nursery with, per rank, the RankProc task (its process and its two
StreamFwders), and for the mesh the agent listener on ``BOOTSTRAP_LOG_CHANNEL``.  A view (the
driver's client) serves itself from the mesh with :meth:`ProcMesh.serve_view`.  Leaving the
block flushes the clients made by :meth:`ProcMesh.logging_option` and the files, stops the
children still running (SIGTERM, then SIGKILL after ``grace`` seconds, which also ends a
SIGSTOPped child) and removes the private socket directory.  The body's exception always
surfaces; errors of the teardown are attached to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio

from .._errors import LogmeshError, leaf_errors, surface
from .._levels import level_number
from ..protocol import _wire as w
from . import _agents
from ._forwarder import Delivery, Forwarders, LogForwardActor, ViewLink
from ._launch import (
    World,
    child_env,
    compile_child_modules,
    free_port,
    log_paths,
    make_run_dir,
    make_socket_dir,
    tail_lines,
    use_run_dir,
)
from ._lines import MAX_LINE, PROGRESS_INTERVAL, LineSplitter
from ._outbox import Policy, RankOutbox
from ._process import RankProcess, start_rank
from ._rank import RankProc
from ._stdin import forward_stdin
from ._stream import FileAppender, ReadBuffer, StreamFwder
from ._watchdog import Watchdog

#: Seconds an exited child's pipes may stay open and silent (a descendant holds them) before
#: the host stops reading them.
DRAIN_TIMEOUT = 5.0
#: At teardown: seconds the clients and the files may take to flush, at most.
FLUSH_AT_CLOSE = 2.0
#: After SIGKILL: seconds to reap the ranks, and then to deliver their last output, at most.
KILL_WAIT = 2.0
#: Run directories kept under the log root by default (the newest ones).
KEEP_RUNS = 20
#: File descriptors a rank holds in this process (its pipes' read ends, its two files, its
#: agent's socket, a pidfd, maybe its stdin), and what the process needs besides.
FDS_PER_RANK = 7
FDS_BASE = 64


def ensure_fd_room(procs: int) -> int | None:
    """Raise the soft open-file limit toward the hard one if ``procs`` ranks need it; return
    the soft limit the ranks should get back (None when unchanged).

    Raises :class:`~trio_logmesh.LogmeshError` saying how many ranks fit when even the hard
    limit is too low.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = procs * FDS_PER_RANK + FDS_BASE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(hard, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < need:
            fit = max(0, (target - FDS_BASE) // FDS_PER_RANK)
            raise LogmeshError(
                f"{procs} ranks need about {need} open files, and the limit is {target} "
                f"(ulimit -n; hard limit {hard}): at most {fit} ranks fit"
            )
        return soft
    return None


class OwnedView(Protocol):
    """What the mesh needs of a client it owns (one made by :meth:`ProcMesh.logging_option`)."""

    def set_mode(
        self, stream_to_client: bool, aggregate_window_sec: float | None,
        level: int | str | None, *, fold: Any = ...,
    ) -> None: ...

    async def flush(self, timeout: float | None = None) -> None: ...

    async def wait_finished(self) -> None: ...


#: Makes the client of :meth:`ProcMesh.logging_option`; registered by ``trio_logmesh.view``, so
#: the host never imports the view.
ViewFactory = Callable[..., Awaitable[OwnedView]]
_view_factory: ViewFactory | None = None


def register_view_factory(factory: ViewFactory) -> None:
    """Set the factory :meth:`ProcMesh.logging_option` uses (the view does this on import)."""
    global _view_factory
    _view_factory = factory


@attrs.define(eq=False)
class ProcMesh:
    """A running mesh of ``size`` processes on this host (see :func:`open_proc_mesh`)."""

    size: int
    run_dir: str
    hostname: str
    _ranks: list[RankProc] = attrs.field(factory=list)
    _forwarders: Forwarders | None = None
    _nursery: trio.Nursery | None = None
    _views: list[OwnedView] = attrs.field(factory=list)
    _grace: float = 5.0
    #: Where this host's ranks stand in a run over many hosts (the default: one host).
    world: World = World()

    def log_files(self, rank: int) -> tuple[str, str]:
        """The paths of ``rank``'s stdout and stderr files (named by the global rank)."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in a mesh of {self.size}")
        return log_paths(self.run_dir, self.world.node_rank * self.size + rank,
                         self.world.nnodes * self.size)

    def stderr_tail(self, rank: int, n: int = 3) -> list[str]:
        """The last ``n`` non-blank lines of ``rank``'s stderr file, for a summary."""
        return tail_lines(self.log_files(rank)[1], n)

    @property
    def pids(self) -> list[int]:
        """The process ids, by rank."""
        return [rp.process.pid for rp in self._ranks]

    @property
    def returncodes(self) -> list[int | None]:
        """Exit codes by rank (None while running; negative: killed by that signal)."""
        return [rp.returncode.value for rp in self._ranks]

    @property
    def incomplete_files(self) -> list[tuple[str, OSError, int]]:
        """Per-rank files that could not be written whole: ``(path, error, bytes kept)``."""
        return [(a.path, a.error, a.written) for rp in self._ranks for a in rp.appenders
                if a.error is not None]

    async def wait_rank(self, rank: int) -> int:
        """Wait for ``rank``'s process to exit; return its code."""
        if not 0 <= rank < self.size:
            raise ValueError(f"rank {rank} is not in a mesh of {self.size}")
        code = await self._ranks[rank].returncode.wait_value(lambda v: v is not None)
        assert code is not None
        return code

    async def wait_output_ended(self, rank: int) -> None:
        """Wait until ``rank``'s output has ended: its pipes reached EOF (or were given up)
        and its ``Exit`` is in its stream; its files are complete then."""
        await self._ranks[rank].drained.wait()

    async def wait(self) -> list[int]:
        """Wait for every child to exit; return the exit codes by rank."""
        codes = []
        for rp in self._ranks:
            code = await rp.returncode.wait_value(lambda v: v is not None)
            assert code is not None
            codes.append(code)
        return codes

    def send_signal(self, sig: int, ranks: Sequence[int] | None = None) -> None:
        """Send ``sig`` to the ranks' process groups (all, or the given ranks): each rank and
        its descendants.  A group whose processes have all ended is skipped."""
        for rp in self._ranks if ranks is None else [self._ranks[r] for r in ranks]:
            rp.process.signal_group(sig)

    async def serve_view(
        self,
        inbox: trio.MemorySendChannel[Delivery],
        task_status: trio.TaskStatus[ViewLink] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Be served as the mesh's view: every rank's frames go into ``inbox``, in order per
        rank, until this task is cancelled or a newer view replaces it (``link.replaced``).

        Use with ``link = await nursery.start(mesh.serve_view, inbox)``.  Raises
        :class:`~trio_logmesh.LogmeshError` when the mesh is closed.
        """
        if self._forwarders is None:
            raise LogmeshError("the mesh is closed")
        await self._forwarders.serve_view(inbox, task_status=task_status)

    async def logging_option(
        self,
        stream_to_client: bool = True,
        aggregate_window_sec: float | None = None,
        level: int | str | None = logging.INFO,
        *,
        sink: object = None,
        fold: str = "ranks",
    ) -> Any:
        """One-line form: a :class:`~trio_logmesh.LoggingMeshClient` owned by this mesh.

        The client lives until the mesh's ``async with`` ends, which flushes it first.  A
        second call changes that client's mode (a mesh has one live view).  The arguments
        are :meth:`LoggingMeshClient.set_mode`'s.  Raises ``ValueError`` for a window without
        streaming or an unknown ``fold`` (before spawning anything).
        """
        if self._nursery is None or _view_factory is None:
            raise LogmeshError("the mesh is closed")
        for view in self._views:  # one live view per mesh: a second call changes its mode
            if sink is not None:
                raise LogmeshError("this mesh already has a client; its sink cannot change")
            view.set_mode(stream_to_client, aggregate_window_sec, level, fold=fold)
            return view
        view = await _view_factory(
            self._nursery, self, sink=sink, stream_to_client=stream_to_client,
            aggregate_window_sec=aggregate_window_sec, level=level, fold=fold,
        )
        self._views.append(view)
        return view

    async def _flush_files(self, timeout: float) -> None:
        """Host barrier on every rank: what the children printed so far reaches the files."""
        waiting = [rp for rp in self._ranks if not rp.drained.is_set()]
        done = trio.Event()
        remaining = len(waiting)

        def one_done() -> None:
            nonlocal remaining
            remaining -= 1
            if remaining == 0:
                done.set()

        for rp in waiting:
            rp.barrier(one_done)
        with trio.move_on_after(timeout):
            if waiting:
                await done.wait()

    async def stop(self, grace: float | None = None, sig: int = signal.SIGTERM) -> list[int]:
        """Stop every rank and its descendants: ``sig`` to each process group (and SIGCONT,
        so a stopped rank sees it), SIGKILL to the groups after ``grace`` seconds (default:
        the mesh's), and reap.  Returns the exit codes by rank; ranks that had ended keep
        theirs.  Safe to call more than once."""
        grace = self._grace if grace is None else grace
        if not self._ranks:
            return []
        for rp in self._ranks:
            rp.process.signal_group(sig)
            rp.process.signal_group(signal.SIGCONT)
        with trio.move_on_after(grace):
            async with trio.open_nursery() as nursery:
                for rp in self._ranks:
                    nursery.start_soon(rp.reap)
        # Descendants of ranks that ended by themselves are in their groups too: no process
        # of the run outlives it.
        for rp in self._ranks:
            rp.process.signal_group(signal.SIGKILL)
        with trio.move_on_after(KILL_WAIT):  # SIGKILL is not refused; this bounds a D state
            async with trio.open_nursery() as nursery:
                for rp in self._ranks:
                    nursery.start_soon(rp.reap)
        return [rp.returncode.value if rp.returncode.value is not None else -signal.SIGKILL
                for rp in self._ranks]


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number, not {value!r}")


@asynccontextmanager
async def open_proc_mesh(
    cmd: Sequence[str | os.PathLike[str]],
    procs: int = 1,
    *,
    env: Mapping[str, str | None] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    log_root: str | os.PathLike[str] | None = None,
    keep_runs: int = KEEP_RUNS,
    stdin: int | None = None,
    python: bool | None = None,
    mirror: bool = False,
    drop_policy: Policy = "drop",
    buffer_bytes: int = 4 * 1024 * 1024,
    partial_idle: float = 0.2,
    flush_interval: float = 0.02,
    grace: float = 5.0,
    announce: bool = True,
    log_level: int | str | None = None,
    max_line: int = MAX_LINE,
    progress_interval: float = PROGRESS_INTERVAL,
    drain_timeout: float = DRAIN_TIMEOUT,
    world: World | None = None,
) -> AsyncIterator[ProcMesh]:
    """Start ``procs`` copies of ``cmd`` on this host and capture their output.

    Each child gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and
    ``BOOTSTRAP_LOG_CHANNEL`` in its environment (``env`` adds to the driver's environment; a
    value of ``None`` removes a variable).  The first Python process each rank starts -- whatever
    the command line: ``python``, a shebang script, ``env python3``, a shell script -- runs
    logmesh's agent, which flushes its buffers for exact barriers and sets its logging level; it
    carries no log bytes.  ``python=False`` keeps the agent out of every rank.  Each child
    also gets torchrun's variables for a one-node job (``MASTER_ADDR`` 127.0.0.1 and a free
    ``MASTER_PORT`` unless set), so ``torch.distributed``'s ``env://`` works.  Its own process
    group holds it and its descendants; it is killed if this process dies.

    Every byte goes to ``<run_dir>/rank-N.stdout.log`` / ``.stderr.log``: ``run_dir`` is
    ``log_dir`` itself when given (existing files are appended to), else a new directory named
    by the time under ``log_root`` (default ``$LOGMESH_LOG_DIR``, else ``/tmp/logmesh-<uid>``,
    private to the user), where only the newest ``keep_runs`` run directories are kept (0: all)
    and ``latest`` points at the newest.  It is printed once on stderr when ``announce``.
    ``stdin=N`` forwards this process's stdin to rank N (the others, and every rank by
    default, read ``/dev/null``).  ``mirror`` copies the children's bytes to this process's own
    stdout and stderr (for a host that is not the driver; off by default, so nothing prints
    twice).

    ``drop_policy``: when the live view falls behind by more than ``buffer_bytes`` for a rank,
    ``"drop"`` drops the oldest lines of the live view (counted and reported; the files keep
    everything), ``"block"`` stops reading that child's pipes until the view catches up.

    Limits: a line longer than ``max_line`` bytes is cut in the live view; a line without its
    newline yet is shown after ``partial_idle`` seconds without more bytes; a ``\\r``-redrawn
    line (a progress bar) shows its latest state at most every ``progress_interval`` seconds;
    Python children flush ``sys.stdout``/``sys.stderr`` every ``flush_interval`` seconds (0:
    never, only for barriers); an exited child's pipes held open and silent by a descendant are
    given up after ``drain_timeout`` seconds.  ``log_level`` is the root Python logging level
    the Python children start with.

    ``world`` places these ranks on one host of a run over many (a host agent passes it): the
    ranks get global ``RANK``/``WORLD_SIZE``, ``NODE_RANK``/``GROUP_RANK`` and node 0's
    ``MASTER_ADDR``/``MASTER_PORT``; files are named by global rank; a new run directory is
    named after ``world.run_id``, the same on every host.

    Leaving the block flushes clients made by :meth:`ProcMesh.logging_option` and the files,
    then stops the children still running: SIGTERM, then SIGKILL after ``grace`` seconds.

    Raises ``ValueError`` for bad arguments, :class:`~trio_logmesh.LogmeshError` when the
    open-file limit leaves no room for ``procs`` ranks, and ``OSError`` if a file cannot be
    opened or a child cannot be started (its ``filename`` says which; no child, file or run
    directory is left behind then).
    """
    cmd = [os.fspath(c) for c in cmd]
    if not cmd:
        raise ValueError("cmd must name a program")
    if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
        raise ValueError(f"procs must be a positive integer, not {procs!r}")
    if drop_policy not in ("drop", "block"):
        raise ValueError(f"drop_policy must be 'drop' or 'block', not {drop_policy!r}")
    if buffer_bytes < 64 * 1024:
        raise ValueError("buffer_bytes must be at least 64 KiB")
    if isinstance(max_line, bool) or not isinstance(max_line, int) or max_line < 80:
        raise ValueError(f"max_line must be an integer of at least 80 bytes, not {max_line!r}")
    _check_positive(partial_idle=partial_idle, grace=grace, progress_interval=progress_interval,
                    drain_timeout=drain_timeout)
    if not (isinstance(flush_interval, (int, float)) and flush_interval >= 0):
        raise ValueError(f"flush_interval must be >= 0 seconds, not {flush_interval!r}")
    if isinstance(keep_runs, bool) or not isinstance(keep_runs, int) or keep_runs < 0:
        raise ValueError(f"keep_runs must be an integer >= 0, not {keep_runs!r}")
    if stdin is not None and (isinstance(stdin, bool) or not isinstance(stdin, int)
                              or not 0 <= stdin < procs):
        raise ValueError(f"stdin must be a rank below {procs} or None, not {stdin!r}")
    rlimit = ensure_fd_room(procs)
    level = None
    if log_level is not None:
        level = level_number(log_level)
    agent = python is not False
    if agent:
        compile_child_modules()
    world = world if world is not None else World()
    token = secrets.token_bytes(w.TOKEN_SIZE)
    made_dir = log_dir is None or not os.path.isdir(log_dir)
    run_dir = (make_run_dir(log_root, keep_runs, world.run_id) if log_dir is None
               else use_run_dir(log_dir))
    master_port = world.master_port or free_port()
    sock_dir = make_socket_dir()  # 0700: only this user may connect
    channel = os.path.join(sock_dir, "agents.sock")
    mesh = ProcMesh(procs, run_dir, socket.gethostname(), grace=grace, world=world)
    processes: list[RankProcess] = []
    appenders: list[tuple[FileAppender, FileAppender]] = []
    lsock = None
    watchdog: Watchdog | None = None
    try:
        # Everything that can fail on bad input (the files, the program) fails here, as a
        # plain exception, before any task runs.
        lsock = _agents.listen(channel, backlog=max(128, procs))
        watchdog = await Watchdog.start()
        for rank in range(procs):
            paths = mesh.log_files(rank)
            out = FileAppender(paths[0])
            try:
                appenders.append((out, FileAppender(paths[1])))
            except BaseException:
                out.close()
                raise
            child = child_env(env, rank=rank, size=procs, channel=channel, run_dir=run_dir,
                              agent=agent, token=token, flush_interval=flush_interval,
                              level=level, master_port=master_port, world=world)
            processes.append(start_rank(cmd, child, stdin=rank == stdin, nofile=rlimit))
            watchdog.watch(processes[-1].pid)  # its process group
    except BaseException:
        for p in processes:
            p.signal_group(signal.SIGKILL)
        with trio.CancelScope(shield=True):
            for p in processes:
                await p.wait()
                p.close_pipes()
            if watchdog is not None:
                await watchdog.close()
        for pair in appenders:
            for a in pair:
                a.close()
                if not a.written:  # nothing of this run in it: no trace of a run that never ran
                    with contextlib.suppress(OSError):
                        os.unlink(a.path)
        if made_dir:
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)  # only if it is empty
        if lsock is not None:
            lsock.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        raise
    if announce:
        sys.stderr.write(f"logmesh: {procs} rank(s), logs in {run_dir}\n")
        sys.stderr.flush()
    mirrors = (sys.stdout.buffer, sys.stderr.buffer) if mirror else (None, None)
    actors: list[LogForwardActor] = []
    read_buffer = ReadBuffer()
    for rank, process in enumerate(processes):
        outbox = RankOutbox(limit_bytes=buffer_bytes, policy=drop_policy)
        assert process.stdout is not None and process.stderr is not None
        fwds = tuple(
            StreamFwder(i, fd, outbox, appenders[rank][i], mirrors[i],  # type: ignore[arg-type]
                        partial_idle, splitter=LineSplitter(max_line, progress_interval),
                        read_buffer=read_buffer)
            for i, fd in enumerate((process.stdout, process.stderr))
        )
        fwds[0].sibling, fwds[1].sibling = fwds[1], fwds[0]
        mesh._ranks.append(RankProc(rank, process, outbox, fwds, appenders[rank],  # type: ignore[arg-type]
                                    level=level))
        actors.append(LogForwardActor(rank, outbox))
    forwarders = mesh._forwarders = Forwarders(mesh._ranks, actors, mesh.hostname)
    for rank, rp in enumerate(mesh._ranks):
        rp.outbox.on_ready = lambda rank=rank: forwarders.on_ready(rank)  # type: ignore[misc]

    def on_agent(link: _agents.AgentLink) -> Callable[[_agents.AgentLink, int], None] | None:
        if not 0 <= link.conn.rank < procs:
            return None
        return mesh._ranks[link.conn.rank].agent_connected(link)

    def on_lost(link: _agents.AgentLink) -> None:
        mesh._ranks[link.conn.rank].agent_lost(link)

    body_error: BaseException | None = None
    errors: list[BaseException] = []
    try:
        # Two nurseries: the ranks' readers outlive the views (a view that fails must not
        # stop the reading of pipes -- a child writing its last words would die of SIGPIPE).
        async with trio.open_nursery() as ranks_nursery:
            try:
                await ranks_nursery.start(_agents.serve_agents, lsock, token, on_agent, on_lost)
                if stdin is not None:  # the forwarder owns it now, whenever the rank ends
                    fd, mesh._ranks[stdin].process.stdin = mesh._ranks[stdin].process.stdin, None
                    assert fd is not None
                    ranks_nursery.start_soon(forward_stdin, fd)
                for rp in mesh._ranks:
                    await ranks_nursery.start(rp.run, drain_timeout)
                async with trio.open_nursery() as views_nursery:
                    mesh._nursery = views_nursery
                    try:
                        yield mesh
                    except BaseException as exc:
                        body_error = exc
                    finally:
                        with trio.CancelScope(shield=True):
                            await _teardown(mesh, grace)
                        views_nursery.cancel_scope.cancel()
            finally:
                if not all(rp.exited.is_set() for rp in mesh._ranks):
                    with trio.CancelScope(shield=True):  # the teardown did not run
                        await mesh.stop(grace)
                ranks_nursery.cancel_scope.cancel()
    except BaseException as exc:  # our tasks' failures (a user's sink, typically)
        errors = leaf_errors(exc)
        if not errors and body_error is None:
            raise
    finally:
        for rp in mesh._ranks:  # their tasks are over: end every stream still open
            rp.finish()
        await watchdog.close()  # type: ignore[union-attr]  # every group was stopped
        mesh._nursery = None
        mesh._forwarders = None
        shutil.rmtree(sock_dir, ignore_errors=True)
    for rp in mesh._ranks:
        for error in rp.file_errors:
            errors.append(LogmeshError(f"closing a log file of rank {rp.rank} failed: {error}"))
    raise_this = surface(body_error, errors)
    if raise_this is not None:
        raise raise_this


async def _teardown(mesh: ProcMesh, grace: float) -> None:
    """Flush what the children printed (at most FLUSH_AT_CLOSE), stop them (``grace``, then
    SIGKILL), then deliver their last output (at most KILL_WAIT): about ``grace`` in all."""
    with trio.move_on_after(min(grace, FLUSH_AT_CLOSE)):
        for view in mesh._views:
            try:
                await view.flush(timeout=min(grace, FLUSH_AT_CLOSE))
            except LogmeshError:  # timed out, or the client was closed already
                pass
        await mesh._flush_files(timeout=min(grace, FLUSH_AT_CLOSE))
    for rp in mesh._ranks:
        rp.outbox.set_policy("drop")  # from here on nothing may hold the pipes back
    await mesh.stop(grace)
    for rp in mesh._ranks:
        if rp.task_ended:  # its reader was cancelled (a failure): take what is left now
            rp.finish()
    with trio.move_on_after(KILL_WAIT):
        for rp in mesh._ranks:
            await rp.drained.wait()
        for view in mesh._views:
            await view.wait_finished()
