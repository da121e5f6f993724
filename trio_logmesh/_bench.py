"""``logmesh bench``: our pipeline against a bare pipe reader, in the same invocation.

Each trial runs in a fresh Python process (so ``RUSAGE_CHILDREN`` measures exactly that trial's
children) and prints one JSON line.  Trials of ours and of the baseline alternate; we report
medians and the ratio, because on a shared machine an absolute time alone means little.
Children are block-buffered: ``PYTHONUNBUFFERED`` is removed from their environment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

CHILD = r"""
import os, sys
r = os.environ.get("RANK", "0")
n = int(sys.argv[1])
w = sys.stdout.write
for i in range(n):
    w(f"rank {r} step {i} loss 0.{i % 10000:04d}\n")
"""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def trial_baseline(procs: int, lines: int) -> dict[str, float]:
    """Plain ``subprocess`` pipes read by a ``selectors`` loop that only counts newlines."""
    t0 = time.perf_counter()
    children = []
    sel = selectors.DefaultSelector()
    for r in range(procs):
        env = _child_env()
        env["RANK"] = str(r)
        p = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(lines)], stdout=subprocess.PIPE, env=env
        )
        children.append(p)
        assert p.stdout is not None
        os.set_blocking(p.stdout.fileno(), False)
        sel.register(p.stdout.fileno(), selectors.EVENT_READ)
    count = 0
    open_fds = procs
    while open_fds:
        for key, _ in sel.select():
            data = os.read(key.fd, 65536)  # type: ignore[arg-type]
            if data:
                count += data.count(b"\n")
            else:
                sel.unregister(key.fd)
                open_fds -= 1
    for p in children:
        p.wait()
    wall = time.perf_counter() - t0
    return {"wall": wall, "lines": count, "child_cpu": _children_cpu(), "self_cpu": _self_cpu()}


async def _trial_ours(procs: int, lines: int, window: float | None) -> dict[str, float]:
    import trio

    import trio_logmesh as lm

    class CountingFileSink:
        def __init__(self, file) -> None:  # type: ignore[no-untyped-def]
            self.file = file
            self.lines = 0

        async def emit(self, items: Sequence[lm.Output]) -> None:
            for item in items:
                if isinstance(item, lm.LogLines):
                    self.lines += len(item.lines) - (1 if item.partial else 0)
                elif isinstance(item, lm.GroupLine):
                    self.lines += item.count
            self.file.write("".join(lm.format_output(i) + "\n" for i in items))

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(os.path.join(tmp, "sink.txt"), "w") as out:
        sink = CountingFileSink(out)
        async with lm.open_proc_mesh(
            [sys.executable, "-c", CHILD, str(lines)], procs=procs, env={"PYTHONUNBUFFERED": None},
            log_dir=tmp, announce=False, drop_policy="block",
        ) as mesh:
            async with trio.open_nursery() as nursery:
                client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
                client.set_mode(stream_to_client=True, aggregate_window_sec=window)
                await mesh.wait()
                await client.flush()
        wall = time.perf_counter() - t0
    return {"wall": wall, "lines": sink.lines, "child_cpu": _children_cpu(),
            "self_cpu": _self_cpu()}


def trial_ours(procs: int, lines: int, window: float | None = None) -> dict[str, float]:
    """Our pipeline, driver sink a file, counting every line delivered."""
    import trio

    return trio.run(_trial_ours, procs, lines, window)


def _run_trial(kind: str, procs: int, lines: int, window: float | None) -> dict[str, float]:
    cmd = [sys.executable, "-m", "trio_logmesh._bench", kind, str(procs), str(lines),
           "none" if window is None else str(window)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def throughput(
    procs: int = 4, lines: int = 250_000, repeat: int = 3, window: float | None = None
) -> dict[str, float]:
    """Alternate ``repeat`` trials of ours and the baseline; return medians and ratios."""
    ours: list[dict[str, float]] = []
    base: list[dict[str, float]] = []
    for _ in range(repeat):
        base.append(_run_trial("baseline", procs, lines, None))
        ours.append(_run_trial("ours", procs, lines, window))
    expected = procs * lines
    for t in ours + base:
        if t["lines"] != expected:
            raise RuntimeError(f"lost lines: {t['lines']} of {expected} arrived")

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ours_wall, base_wall = med(ours, "wall"), med(base, "wall")
    return {
        "procs": procs,
        "lines_per_proc": lines,
        "ours_wall_s": ours_wall,
        "baseline_wall_s": base_wall,
        "ours_lines_per_s": expected / ours_wall,
        "baseline_lines_per_s": expected / base_wall,
        "throughput_ratio": base_wall / ours_wall,
        "ours_child_cpu_s": med(ours, "child_cpu"),
        "baseline_child_cpu_s": med(base, "child_cpu"),
        "child_cpu_overhead": med(ours, "child_cpu") / med(base, "child_cpu") - 1,
        "ours_driver_cpu_s": med(ours, "self_cpu"),
    }


def format_table(rows: list[dict[str, float]]) -> str:
    """Render result dicts as an aligned text table."""
    keys = list(rows[0])
    cells = [[k] + [_fmt(r[k]) for r in rows] for k in keys]
    width = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c[i].ljust(width[i]) for i in range(len(c))) for c in cells)


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return f"{v:,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.3f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``logmesh bench`` options to ``parser``."""
    parser.add_argument("scenario", nargs="?", default="throughput",
                        choices=("throughput", "aggregate"),
                        help="which scenario (default throughput)")
    parser.add_argument("-p", "--procs", type=int, default=4, help="children (default 4)")
    parser.add_argument("-l", "--lines", type=int, default=250_000,
                        help="lines per child (default 250000)")
    parser.add_argument("-r", "--repeat", type=int, default=3,
                        help="alternating trials of each side (default 3)")


def cli(args: argparse.Namespace) -> int:
    """Run the scenario ``args`` name; print a table; return the exit status."""
    window = 3.0 if args.scenario == "aggregate" else None
    result = throughput(args.procs, args.lines, repeat=args.repeat, window=window)
    print(format_table([result]))
    return 0


def _main(argv: list[str]) -> None:
    kind, procs, lines, window = argv
    win = None if window == "none" else float(window)
    if kind == "baseline":
        result = trial_baseline(int(procs), int(lines))
    else:
        result = trial_ours(int(procs), int(lines), win)
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
