"""BootstrapProcManager: starts a mesh of child processes on this host and owns their pipes.

``open_proc_mesh`` is an ``async with`` whose nursery owns, per rank: the process, one
StreamFwder per pipe, the LocalLogSender to the in-child forwarder (Python children) and the
host-side forwarder (other children, and every child once it has exited).  Leaving the block
flushes what the children printed into their files, stops the children still running (SIGTERM,
then SIGKILL after ``grace`` seconds, which also ends a SIGSTOPped child) and removes the
private socket directory.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import py_compile
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio
import trio_util

from . import _wire as w
from ._channel import FrameStream
from ._errors import LogmeshError
from ._forwarder import HostLogForwarder
from ._outbox import Policy, RankOutbox
from ._sender import connect_agent, run_local_log_sender
from ._stream import FileAppender, StreamFwder, pipe_pending

if TYPE_CHECKING:
    from ._client import LoggingMeshClient

_BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_boot")
_PYTHON_RE = re.compile(r"^(python|pypy)(\d+(\.\d+)*)?(\.exe)?$")

#: Seconds the host waits for a Python child's forwarder to answer before serving the rank
#: itself (a child started with ``python -I`` or ``-S`` never runs our ``sitecustomize``).
AGENT_TIMEOUT = 20.0
#: Seconds an exited child's pipes may stay open and silent (a descendant holds them) before
#: the host stops reading them.
DRAIN_TIMEOUT = 5.0


@functools.cache
def _compile_boot() -> None:
    """Write the bytecode of the in-child forwarder once, so children load it instead of
    compiling it at every start (environments with ``PYTHONDONTWRITEBYTECODE`` never would).
    A read-only install simply keeps compiling; nothing depends on this."""
    for name in ("sitecustomize.py", "_logmesh_agent.py"):
        path = os.path.join(_BOOT_DIR, name)
        try:
            cached = importlib.util.cache_from_source(path)
            if not os.path.exists(cached) or os.path.getmtime(cached) < os.path.getmtime(path):
                py_compile.compile(path, cfile=cached, doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass


def is_python_command(argv0: str) -> bool:
    """Whether ``argv0`` names a Python interpreter (so the child can host a forwarder)."""
    base = os.path.basename(argv0)
    if _PYTHON_RE.match(base):
        return True
    try:
        return os.path.realpath(shutil.which(argv0) or argv0) == os.path.realpath(sys.executable)
    except OSError:
        return False


def default_log_root() -> str:
    """Where run directories go when no ``log_dir`` is given (``$LOGMESH_LOG_DIR`` or tmp)."""
    return os.environ.get("LOGMESH_LOG_DIR") or os.path.join(tempfile.gettempdir(), "logmesh")


@attrs.define(eq=False)
class RankProc:
    """One child of the mesh: its process, pipes, outbox and current forwarder address."""

    rank: int
    process: trio.Process
    python: bool
    outbox: RankOutbox
    fwds: tuple[StreamFwder, StreamFwder]
    agent_path: str
    host_path: str
    #: (generation, socket path) of the forwarder serving this rank now; None before it is up.
    forwarder: trio_util.AsyncValue[tuple[int, str] | None] = attrs.field(
        factory=lambda: trio_util.AsyncValue(None)
    )
    returncode: trio_util.AsyncValue[int | None] = attrs.field(
        factory=lambda: trio_util.AsyncValue(None)
    )
    exited: trio.Event = attrs.field(factory=trio.Event)
    drained: trio.Event = attrs.field(factory=trio.Event)
    agent: FrameStream | None = None
    #: Set once the host knows whether it talks to an in-child forwarder (connected, or gave
    #: up and serves the rank itself).
    agent_settled: trio.Event = attrs.field(factory=trio.Event)
    _cut_waiters: dict[int, trio.Event] = attrs.field(factory=dict)

    def cut_pipes(self, version: int) -> None:
        """Put barrier ``version`` into the outbox behind every byte both pipes hold now."""
        remaining = [len(self.fwds)]

        def one_done() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self.outbox.append(
                    w.MARK, lambda seq: w.frame(w.MARK, w.MARK_S.pack(seq, version))
                )
                ev = self._cut_waiters.pop(version, None)
                if ev is not None:
                    ev.set()

        for fwd in self.fwds:
            fwd.cut(one_done)

    async def flush_to_outbox(self, version: int) -> None:
        """Host-side barrier: ask the child (if it has a forwarder) to flush its buffers, then
        wait until both pipes were read past what they held."""
        ev = self._cut_waiters[version] = trio.Event()
        # A child that has not been dialled yet still holds its buffers: wait for its forwarder.
        await self.agent_settled.wait()
        agent = self.agent
        if agent is not None and not self.exited.is_set():
            try:
                await agent.send(w.frame(w.FORCE_SYNC_FLUSH, w.I64.pack(version)))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.cut_pipes(version)
        else:
            self.cut_pipes(version)
        await ev.wait()


@attrs.define(eq=False)
class ProcMesh:
    """A running mesh of ``size`` processes on this host (see :func:`open_proc_mesh`)."""

    size: int
    run_dir: str
    hostname: str
    _token: bytes
    _sock_dir: str
    ranks: list[RankProc] = attrs.field(factory=list)
    _nursery: trio.Nursery | None = None
    _clients: list[LoggingMeshClient] = attrs.field(factory=list)
    _host_version: int = -2

    def log_files(self, rank: int) -> tuple[str, str]:
        """The paths of ``rank``'s stdout and stderr files."""
        return _log_paths(self.run_dir, rank, self.size)

    @property
    def pids(self) -> list[int]:
        """The process ids, by rank."""
        return [rp.process.pid for rp in self.ranks]

    @property
    def returncodes(self) -> list[int | None]:
        """Exit codes by rank (None while running; negative: killed by that signal)."""
        return [rp.returncode.value for rp in self.ranks]

    async def wait(self) -> list[int]:
        """Wait for every child to exit; return the exit codes by rank."""
        codes = []
        for rp in self.ranks:
            code = await rp.returncode.wait_value(lambda v: v is not None)
            assert code is not None
            codes.append(code)
        return codes

    def send_signal(self, sig: int, ranks: Sequence[int] | None = None) -> None:
        """Send ``sig`` to the children still running (all, or the given ranks)."""
        for rp in self.ranks if ranks is None else [self.ranks[r] for r in ranks]:
            if rp.returncode.value is None:
                try:
                    rp.process.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def logging_option(
        self,
        stream_to_client: bool = True,
        aggregate_window_sec: float | None = None,
        level: int | str = logging.INFO,
        *,
        sink: object = None,
    ) -> LoggingMeshClient:
        """One-line form: spawn a client owned by this mesh and set its mode.

        The client lives until the mesh's ``async with`` ends, which flushes it first.  A
        second call changes that client's mode (a mesh has one live view).
        Raises ``ValueError`` for a window without streaming (before spawning anything).
        """
        from ._client import LoggingMeshClient, check_mode

        check_mode(stream_to_client, aggregate_window_sec, level)
        if self._nursery is None:
            raise LogmeshError("the mesh is closed")
        for client in self._clients:  # one live view per mesh: a second call changes its mode
            if sink is not None:
                raise LogmeshError("this mesh already has a client; its sink cannot change")
            client.set_mode(stream_to_client, aggregate_window_sec, level)
            return client
        client = await LoggingMeshClient.spawn(self._nursery, self, sink=sink)
        client.set_mode(stream_to_client, aggregate_window_sec, level)
        self._clients.append(client)
        return client

    async def _flush_files(self, timeout: float) -> None:
        """Host barrier on every rank: what the children printed so far reaches the files."""
        self._host_version -= 1
        version = self._host_version
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for rp in self.ranks:
                    if not rp.drained.is_set():
                        nursery.start_soon(rp.flush_to_outbox, version)

    async def _stop_children(self, grace: float) -> None:
        running = [rp for rp in self.ranks if rp.returncode.value is None]
        if not running:
            return
        for rp in running:
            _signal_group(rp.process, signal.SIGTERM)
            _signal_group(rp.process, signal.SIGCONT)  # a stopped child must see the SIGTERM
        with trio.move_on_after(grace):
            for rp in running:
                await rp.exited.wait()
        for rp in running:
            if not rp.exited.is_set():
                _signal_group(rp.process, signal.SIGKILL)
        with trio.move_on_after(grace):
            for rp in running:
                await rp.exited.wait()


def _signal_group(process: trio.Process, sig: int) -> None:
    # Each child leads its own process group (start_new_session): signal its descendants too.
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            process.send_signal(sig)
        except ProcessLookupError:
            pass


def _log_paths(run_dir: str, rank: int, size: int) -> tuple[str, str]:
    width = len(str(max(0, size - 1)))
    base = os.path.join(run_dir, f"rank-{rank:0{width}d}")
    return base + ".stdout.log", base + ".stderr.log"


def _make_run_dir(log_dir: str | os.PathLike[str] | None) -> str:
    if log_dir is not None:
        path = os.fspath(log_dir)
        os.makedirs(path, exist_ok=True)
        return path
    root = default_log_root()
    os.makedirs(root, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return tempfile.mkdtemp(prefix=f"{stamp}-", dir=root)


def _child_env(
    base: Mapping[str, str | None] | None,
    rank: int,
    size: int,
    python: bool,
    agent_path: str,
    token: bytes,
    run_dir: str,
    flush_interval: float,
) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (base or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(size),
        BOOTSTRAP_LOG_CHANNEL=agent_path,
        LOGMESH_RUN_DIR=run_dir,
    )
    for key in ("LOGMESH_AGENT", "LOGMESH_TOKEN"):
        env.pop(key, None)
    if not python:
        env.pop("LOGMESH_LEVEL", None)
    if python:
        env["LOGMESH_AGENT"] = "1"
        env["LOGMESH_TOKEN"] = token.hex()
        env["LOGMESH_FLUSH_INTERVAL"] = repr(flush_interval)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = _BOOT_DIR + (os.pathsep + old if old else "")
    return env


@attrs.define
class _Options:
    mirror: bool
    policy: Policy
    buffer_bytes: int
    partial_idle: float
    flush_interval: float
    agent_timeout: float


async def _spawn(
    mesh: ProcMesh,
    rank: int,
    cmd: list[str],
    env: Mapping[str, str | None] | None,
    python: bool,
    opts: _Options,
) -> trio.Process:
    child_env = _child_env(
        env, rank, mesh.size, python, _agent_path(mesh, rank), mesh._token, mesh.run_dir,
        opts.flush_interval,
    )
    return await trio.lowlevel.open_process(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env,
        start_new_session=True,
    )


def _agent_path(mesh: ProcMesh, rank: int) -> str:
    return os.path.join(mesh._sock_dir, f"rank{rank}.sock")


async def _run_rank(
    mesh: ProcMesh,
    rank: int,
    process: trio.Process,
    appenders: tuple[FileAppender, FileAppender],
    python: bool,
    opts: _Options,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    agent_path = _agent_path(mesh, rank)
    host_path = os.path.join(mesh._sock_dir, f"rank{rank}.host.sock")
    outbox = RankOutbox(limit_bytes=opts.buffer_bytes, policy=opts.policy)
    mirrors = (
        (sys.stdout.buffer, sys.stderr.buffer) if opts.mirror else (None, None)
    )
    assert process.stdout is not None and process.stderr is not None
    fwds = (
        StreamFwder(0, process.stdout, outbox, appenders[0], mirrors[0], opts.partial_idle),  # type: ignore[arg-type]
        StreamFwder(1, process.stderr, outbox, appenders[1], mirrors[1], opts.partial_idle),  # type: ignore[arg-type]
    )
    rp = RankProc(rank, process, python, outbox, fwds, agent_path, host_path)
    mesh.ranks.append(rp)
    try:
        async with trio.open_nursery() as nursery:
            read_scope = trio.CancelScope()
            readers_done = trio.Event()

            async def read_pipes() -> None:
                try:
                    with read_scope:
                        async with trio.open_nursery() as readers:
                            for fwd in fwds:
                                readers.start_soon(fwd.run)
                finally:
                    readers_done.set()

            nursery.start_soon(read_pipes)
            nursery.start_soon(_forwarding, mesh, rp, opts)
            task_status.started()
            code = await process.wait()
            rp.returncode.value = code
            rp.exited.set()
            await _drain_after_exit(fwds)
            read_scope.cancel()
            if rp.agent is not None:
                # The process is gone: whatever still holds its forwarder's socket open (a
                # forked descendant), the host serves this rank from now on.
                await rp.agent.aclose()
            await readers_done.wait()  # their held partial lines are in the outbox now
            outbox.append(w.EXIT, lambda seq: w.frame(w.EXIT, w.EXIT_S.pack(seq, code)))
            rp.drained.set()
            # The forwarders keep serving (a client may join late) until the mesh closes.
    finally:
        for a in appenders:
            a.close()


async def _drain_after_exit(fwds: tuple[StreamFwder, StreamFwder]) -> None:
    """Read the pipes of an exited child to EOF.  Give up only when a descendant keeps them
    open but silent: nothing read and nothing waiting in them for ``DRAIN_TIMEOUT`` seconds.
    (Back-pressure from a slow live view can slow draining down; it never cuts it short.)"""
    last = [f.offset for f in fwds]
    quiet_since = trio.current_time()
    while not all(f.eof for f in fwds):
        await trio.sleep(0.05)
        now = [f.offset for f in fwds]
        waiting = any(not f.eof and pipe_pending(f.pipe.fileno()) for f in fwds)
        if now != last or waiting:
            last, quiet_since = now, trio.current_time()
        elif trio.current_time() - quiet_since >= DRAIN_TIMEOUT:
            return


async def _forwarding(mesh: ProcMesh, rp: RankProc, opts: _Options) -> None:
    """In-child forwarder first (Python children), then the host-side one for good."""
    if rp.python:
        fs = await connect_agent(
            rp.agent_path, mesh._token, rp.rank, rp.exited, opts.agent_timeout
        )
        if fs is not None:
            rp.agent = fs
            rp.agent_settled.set()
            rp.forwarder.value = (1, rp.agent_path)
            await run_local_log_sender(fs, rp.outbox, rp.cut_pipes)
            rp.agent = None
            # Host barriers the forwarder never answered: cut the pipes for them ourselves.
            for version in list(rp._cut_waiters):
                rp.cut_pipes(version)
    rp.agent_settled.set()
    hf = HostLogForwarder(
        rp.rank, rp.host_path, mesh._token, rp.outbox, rp.cut_pipes, rp.process.pid,
        mesh.hostname,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(hf.serve)
        rp.forwarder.value = (2, rp.host_path)


@asynccontextmanager
async def open_proc_mesh(
    cmd: Sequence[str],
    procs: int = 1,
    *,
    env: Mapping[str, str | None] | None = None,
    log_dir: str | os.PathLike[str] | None = None,
    python: bool | None = None,
    mirror: bool = False,
    drop_policy: Policy = "drop",
    buffer_bytes: int = 4 * 1024 * 1024,
    partial_idle: float = 0.2,
    flush_interval: float = 0.02,
    grace: float = 5.0,
    announce: bool = True,
    log_level: int | str | None = None,
) -> AsyncIterator[ProcMesh]:
    """Start ``procs`` copies of ``cmd`` on this host and stream their output.

    Each child gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` and
    ``BOOTSTRAP_LOG_CHANNEL`` in its environment (``env`` adds to the driver's environment; a
    value of ``None`` removes a variable).  Python children (``python=None`` detects them from
    ``cmd[0]``) host a forwarder that flushes their buffers for exact barriers.  Every byte
    goes to ``<run_dir>/rank-N.stdout.log`` / ``.stderr.log``; ``run_dir`` is ``log_dir`` or a
    new directory under ``$LOGMESH_LOG_DIR`` (default: the temp dir), printed once on stderr
    when ``announce``.  ``mirror`` copies the children's bytes to this process's own stdout and
    stderr (for a host that is not the driver; off by default, so nothing prints twice).

    ``drop_policy``: when the live view falls behind by more than ``buffer_bytes`` for a rank,
    ``"drop"`` drops the oldest lines of the live view (counted and reported; the files keep
    everything), ``"block"`` stops reading that child's pipes until the view catches up.

    ``log_level`` is the root Python logging level the Python children start with (a
    client's ``set_mode(level=...)`` changes it later).

    Leaving the block flushes clients made by :meth:`ProcMesh.logging_option` and the files,
    then stops the children still running: SIGTERM, then SIGKILL after ``grace`` seconds.

    Raises ``ValueError`` for bad arguments and ``OSError`` if a child cannot be started.
    """
    cmd = [os.fspath(c) for c in cmd]
    if not cmd:
        raise ValueError("cmd must name a program")
    if not isinstance(procs, int) or procs < 1:
        raise ValueError(f"procs must be a positive integer, not {procs!r}")
    if drop_policy not in ("drop", "block"):
        raise ValueError(f"drop_policy must be 'drop' or 'block', not {drop_policy!r}")
    if buffer_bytes < 64 * 1024:
        raise ValueError("buffer_bytes must be at least 64 KiB")
    for name, value in (("partial_idle", partial_idle), ("grace", grace)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, not {value!r}")
    is_py = is_python_command(cmd[0]) if python is None else python
    if is_py:
        _compile_boot()
    if log_level is not None:
        from ._client import check_mode

        env = dict(env or {})
        env["LOGMESH_LEVEL"] = str(check_mode(True, None, log_level))
    run_dir = _make_run_dir(log_dir)
    sock_dir = tempfile.mkdtemp(prefix="logmesh-")  # 0700: only this user may connect
    if announce:
        sys.stderr.write(f"logmesh: {procs} rank(s), logs in {run_dir}\n")
        sys.stderr.flush()
    opts = _Options(mirror, drop_policy, buffer_bytes, partial_idle, flush_interval,
                    AGENT_TIMEOUT)
    mesh = ProcMesh(procs, run_dir, socket.gethostname(), secrets.token_bytes(w.TOKEN_SIZE),
                    sock_dir)
    processes: list[trio.Process] = []
    appenders: list[tuple[FileAppender, FileAppender]] = []
    try:
        # Everything that can fail on bad input (the files, the program) fails here, as a
        # plain exception, before any task runs.
        for rank in range(procs):
            paths = mesh.log_files(rank)
            out = FileAppender(paths[0])
            try:
                appenders.append((out, FileAppender(paths[1])))
            except BaseException:
                out.close()
                raise
            processes.append(await _spawn(mesh, rank, cmd, env, is_py, opts))
    except BaseException:
        for p in processes:
            _signal_group(p, signal.SIGKILL)
        with trio.CancelScope(shield=True):
            for p in processes:
                await p.wait()
        for pair in appenders:
            for a in pair:
                a.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        raise
    body_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            mesh._nursery = nursery
            try:
                for rank, process in enumerate(processes):
                    await nursery.start(_run_rank, mesh, rank, process, appenders[rank], is_py,
                                        opts)
                try:
                    yield mesh
                except BaseException as exc:
                    # Re-raised below, outside our nursery, so the caller sees their own
                    # exception rather than an ExceptionGroup of ours.
                    body_error = exc
            finally:
                with trio.CancelScope(shield=True):
                    await _teardown(mesh, grace)
                    # Children whose rank task never started (a failure part-way through
                    # start-up): nobody else owns them.
                    registered = {id(rp.process) for rp in mesh.ranks}
                    for process, pair in zip(processes, appenders, strict=True):
                        if id(process) not in registered:
                            _signal_group(process, signal.SIGKILL)
                            await process.wait()
                            for a in pair:
                                a.close()
                nursery.cancel_scope.cancel()
    finally:
        mesh._nursery = None
        shutil.rmtree(sock_dir, ignore_errors=True)
    if body_error is not None:
        raise body_error


async def _teardown(mesh: ProcMesh, grace: float) -> None:
    for client in mesh._clients:
        try:
            await client.flush(timeout=grace)
        except LogmeshError:  # timed out, or the client was closed already
            pass
    for rp in mesh.ranks:
        rp.outbox.set_policy("drop")  # from here on nothing may hold the pipes back
    await mesh._flush_files(timeout=grace)
    await mesh._stop_children(grace)
    with trio.move_on_after(grace):
        for rp in mesh.ranks:
            await rp.drained.wait()
    for client in mesh._clients:
        with trio.move_on_after(grace):
            await client.wait_finished()
