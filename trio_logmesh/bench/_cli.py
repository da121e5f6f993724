"""``logmesh bench``: run scenarios, print their tables and the targets."""

from __future__ import annotations

import argparse
import json
import sys

from ._report import Target, format_table, format_targets, targets
from ._scenarios import (
    aggregate,
    cpu,
    cpu_from_throughput,
    flush,
    idle,
    latency,
    memory,
    stall,
    throughput,
)
from ._trials import Result


def run_scenario(name: str, args: argparse.Namespace) -> list[Result]:
    """Run one scenario (not ``all``) with the options in ``args``; return its columns."""
    procs: list[int] | None = args.procs
    lines: int | None = args.lines
    repeat: int | None = args.repeat
    if name in ("throughput", "aggregate", "cpu"):
        out = []
        for p in procs or [4]:
            if name == "aggregate":
                out.append(aggregate(p, lines or 250_000, repeat or 3, args.window))
            elif name == "cpu":
                out.append(cpu(p, lines or 250_000, repeat or 3))
            else:
                out.append(throughput(p, lines or 250_000, repeat or 3))
        return out
    if name == "latency":
        return [latency(lines or 300, repeat or 2)]
    if name == "flush":
        return flush(procs or (4, 32, 128), args.flushes, repeat or 1)
    if name == "memory":
        return [memory(p, args.seconds, args.sink_delay) for p in procs or [16]]
    if name == "stall":
        return [stall(p, lines or 1_000_000, args.stall_seconds) for p in procs or [2]]
    if name == "idle":
        return [idle(p) for p in procs or [128]]
    if name == "hosts":
        from ._hosts import hosts

        return hosts(args.nnodes, (procs or [16])[0], args.flushes, lines or 250_000,
                     repeat or 3, args.dead_after)
    raise ValueError(f"unknown scenario {name!r}")


def _print_scenario(name: str, results: list[Result], as_json: bool) -> list[Target]:
    print(f"== {name} ==")
    if name == "hosts":  # one table per figure: their metrics differ
        from ._hosts import hosts_targets

        print("\n\n".join(format_table([r]) for r in results))
        rows = hosts_targets(results)
    else:
        print(format_table(results))
        rows = targets(name, results)
    if as_json:
        print(json.dumps({"scenario": name, "results": results}))
    print(flush=True)
    return rows


def run_all(args: argparse.Namespace) -> list[Target]:
    """Every scenario with its defaults (a few minutes in all); print the tables and the
    summary; return the summary rows."""
    summary: list[Target] = []
    tp = [throughput(p, args.lines or 250_000, args.repeat or 3) for p in (4, 16)]
    summary += _print_scenario("throughput", tp, args.json)
    agg = [aggregate(4, args.lines or 250_000, args.repeat or 3, args.window)]
    summary += _print_scenario("aggregate", agg, args.json)
    summary += _print_scenario("cpu", [cpu_from_throughput(r) for r in tp], args.json)
    lat = [latency(300, args.repeat or 2)]
    summary += _print_scenario("latency", lat, args.json)
    summary += _print_scenario("flush", flush((4, 32, 128), args.flushes, 1), args.json)
    summary += _print_scenario("memory", [memory(16, args.seconds, args.sink_delay)], args.json)
    summary += _print_scenario("stall", [stall(2, 1_000_000, args.stall_seconds)], args.json)
    _print_scenario("idle", [idle(128)], args.json)
    summary += _print_scenario("hosts", run_scenario("hosts", args), args.json)
    print("== summary ==")
    print(format_targets(summary))
    return summary


def cli(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` name; print its table(s); return the exit status (0 unless a
    trial failed or lost lines, whatever the targets say)."""
    try:
        if args.scenario == "grouping":  # the folding engines alone, in this process
            from . import _grouping

            _grouping.main(args.lines or 1_000_000)
            return 0
        if args.scenario == "all":
            run_all(args)
        else:
            rows = _print_scenario(args.scenario, run_scenario(args.scenario, args), args.json)
            if rows:
                print(format_targets(rows))
    except RuntimeError as exc:
        print(f"logmesh bench: {exc}", file=sys.stderr)
        return 1
    return 0
