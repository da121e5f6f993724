"""The ``logmesh`` command line: its parser and entry point (the commands live beside it)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import trio

from ._agent import add_agent_parser, agent_command
from ._multihost import MULTIHOST_EPILOG, add_multihost_arguments
from ._run import DEFAULT_WINDOW, run_command

MAIN_HELP = """\
Run a mesh of worker processes with their stdout/stderr streamed to this terminal,
aggregated when many ranks print the same thing, and kept whole in per-rank files.
"""

MAIN_EPILOG = "Run 'logmesh COMMAND --help' for a command's options."

RUN_EPILOG = """\
Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and torchrun's other
variables (MASTER_ADDR 127.0.0.1 and a free MASTER_PORT unless you set them), runs in its own
process group with its descendants, and never outlives logmesh. Rank 0 reads logmesh's stdin
(--stdin). Every byte each rank writes is kept in <run dir>/rank-N.stdout.log and .stderr.log;
each run gets its own run directory under --log-dir (default $LOGMESH_LOG_DIR, else
/tmp/logmesh-<uid>), where the newest --keep-runs are kept and 'latest' links the newest.

signals: Ctrl-C sends SIGINT to every rank's process group and stops them (SIGKILL after
--grace seconds); Ctrl-C again kills them at once. SIGTERM and SIGHUP send SIGTERM, SIGKILL
after --grace. Ctrl-Z stops the ranks with logmesh; fg or bg continues them.

exit status: 0 when every rank succeeds. When a rank fails, the others are stopped after 2 s
and its code is the status (128+N for a rank killed by signal N); with --keep-going, the
lowest failing rank's code. 130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP; 141 when
stdout was closed (| head), 1 when it could not be written; 127 when the program is not
found, 126 when it cannot be executed, 2 for a bad command line.

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


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text!r}")
    return int(text)


def _stdin_rank(text: str) -> int | None:
    if text == "none":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a rank or 'none', not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``logmesh``."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="logmesh", description=MAIN_HELP, epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"logmesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    run = sub.add_parser(
        "run", help="start N ranks of a command (like torchrun --nproc-per-node, mpirun -n)",
        epilog=RUN_EPILOG + "\n" + MULTIHOST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="logmesh run -n N [--nnodes N --launcher none|slurm|ssh|local] [options] -- "
              "CMD [ARG ...]",
        description="Start N ranks of CMD on this host and stream their output.",
    )
    run.add_argument("-n", "--nproc", "--nproc-per-node", type=int, required=True,
                     metavar="N", help="number of ranks to start (on each host)")
    win = run.add_mutually_exclusive_group()
    win.add_argument("--window", type=_positive, default=None, metavar="SEC",
                     help="fold the ranks' lines, a line waiting at most SEC seconds for its "
                          f"peers (default on a terminal: {DEFAULT_WINDOW:g}; when stdout is "
                          "a file or a pipe, or with --json: no folding)")
    win.add_argument("--no-window", action="store_true",
                     help="print every line at once, prefixed by its rank")
    run.add_argument("--fold", choices=("ranks", "repeats"), default="ranks",
                     help="with a window: line the ranks up, one line per step with each "
                          "field's values (ranks, default), or group similar lines, one "
                          "rank's repeats included, per window (repeats)")
    run.add_argument("--no-stream", action="store_true",
                     help="show nothing live; only the files and the final summary")
    run.add_argument("--log-dir", metavar="DIR",
                     help="where run directories go: each run gets a new one here (default "
                          "$LOGMESH_LOG_DIR, else /tmp/logmesh-<uid>); printed once at start")
    run.add_argument("--keep-runs", type=_count, default=20, metavar="N",
                     help="keep the newest N run directories under --log-dir, 0 all "
                          "(default 20)")
    run.add_argument("--keep-going", action="store_true",
                     help="when a rank fails, let the others run (default: stop them)")
    run.add_argument("--grace", type=_positive, default=5.0, metavar="SEC",
                     help="seconds between the stop signal and SIGKILL (default 5)")
    run.add_argument("--stdin", type=_stdin_rank, default=0, metavar="RANK|none",
                     help="the rank that reads logmesh's stdin (default 0; none: every rank "
                          "reads /dev/null)")
    run.add_argument("--ranks", type=parse_ranks, metavar="LIST",
                     help="show only these ranks live, e.g. 0,3-5 (the files keep all)")
    run.add_argument("--timestamps", action="store_true", help="prefix lines with the time")
    run.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                     help="color the rank tags (default: auto, only on a terminal; "
                          "NO_COLOR disables)")
    run.add_argument("--json", action="store_true",
                     help="one JSON object per line on stdout (time, rank, host, pid, "
                          "stream, text); groups only with --window")
    run.add_argument("--level", default=None, metavar="LEVEL",
                     help="Python logging level in the ranks (DEBUG, INFO, 20, ...)")
    run.add_argument("--drop-policy", choices=("drop", "block"), default=None,
                     help="when the live view falls behind: drop lines from it (counted; the "
                          "default on a terminal) or block the ranks until it catches up (the "
                          "default when stdout is a file or a pipe: every line is written)")
    add_multihost_arguments(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG ...]",
                     help="the program each rank runs")
    bench = sub.add_parser("bench", help="measure the pipeline against a bare pipe reader",
                           description="Run benchmark scenarios; each compares our pipeline "
                                       "with a baseline in the same invocation and reports "
                                       "medians and ratios.")
    add_bench_arguments(bench)
    add_agent_parser(sub)
    return parser


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``logmesh bench`` (here, so parsing never imports the benchmarks)."""
    from ..bench._options import add_arguments

    add_arguments(parser)


def bench_command(args: argparse.Namespace) -> int:
    """Run ``logmesh bench``; return the exit status."""
    from ..bench._cli import cli

    return cli(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``logmesh`` command; returns (and exits with) the status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "bench":
        return bench_command(args)
    if args.command == "agent":
        return agent_command(args)
    return trio.run(run_command, args, restrict_keyboard_interrupt_to_checkpoints=True)


def entry() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
