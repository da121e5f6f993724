"""Benchmark: the folding engines alone, against Monarch's grouping (``logmesh bench grouping``).

:func:`run` builds realistic output of a training job (64 ranks printing step/loss lines, with
throughput lines, NCCL lines, ``Loading shard`` lines and Python warnings on stderr mixed in)
as :class:`LogLines` batches, then times, in this process's CPU time (time spent descheduled
on a shared machine is not counted), the median of three alternating repetitions of:

* ``nowindow``: :func:`format_output` of every batch (the path without folding);
* ``ranks``: the default fold (:class:`~trio_logmesh.view._align.Aligner`, 3 s window, its
  flood valve off so the engine itself is measured), driven the way the client drives it:
  ``expire`` when the synthetic clock passes ``next_deadline()``, ``add`` for every batch,
  ``drain`` at the end, its output formatted;
* ``repeats``: the ``fold="repeats"`` engine (:class:`Aggregator`), the same way;
* ``monarch``: Monarch's edit-distance grouping (``_peers.MonarchGrouper``), one line at a
  time, on the first ``monarch_lines`` lines only (it is far slower), in 3 s windows.

The figure with a target is ``ranks`` lines/s over ``monarch`` lines/s (>= 20).
"""

from __future__ import annotations

import gc
import io
import random
import statistics
import time
from collections.abc import Callable, Iterable

from ..view import _align
from ..view._aggregate import Aggregator
from ..view._records import LogLines, Output, Stream, format_output
from ._peers import MonarchGrouper

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


def _drive(engine: _align.Aligner | Aggregator, batches: list[LogLines],
           stamps: list[float]) -> None:
    out = io.StringIO()
    for b, now in zip(batches, stamps, strict=True):
        deadline = engine.next_deadline()
        if deadline is not None and now >= deadline:
            _write(out, engine.expire(now))
        _write(out, engine.add(b, now))
    _write(out, engine.drain(stamps[-1]))


def run(
    total_lines: int = 1_000_000,
    ranks: int = 64,
    batch: int = 256,
    *,
    window: float = 3.0,
    rate: float = 20_000.0,
    mixed: bool = True,
    monarch_lines: int = 5_000,
) -> dict[str, float]:
    """Time the paths (see the module docstring); return lines/s of each and the ratios.

    ``rate`` is the synthetic output rate (lines/s of the synthetic clock) that drives the
    windows.  Keys: ``lines``, ``<path>_lines_per_s`` for each path, ``ranks_cost_vs_nowindow``,
    ``repeats_cost_vs_nowindow`` and ``ranks_over_monarch``.
    """
    batches = make_batches(total_lines, ranks, batch, mixed=mixed)
    stamps: list[float] = []
    clock = 0.0
    for b in batches:
        clock += b.line_count / rate
        stamps.append(clock)
    n_lines = sum(b.line_count for b in batches)
    monarch_input: list[tuple[float, str]] = []
    for b, t in zip(batches, stamps, strict=True):
        monarch_input.extend((t, line) for line in b.lines)
        if len(monarch_input) >= monarch_lines:
            break
    monarch_input = monarch_input[:monarch_lines]

    def fresh() -> list[LogLines]:  # LogLines caches its split lines: new ones every time
        return [LogLines(b.rank, b.stream, b.data, b.hostname, b.pid, 1.7e9 + t)
                for b, t in zip(batches, stamps, strict=True)]

    def nowindow() -> None:
        out = io.StringIO()
        for b in work:
            out.write(format_output(b))
            out.write("\n")

    def ranks_fold() -> None:
        flood = _align.FLOOD_LINES
        _align.FLOOD_LINES = 1 << 62  # the engine itself, not the valve
        try:
            _drive(_align.Aligner(window, range(ranks)), work, stamps)
        finally:
            _align.FLOOD_LINES = flood

    def repeats_fold() -> None:
        _drive(Aggregator(window), work, stamps)

    def monarch() -> None:
        grouper = MonarchGrouper()
        end = monarch_input[0][0] + window
        for t, line in monarch_input:
            if t >= end:
                grouper.flush()
                end = t + window
            grouper.add(line)
        grouper.flush()

    times: dict[str, list[float]] = {"nowindow": [], "ranks": [], "repeats": [], "monarch": []}
    for _ in range(3):
        for name, fn in (("nowindow", nowindow), ("ranks", ranks_fold),
                         ("repeats", repeats_fold)):
            work = fresh()
            times[name].append(_timed(fn))
    times["monarch"].append(_timed(monarch))  # once: it is slow and steady
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"lines": float(n_lines), "monarch_lines": float(len(monarch_input))}
    for name in ("nowindow", "ranks", "repeats"):
        result[f"{name}_lines_per_s"] = n_lines / med[name]
    result["monarch_lines_per_s"] = len(monarch_input) / med["monarch"]
    result["ranks_cost_vs_nowindow"] = med["ranks"] / med["nowindow"]
    result["repeats_cost_vs_nowindow"] = med["repeats"] / med["nowindow"]
    result["ranks_over_monarch"] = result["ranks_lines_per_s"] / result["monarch_lines_per_s"]
    return result


TARGET_OVER_MONARCH = 20.0


def main(total_lines: int = 1_000_000) -> bool:
    """Run the benchmark (the mixed output, then step lines only), print a table; return
    whether the target (the default fold >= 20x Monarch's grouping, both) is met."""
    print(f"{total_lines:,} lines, 64 ranks, batches of 256, 3 s window, 20,000 lines/s, CPU time")
    results = [("mixed kinds", run(total_lines)), ("step lines only", run(total_lines, mixed=False))]
    print(f"{'lines/s':<32}" + "".join(f"{name:>18}" for name, _ in results))
    for key, label in [
        ("nowindow_lines_per_s", "no window"),
        ("ranks_lines_per_s", "fold ranks (default, engine)"),
        ("repeats_lines_per_s", "fold repeats"),
        ("monarch_lines_per_s", "Monarch's grouping (5k lines)"),
    ]:
        print(f"{label:<32}" + "".join(f"{r[key]:>18,.0f}" for _, r in results))
    print(f"{'fold ranks / Monarch':<32}"
          + "".join(f"{r['ranks_over_monarch']:>17.1f}x" for _, r in results))
    met = all(r["ranks_over_monarch"] >= TARGET_OVER_MONARCH for _, r in results)
    print(f"target: fold ranks >= {TARGET_OVER_MONARCH:g}x Monarch's grouping: "
          f"{'met' if met else 'MISSED'}")
    return met
