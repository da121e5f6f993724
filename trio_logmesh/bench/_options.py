"""The options of ``logmesh bench`` (imported by the parser; it imports nothing heavy)."""

from __future__ import annotations

import argparse

SCENARIOS = ("throughput", "aggregate", "cpu", "latency", "flush", "memory", "stall", "idle",
             "grouping", "hosts", "all")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers like 4 or 4,16, not {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, not {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``logmesh bench`` options to ``parser``."""
    parser.add_argument(
        "scenario", nargs="?", default="throughput", choices=SCENARIOS,
        help="which scenario (default throughput); 'all' runs every one and a summary",
    )
    parser.add_argument(
        "-p", "--procs", type=_int_list, action="extend", default=None, metavar="N[,N]",
        help="children (repeatable / comma list; default: 4 for throughput, aggregate and cpu; "
             "4,32,128 for flush; 16 for memory; 2 for stall; 128 for idle; 16 per agent for "
             "hosts)",
    )
    parser.add_argument(
        "-l", "--lines", type=int, default=None,
        help="lines per child (default 250000; latency: 300)",
    )
    parser.add_argument(
        "-r", "--repeat", type=int, default=None,
        help="alternating trials of each side (default 3; latency 2; flush 1)",
    )
    parser.add_argument("--window", type=float, default=3.0,
                        help="aggregate: window in seconds (default 3)")
    parser.add_argument("--seconds", type=float, default=30.0,
                        help="memory: how long the children flood (default 30)")
    parser.add_argument("--sink-delay", type=float, default=0.001,
                        help="memory: seconds the slow sink sleeps per call (default 0.001)")
    parser.add_argument("--flushes", type=int, default=20,
                        help="flush: timed flushes per size after warm-up (default 20)")
    parser.add_argument("--stall-seconds", type=float, default=25.0,
                        help="stall: how long the children may take with stdout unread "
                             "(default 25)")
    parser.add_argument("--nnodes", type=int, default=8,
                        help="hosts: local agents (default 8; -p sets ranks per agent, "
                             "default 16)")
    parser.add_argument("--dead-after", type=float, default=2.0,
                        help="hosts: dead_after of the lost-agent figure (default 2)")
    parser.add_argument("--json", action="store_true",
                        help="also print each scenario's results as one JSON line")


