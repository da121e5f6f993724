"""The ``logmesh`` command: run N ranks of a program with their output streamed and kept."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from ._bootstrap import ProcMesh, open_proc_mesh
from ._client import LoggingMeshClient, check_mode
from ._sinks import JsonSink, TerminalSink

DEFAULT_WINDOW = 3.0

MAIN_HELP = """\
Run a mesh of worker processes with their stdout/stderr streamed to this terminal,
aggregated when many ranks print the same thing, and kept whole in per-rank files.
"""

MAIN_EPILOG = "Run 'logmesh COMMAND --help' for a command's options."

RUN_EPILOG = """\
Each rank gets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE in its environment.
Every byte each rank writes is kept in <log-dir>/rank-N.stdout.log and .stderr.log.

exit status: 0 when every rank succeeds; otherwise the exit code of the lowest failing rank
(128+N for a rank killed by signal N); 130 after Ctrl-C. Ctrl-C once sends SIGINT to every
rank and waits for them (their last output is flushed); twice kills them.

examples:
  logmesh run -n 4 -- python3 train.py --epochs 3
  logmesh run -n 8 --window 5 --ranks 0,3-5 --log-dir runs/today -- ./worker.sh
  logmesh run -n 2 --json -- python3 serve.py | jq .text
"""


def parse_ranks(text: str) -> list[int]:
    """Parse ``0,3-5`` into ``[0, 3, 4, 5]``.  Raises ``ValueError`` on bad syntax."""
    ranks: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"bad rank range {part!r} (expected e.g. 0,3-5)")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ValueError(f"bad rank range {part!r}: {b} < {a}")
        ranks.update(range(a, b + 1))
    if not ranks:
        raise ValueError("no ranks given")
    return sorted(ranks)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``logmesh``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="logmesh", description=MAIN_HELP, epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run = sub.add_parser(
        "run", help="start N ranks of a command (like torchrun --nproc-per-node, mpirun -n)",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="logmesh run -n N [options] -- CMD [ARG ...]",
        description="Start N ranks of CMD on this host and stream their output.",
    )
    run.add_argument("-n", "--nproc", type=int, required=True, metavar="N",
                     help="number of ranks to start")
    win = run.add_mutually_exclusive_group()
    win.add_argument("--window", type=_positive, default=DEFAULT_WINDOW, metavar="SEC",
                     help=f"aggregate similar lines over SEC seconds (default {DEFAULT_WINDOW:g})")
    win.add_argument("--no-window", dest="window", action="store_const", const=None,
                     help="print every line at once, prefixed by its rank")
    run.add_argument("--across-ranks-only", action="store_true",
                     help="aggregate only lines of different ranks; never collapse one rank's "
                          "own repeats")
    run.add_argument("--no-stream", action="store_true",
                     help="show nothing live; only the files and the final summary")
    run.add_argument("--log-dir", metavar="DIR",
                     help="the run directory for per-rank files (default: a new directory "
                          "under $LOGMESH_LOG_DIR or the temp dir); printed once at start")
    run.add_argument("--ranks", type=parse_ranks, metavar="LIST",
                     help="show only these ranks live, e.g. 0,3-5 (the files keep all)")
    run.add_argument("--timestamps", action="store_true", help="prefix lines with the time")
    run.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                     help="color the rank tags (default: auto, only on a terminal; "
                          "NO_COLOR disables)")
    run.add_argument("--json", action="store_true",
                     help="one JSON object per line on stdout (time, rank, host, pid, "
                          "stream, text; group fields when aggregated)")
    run.add_argument("--level", default=None, metavar="LEVEL",
                     help="Python logging level in the ranks (DEBUG, INFO, 20, ...)")
    run.add_argument("--drop-policy", choices=("drop", "block"), default="drop",
                     help="when the live view falls behind: drop lines from it (counted; "
                          "default) or block the ranks until it catches up")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]",
                     help="the program each rank runs")
    bench = sub.add_parser("bench", help="measure the pipeline against a bare pipe reader",
                           description="Run benchmark scenarios; each compares our pipeline "
                                       "with a baseline in the same invocation and reports "
                                       "medians and ratios.")
    from . import _bench

    _bench.add_arguments(bench)
    return parser


def exit_status(codes: Sequence[int | None]) -> int:
    """0 if every rank succeeded, else the lowest failing rank's code (128+N for signal N)."""
    for code in codes:
        if code:
            return 128 - code if code < 0 else code
    return 0


def _tail(path: str, n: int = 3) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            data = fh.read()
    except OSError:
        return []
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-n:]


def summary(mesh: ProcMesh, codes: Sequence[int | None]) -> list[str]:
    """Lines describing the failed ranks, with the last lines of their stderr."""
    failed = [(r, c) for r, c in enumerate(codes) if c]
    if not failed:
        return []
    what = ", ".join(
        f"rank {r} ({'signal ' + signal.Signals(-c).name if c < 0 else 'exit ' + str(c)})"
        for r, c in failed
    )
    out = [f"logmesh: {len(failed)} of {len(codes)} rank(s) failed: {what}"]
    for r, _ in failed[:4]:
        for line in _tail(mesh.log_files(r)[1]):
            out.append(f"logmesh:   [{r}] {line}")
    return out


async def run_command(args: argparse.Namespace) -> int:
    """Run ``logmesh run``; return the process exit status."""
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise SystemExit("logmesh run: no command given (put it after --)")
    if args.nproc < 1:
        raise SystemExit("logmesh run: -n must be at least 1")
    stream = not args.no_stream
    window = args.window if stream else None
    level = args.level if args.level is not None else logging.INFO
    try:
        level = int(level)
    except ValueError:
        pass
    try:
        check_mode(stream, window, level)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"logmesh run: {exc}") from None
    if args.ranks is not None and max(args.ranks) >= args.nproc:
        raise SystemExit(f"logmesh run: --ranks {max(args.ranks)} is not below -n {args.nproc}")
    sink = JsonSink() if args.json else TerminalSink(color=args.color, timestamps=args.timestamps)
    interrupted = 0
    async with open_proc_mesh(cmd, procs=args.nproc, log_dir=args.log_dir,
                              drop_policy=args.drop_policy, log_level=level) as mesh:
        async with trio.open_nursery() as nursery:
            client = await LoggingMeshClient.spawn(nursery, mesh, sink=sink, ranks=args.ranks)
            client.set_mode(stream_to_client=stream, aggregate_window_sec=window, level=level,
                            across_ranks_only=args.across_ranks_only)

            async def on_sigint() -> None:
                nonlocal interrupted
                with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for _ in signals:
                        interrupted += 1
                        if interrupted == 1:
                            sys.stderr.write("logmesh: interrupted; stopping ranks "
                                             "(Ctrl-C again to kill)\n")
                            mesh.send_signal(signal.SIGINT)
                        else:
                            mesh.send_signal(signal.SIGKILL)

            nursery.start_soon(on_sigint)
            codes = await mesh.wait()
            try:
                await client.flush(timeout=10)
            except Exception as exc:  # a report, not a reason to lose the exit status
                sys.stderr.write(f"logmesh: {exc}\n")
            with trio.move_on_after(5):  # the exit reports, behind the ranks' last lines
                await client.wait_finished()
            await client.aclose()
            nursery.cancel_scope.cancel()
    for line in summary(mesh, codes):
        sys.stderr.write(line + "\n")
    return 130 if interrupted else exit_status(codes)


def bench_command(args: argparse.Namespace) -> int:
    """Run ``logmesh bench``; return the exit status."""
    from . import _bench

    return _bench.cli(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``logmesh`` command; returns (and exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "bench":
        return bench_command(args)
    status = trio.run(run_command, args, restrict_keyboard_interrupt_to_checkpoints=True)
    return status


def _entry() -> None:
    sys.exit(main())
