"""``logmesh run``: N ranks of a program on this host, output streamed, kept and summarized.

It behaves as people expect of a launcher (the README's table sets it beside torchrun and
mpirun):

* **Ctrl-C** forwards SIGINT to every rank's process group and stops them (SIGKILL after
  ``--grace``); a second Ctrl-C kills them at once.  Exit status 130.
* **SIGTERM** and **SIGHUP** (the terminal closed, ssh lost) forward SIGTERM, SIGKILL after
  ``--grace``.  Exit status 143 and 129.
* **Ctrl-Z** stops the ranks with logmesh; ``fg``/``bg`` continues them.
* **A rank that fails** stops the others after a short grace, their output flushed, and its
  code is the exit status (``--keep-going`` lets them run).
* **A closed stdout** (``| head``) stops the ranks quietly: exit status 141, like any Unix tool
  on a closed pipe.  An output that fails otherwise (``>/dev/full``) says so in one line and
  exits with 1.
* **Mistakes** get one line: a program that cannot be run exits with 127 (126 when it is not
  executable), a bad option with 2.

Nothing here writes to the terminal in a way that can block the event loop: messages go
through the same non-blocking writer as the live view.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack

import attrs
import trio

from .._errors import HostLost, LogmeshError
from ..host._mesh import ProcMesh, open_proc_mesh
from ..view._aggregate import fold_ranks
from ..view._client import LoggingMeshClient, check_mode
from ..view._sinks import JsonSink, TerminalSink
from ..view._writer import TextOutput
from . import _multihost as mh

#: The folding window on a terminal, in seconds (``--window``).
DEFAULT_WINDOW = 3.0

#: Seconds the other ranks get to end by themselves after one failed, before they are stopped.
FAIL_FAST_AFTER = 2.0
#: Seconds the final flush may take (a stalled stdout must not hold the exit forever), and
#: after an interruption.
FINAL_FLUSH = 10.0
FINAL_FLUSH_INTERRUPTED = 2.0

EXIT_USAGE = 2
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE


class UsageError(Exception):
    """A bad command line: one line on stderr, exit status 2."""


def exit_status(codes: Sequence[int | None]) -> int:
    """0 if every rank succeeded, else the lowest failing rank's code (128+N for signal N)."""
    for code in codes:
        if code:
            return _status(code)
    return 0


def _status(code: int) -> int:
    return 128 - code if code < 0 else code


def _what(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit {code}"


@attrs.define
class Outcome:
    """Why the run ended the way it did, for the summary and the exit status."""

    #: The first signal that stopped the run (SIGINT, SIGTERM, SIGHUP).
    signal: int | None = None
    #: stdout's reader went away (EPIPE).
    output_closed: bool = False
    #: Writing stdout failed otherwise.
    output_error: OSError | None = None
    #: The first rank that failed, and its code (fail-fast).
    failure: tuple[int, int] | None = None
    #: The ranks still running when logmesh began stopping them, and why it did.
    stopped: set[int] = attrs.field(factory=set)
    reason: str = ""


def summary(mesh: ProcMesh, codes: Sequence[int | None], outcome: Outcome) -> list[str]:
    """The closing lines: failed ranks (folded by exit code) with the last lines of their
    stderr, the ranks logmesh stopped and why, files that could not be written whole."""
    out: list[str] = []
    failed = {r: c for r, c in enumerate(codes) if c and r not in outcome.stopped}
    if failed:
        by_code: dict[tuple[int, str], list[int]] = collections.defaultdict(list)
        for r, c in failed.items():
            by_code[c, mh.host_label(mesh, r)].append(r)
        parts = [f"rank{'s' if len(rs) > 1 else ''} {fold_ranks(rs)} ({_what(c)})"
                 + (f" on {host}" if host else "")
                 for (c, host), rs in sorted(by_code.items(), key=lambda kv: min(kv[1]))]
        out.append(f"logmesh: {len(failed)} of {len(codes)} rank(s) failed: {', '.join(parts)}")
        for r in sorted(failed)[:4]:
            for line in mesh.stderr_tail(r):
                out.append(f"logmesh:   [{r}] {line}")
    out.extend(mh.lost_lines(mesh))
    stopped = outcome.stopped - mh.lost_ranks(mesh)
    if stopped and not outcome.output_closed:  # a closed pipe ends quietly
        out.append(f"logmesh: stopped rank(s) {fold_ranks(stopped)} ({outcome.reason})")
    for path, error, kept in mesh.incomplete_files:
        out.append(f"logmesh: {path} is incomplete: {error.strerror or error} after "
                   f"{kept:,} bytes")
    return out


class Messages:
    """logmesh's own lines on stderr, through the non-blocking writer: a stalled stderr never
    blocks the event loop (the line is dropped after ``timeout`` seconds instead)."""

    def __init__(self, timeout: float = 1.0) -> None:
        self._out = TextOutput(sys.stderr)
        self._timeout = timeout

    async def say(self, line: str) -> None:
        """Write one line."""
        with trio.move_on_after(self._timeout):
            await self._out.write([(line + "\n").encode("utf-8", "replace")])


class _LogToMessages(logging.Handler):
    """The host's warnings (a log file that cannot be written) as logmesh's own lines."""

    def __init__(self, queue: trio.MemorySendChannel[str]) -> None:
        super().__init__(logging.WARNING)
        self._queue = queue

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._queue.send_nowait(f"logmesh: {record.getMessage()}")
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass


@attrs.define(eq=False)
class Supervisor:
    """Stops the ranks, once: the requested signal to every process group, SIGKILL after
    ``grace``; asked again, SIGKILL at once."""

    mesh: ProcMesh
    nursery: trio.Nursery
    grace: float
    outcome: Outcome
    stopping: bool = False

    def stop(self, sig: int, reason: str) -> None:
        """Begin stopping the ranks still running, with ``sig``; a second call kills them."""
        if self.stopping:
            self.mesh.send_signal(signal.SIGKILL)
            return
        self.stopping = True
        self.outcome.stopped = {r for r, c in enumerate(self.mesh.returncodes) if c is None}
        self.outcome.reason = reason
        self.nursery.start_soon(self.mesh.stop, self.grace, sig)


async def _watch_signals(sup: Supervisor, say: Callable[[str], Awaitable[None]],
                         main: trio.CancelScope) -> None:
    mesh, outcome = sup.mesh, sup.outcome
    caught = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTSTP, signal.SIGCONT)
    with trio.open_signal_receiver(*caught) as signals:
        async for sig in signals:
            if sig == signal.SIGTSTP:
                # The ranks lead their own sessions: a terminal's stop never reaches them, and
                # they would ignore SIGTSTP in an orphaned group.  Stop them, then ourselves.
                mesh.send_signal(signal.SIGSTOP)
                os.kill(os.getpid(), signal.SIGSTOP)
                continue
            if sig == signal.SIGCONT:
                mesh.send_signal(signal.SIGCONT)
                continue
            if outcome.signal is None:
                outcome.signal = sig
            name = signal.Signals(sig).name
            if sup.stopping:
                await say("logmesh: killing the ranks")
                sup.stop(signal.SIGKILL, "")
                main.cancel()  # no more flushing: the user wants out
            elif sig == signal.SIGINT:
                await say("logmesh: interrupted; stopping ranks (Ctrl-C again to kill)")
                sup.stop(signal.SIGINT, "interrupted")
            else:
                await say(f"logmesh: {name}; stopping ranks ({name} again to kill)")
                sup.stop(signal.SIGTERM, f"on {name}")


async def _watch_output(sink: TerminalSink | JsonSink, sup: Supervisor,
                        say: Callable[[str], Awaitable[None]]) -> None:
    error = await sink.wait_stdout_ended()
    if sup.stopping:
        return
    if error is None:
        sup.outcome.output_closed = True
        sup.stop(signal.SIGTERM, "stdout was closed")
    else:
        sup.outcome.output_error = error
        await say(f"logmesh: cannot write to stdout: {error.strerror or error}; stopping the "
                  "ranks (their files are complete)")
        sup.stop(signal.SIGTERM, "stdout failed")


async def _watch_failures(sup: Supervisor, say: Callable[[str], Awaitable[None]]) -> None:
    mesh = sup.mesh

    async def one(rank: int) -> None:
        try:
            code = await mesh.wait_rank(rank)
            if code == 0 or sup.stopping or sup.outcome.failure is not None:
                return
            sup.outcome.failure = (rank, code)
            with trio.move_on_after(FAIL_FAST_AFTER):  # the others may end by themselves
                await mesh.wait()
        except HostLost:
            return  # the main task reports a lost host and stops the run
        if not sup.stopping and None in mesh.returncodes:
            await say(f"logmesh: rank {rank} failed ({_what(code)}); stopping the other ranks "
                      "(--keep-going lets them run)")
            sup.stop(signal.SIGTERM, f"after rank {rank} failed")

    async with trio.open_nursery() as nursery:
        for rank in range(mesh.size):
            nursery.start_soon(one, rank)


async def _print_host_warnings(queue: trio.MemoryReceiveChannel[str],
                               say: Callable[[str], Awaitable[None]]) -> None:
    async for line in queue:
        await say(line)


def _cannot_run(cmd: list[str], exc: OSError) -> tuple[str, int]:
    reason = exc.strerror or str(exc)
    hint = ""
    if os.sep not in cmd[0] and os.path.exists(cmd[0]):
        hint = f" (it is in this directory: ./{cmd[0]}, or run it with its interpreter)"
    code = EXIT_NOT_FOUND if isinstance(exc, FileNotFoundError) else EXIT_CANNOT_EXECUTE
    return f"logmesh: cannot run {cmd[0]!r}: {reason}{hint}", code


def _check_args(args: argparse.Namespace) -> tuple[list[str], int | None]:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given (put it after --)")
    if args.nproc < 1:
        raise UsageError("-n must be at least 1")
    level = None
    if args.level is not None:
        level = int(args.level) if args.level.lstrip("-").isdigit() else args.level
    try:
        check_mode(not args.no_stream, args.window if not args.no_stream else None, level)
        if args.no_stream and args.window is not None:
            raise ValueError("--window needs the live view (not --no-stream)")
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    if args.ranks is not None:
        # Ranks are global: over many hosts, below --nnodes x -n (when the hosts are known).
        world, what = args.nproc, f"-n {args.nproc}"
        if mh.is_multihost(args):
            world = args.nproc * args.nnodes if args.nnodes is not None else None
            what = f"the run's {world} ranks (--nnodes x -n)"
        if world is not None and max(args.ranks) >= world:
            raise UsageError(f"--ranks {max(args.ranks)} is not below {what}")
    if args.stdin is not None and args.stdin >= args.nproc:
        raise UsageError(f"--stdin {args.stdin} is not below -n {args.nproc}")
    problem = mh.check_multihost_args(args)
    if problem is not None:
        raise UsageError(problem)
    return cmd, level


def _only_interrupts(exc: BaseException) -> bool:
    """Whether ``exc`` is a KeyboardInterrupt (alone, or all of an exception group)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def _stdout_is_terminal() -> bool:
    try:
        return os.isatty(1)
    except OSError:
        return False


def output_defaults(args: argparse.Namespace, terminal: bool) -> tuple[float | None, str]:
    """The window and drop policy ``logmesh run`` uses: folding and dropping (counted) only
    where a person reads a terminal; into a file or a pipe, every line of every rank, complete
    (the ranks wait for the output rather than lose lines), unless asked otherwise."""
    if args.no_stream or args.no_window:
        window = None
    elif args.window is not None:
        window = args.window
    else:
        window = DEFAULT_WINDOW if terminal and not args.json else None
    policy = args.drop_policy or ("drop" if terminal else "block")
    return window, policy


async def run_command(args: argparse.Namespace) -> int:
    """Run ``logmesh run``; return the process exit status."""
    messages = Messages()
    say = messages.say
    try:
        cmd, level = _check_args(args)
    except UsageError as exc:
        await say(f"logmesh run: {exc}")
        return EXIT_USAGE
    stream = not args.no_stream
    window, drop_policy = output_defaults(args, _stdout_is_terminal())
    sink = JsonSink() if args.json else TerminalSink(color=args.color, timestamps=args.timestamps)
    outcome = Outcome()
    # A background job reading the terminal gets EIO instead of being stopped by SIGTTIN.
    signal.signal(signal.SIGTTIN, signal.SIG_IGN)
    warnings_send, warnings_recv = trio.open_memory_channel[str](64)
    host_log = logging.getLogger("trio_logmesh")
    handler = _LogToMessages(warnings_send)
    host_log.addHandler(handler)
    host_log.propagate = False
    try:
        async with AsyncExitStack() as stack:
            try:
                if mh.is_multihost(args):
                    try:
                        mesh = await stack.enter_async_context(
                            mh.open_cli_host_mesh(args, cmd, level, say, drop_policy))
                    except BaseException as exc:
                        # Ctrl-C while the hosts join (before logmesh watches signals).
                        if not _only_interrupts(exc):
                            raise
                        await say("logmesh: interrupted while the hosts were joining")
                        return 128 + signal.SIGINT
                else:
                    mesh = await stack.enter_async_context(open_proc_mesh(
                        cmd, procs=args.nproc, log_root=args.log_dir, keep_runs=args.keep_runs,
                        drop_policy=drop_policy, log_level=level, grace=args.grace,
                        stdin=args.stdin, announce=False,
                    ))
            except OSError as exc:
                if exc.filename is not None and os.fspath(exc.filename) == cmd[0]:
                    line, status = _cannot_run(cmd, exc)
                    await say(line)
                    return status
                where = f" {exc.filename}" if exc.filename else ""
                await say(f"logmesh: cannot make the run directory{where}: "
                          f"{exc.strerror or exc}")
                return 1
            except LogmeshError as exc:
                await say(f"logmesh: {exc}")
                return getattr(exc, "status", 1)
            await say(mh.banner(mesh))
            async with trio.open_nursery() as nursery:
                client = await LoggingMeshClient.spawn(nursery, mesh, sink=sink,
                                                       ranks=args.ranks)
                client.set_mode(stream_to_client=stream, aggregate_window_sec=window,
                                level=level, fold=args.fold)
                main = trio.CancelScope()
                sup = Supervisor(mesh, nursery, args.grace, outcome)
                nursery.start_soon(_watch_signals, sup, say, main)
                nursery.start_soon(_watch_output, sink, sup, say)
                nursery.start_soon(_print_host_warnings, warnings_recv, say)
                if not args.keep_going:
                    nursery.start_soon(_watch_failures, sup, say)
                with main:
                    await mh.wait_ranks(mesh, sup.stop)
                    if not (outcome.output_closed or outcome.output_error):
                        timeout = FINAL_FLUSH_INTERRUPTED if outcome.signal else FINAL_FLUSH
                        try:
                            await client.flush(timeout=timeout)
                        except HostLost:
                            pass  # the view said so, and the summary names the host
                        except LogmeshError as exc:  # a report, not a reason to lose the status
                            await say(f"logmesh: {exc}")
                client.close_timeout = 1.0 if (sup.stopping or main.cancel_called) else 5.0
                await client.aclose()
                nursery.cancel_scope.cancel()
    finally:
        host_log.removeHandler(handler)
    for line in summary(mesh, mesh.returncodes, outcome):
        await say(line)
    if outcome.signal is not None:
        return 128 + outcome.signal
    if outcome.output_closed:
        return EXIT_OUTPUT_CLOSED
    if outcome.output_error is not None:
        return 1
    lost = mh.lost_status(mesh)
    if lost is not None:
        return lost
    # A failure: the lowest failing rank among those logmesh did not stop itself.
    return exit_status([None if r in outcome.stopped else c
                        for r, c in enumerate(mesh.returncodes)])
