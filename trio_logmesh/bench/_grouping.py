"""Benchmark: the aggregator against printing every line (``logmesh bench grouping``).

:func:`run` builds realistic output of a training job (64 ranks printing step/loss lines, with
throughput lines, NCCL lines, ``Loading shard`` lines and Python warnings on stderr mixed in)
as :class:`LogLines` batches, then times both paths in this process's CPU time (so time spent
descheduled on a shared machine is not counted), alternating three repetitions and keeping the
medians:

* ``nowindow``: :func:`format_output` of every batch into an ``io.StringIO`` (the path without
  aggregation);
* ``aggregate``: an :class:`Aggregator` with a 3 s window, driven the way the client drives it
  (``expire`` when the synthetic clock passes ``next_deadline()``, ``add`` for every batch,
  ``drain`` at the end), its outputs formatted into an ``io.StringIO`` the same way.
"""

from __future__ import annotations

import gc
import io
import random
import statistics
import time
from collections.abc import Callable, Iterable

from ..view._aggregate import Aggregator
from ..view._records import LogLines, Output, Stream, format_output

__all__ = ["main", "make_batches", "run"]


def _rank_lines(rank: int, count: int, rng: random.Random, mixed: bool) -> list[tuple[Stream, str]]:
    lines: list[tuple[Stream, str]] = []
    step = 0
    loss = 2.5
    if not mixed:
        while len(lines) < count:
            step += 1
            loss = max(0.05, loss * 0.9995 + rng.uniform(-0.01, 0.01))
            lines.append(("stdout", f"rank {rank} step {step} loss {loss:.4f} lr 3e-4"))
        return lines
    shards = 16
    for k in range(1, shards + 1):
        lines.append(("stdout", f"Loading shard {k}/{shards}"))
    lines.append(
        (
            "stdout",
            f"[rank{rank}]:[I1123 15:31:58.{rng.randrange(10**6):06d} "
            f"ProcessGroupNCCL.cpp:{rng.choice((1306, 2019))}] [PG 0 Rank {rank}] "
            "ProcessGroupNCCL initialization options: size: 64",
        )
    )
    while len(lines) < count:
        step += 1
        loss = max(0.05, loss * 0.9995 + rng.uniform(-0.01, 0.01))
        lines.append(("stdout", f"rank {rank} step {step} loss {loss:.4f} lr 3e-4"))
        if step % 50 == 0:
            tps = rng.uniform(9000, 12000)
            mem = rng.randrange(30000, 40000)
            lines.append(("stdout", f"rank {rank} throughput {tps:.1f} tokens/s mem {mem}MiB"))
        if step % 200 == 0:
            lines.append(
                (
                    "stderr",
                    "/opt/conda/lib/python3.11/site-packages/torch/optim/lr_scheduler.py:"
                    f"{rng.choice((139, 143))}: UserWarning: Detected call of "
                    "`lr_scheduler.step()` before `optimizer.step()`.",
                )
            )
        if step % 500 == 0:
            lines.append(
                ("stdout", f"NCCL INFO Channel {step // 500 % 2:02d}/02 :    0   1   2   3")
            )
    return lines[:count]


def make_batches(
    total_lines: int = 1_000_000,
    ranks: int = 64,
    batch: int = 256,
    seed: int = 0,
    *,
    mixed: bool = True,
) -> list[LogLines]:
    """Realistic output of ``ranks`` training ranks as batches of at most ``batch`` lines.

    Each rank prints ``Loading shard k/16`` lines and a ProcessGroupNCCL init line, then per
    step ``rank r step i loss 0.xxxx lr 3e-4``, every 50 steps a throughput line (whose numbers
    change width), every 200 steps a ``UserWarning`` on stderr, every 500 an NCCL channel
    line.  ``mixed=False`` keeps only the step lines.  Each batch holds one rank's consecutive
    lines of one stream; ranks take turns.  Batch ``time`` is 0 (:func:`run` sets it).
    """
    rng = random.Random(seed)
    per_rank = [_rank_lines(r, total_lines // ranks, rng, mixed) for r in range(ranks)]
    queues: list[list[LogLines]] = []
    for r, lines in enumerate(per_rank):
        q: list[LogLines] = []
        buf: dict[Stream, list[str]] = {"stdout": [], "stderr": []}
        for stream, text in lines:
            buf[stream].append(text)
            if len(buf[stream]) == batch:
                q.append(LogLines.of(r, stream, buf[stream], "host0", 1000 + r))
                buf[stream] = []
        for stream in ("stdout", "stderr"):
            if buf[stream]:
                q.append(LogLines.of(r, stream, buf[stream], "host0", 1000 + r))
        queues.append(q)
    out: list[LogLines] = []
    for i in range(max(len(q) for q in queues)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


def _timed(fn: Callable[[], object]) -> float:
    # CPU time of this process: on a shared machine, time spent descheduled is not ours.
    gc.collect()
    start = time.process_time()
    fn()
    return time.process_time() - start


def _write(out: io.StringIO, items: Iterable[Output]) -> None:
    for item in items:
        out.write(format_output(item))
        out.write("\n")


def run(
    total_lines: int = 1_000_000,
    ranks: int = 64,
    batch: int = 256,
    *,
    window: float = 3.0,
    rate: float = 20_000.0,
    mixed: bool = True,
) -> dict[str, float]:
    """Time both paths (see the module docstring) and return lines/s and their ratio.

    ``rate`` is the synthetic output rate (lines/s of the synthetic clock) that drives the
    window schedule: with the defaults, 50 s of output in 17 windows of 3 s.  ``mixed`` is
    passed to :func:`make_batches`.  Keys: ``lines``, ``nowindow_lines_per_s``,
    ``aggregate_lines_per_s`` and ``aggregate_cost_vs_nowindow`` (time_agg / time_nowindow).
    """
    batches = make_batches(total_lines, ranks, batch, mixed=mixed)
    stamps: list[float] = []
    clock = 0.0
    for b in batches:
        clock += b.line_count / rate
        stamps.append(clock)
    batches = [
        LogLines(b.rank, b.stream, b.text, b.hostname, b.pid, 1.7e9 + t)
        for b, t in zip(batches, stamps, strict=True)
    ]
    n_lines = sum(b.line_count for b in batches)

    def nowindow() -> None:
        out = io.StringIO()
        for b in batches:
            out.write(format_output(b))
            out.write("\n")

    def aggregate() -> None:
        out = io.StringIO()
        agg = Aggregator(window)
        for b, now in zip(batches, stamps, strict=True):
            deadline = agg.next_deadline()
            if deadline is not None and now >= deadline:
                _write(out, agg.expire(now))
            _write(out, agg.add(b, now))
        _write(out, agg.drain(clock))

    times: dict[str, list[float]] = {"nowindow": [], "aggregate": []}
    for _ in range(3):
        # Fresh batches each time: LogLines caches its split lines.
        batches = [LogLines(b.rank, b.stream, b.text, b.hostname, b.pid, b.time) for b in batches]
        times["nowindow"].append(_timed(nowindow))
        times["aggregate"].append(_timed(aggregate))
    t_now = statistics.median(times["nowindow"])
    t_agg = statistics.median(times["aggregate"])
    return {
        "lines": float(n_lines),
        "nowindow_lines_per_s": n_lines / t_now,
        "aggregate_lines_per_s": n_lines / t_agg,
        "aggregate_cost_vs_nowindow": t_agg / t_now,
    }


def main() -> None:
    """Run the benchmark (the mixed output, then step lines only) and print a small table."""
    print("1,000,000 lines, 64 ranks, batches of 256, 3 s window, 20,000 lines/s, CPU time")
    results = [("mixed kinds", run()), ("step lines only", run(mixed=False))]
    print(f"{'lines/s':<24}" + "".join(f"{name:>18}" for name, _ in results))
    for key, label in [
        ("nowindow_lines_per_s", "no window"),
        ("aggregate_lines_per_s", "aggregate (3 s)"),
    ]:
        print(f"{label:<24}" + "".join(f"{r[key]:>18,.0f}" for _, r in results))
    print(
        f"{'aggregate / no window':<24}"
        + "".join(f"{r['aggregate_cost_vs_nowindow']:>17.2f}x" for _, r in results)
    )
