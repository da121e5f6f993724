"""``logmesh run``: N ranks of a program on this host, output streamed, kept and summarized."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import trio

from ..host._mesh import ProcMesh, open_proc_mesh
from ..view._client import LoggingMeshClient, check_mode
from ..view._sinks import JsonSink, TerminalSink


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
    lines = summary(mesh, codes)
    for name, error in sink.output_errors.items():
        lines.append(f"logmesh: the live view stopped: cannot write to {name}: "
                     f"{error.strerror or error}; the per-rank files are complete")
    for line in lines:
        try:
            sys.stderr.write(line + "\n")
        except OSError:
            break
    return 130 if interrupted else exit_status(codes)


