"""Benchmark: the aggregator against printing every line, and against Levenshtein grouping.

``python -m trio_logmesh._bench_aggregate`` prints a small table.  :func:`run` builds realistic
output of a training job (64 ranks printing step/loss lines, with throughput lines, NCCL lines,
``Loading shard`` lines and Python warnings on stderr mixed in) as :class:`LogLines` batches,
then times on one core (process CPU time, pinned with ``sched_setaffinity`` where available),
alternating three repetitions and keeping the medians:

* ``nowindow``: :func:`format_output` of every batch into an ``io.StringIO`` (the path without
  aggregation);
* ``aggregate``: an :class:`Aggregator` with a 3 s window, driven the way the client drives it
  (``expire`` when the synthetic clock passes ``next_deadline()``, ``add`` for every batch,
  ``drain`` at the end), its outputs formatted into an ``io.StringIO`` the same way;
* ``levenshtein``: :class:`LevenshteinGrouper` (the similarity bucketing Monarch uses,
  reimplemented here) on the first ``lev_sample`` lines, flushed at the same window
  boundaries, extrapolated to a per-line cost.

:class:`LevenshteinGrouper` is also the reference the tests compare our grouping with.
"""

from __future__ import annotations

import gc
import io
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable

from ._aggregate import Aggregator
from ._records import LogLines, Output, Stream, format_output

__all__ = ["LevenshteinGrouper", "levenshtein", "main", "make_batches", "run"]


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between ``a`` and ``b``.

    Bit-parallel (Myers 1999, in Hyyrö's formulation for global distance): O(len(a)) big-int
    operations per character of ``b`` instead of a Python loop per DP cell, so the baseline is
    as fast as pure Python allows.
    """
    if not a:
        return len(b)
    if not b:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    m = len(a)
    full = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv & full
    return score


class LevenshteinGrouper:
    """Similarity bucketing as Monarch's log client does it, for comparison only.

    A line joins the first group whose *first* line is within normalized edit distance
    (``levenshtein(a, b) / max(len(a), len(b))``) strictly below ``threshold`` (0.15); else it
    starts a group.  :meth:`flush` shows each group as its first line followed by
    ``[N similar log lines]``, N being the number of lines in the group.
    """

    def __init__(self, threshold: float = 0.15) -> None:
        """Group with normalized distance ``< threshold``."""
        self.threshold = threshold
        self._groups: list[list[str | int]] = []  # [first line, count]

    @staticmethod
    def distance(a: str, b: str) -> float:
        """Normalized edit distance in [0, 1]."""
        longest = max(len(a), len(b))
        return levenshtein(a, b) / longest if longest else 0.0

    def add(self, line: str) -> None:
        """Put ``line`` in the first group it is similar to, or in a new group."""
        for group in self._groups:
            first = group[0]
            assert isinstance(first, str)
            if self.distance(line, first) < self.threshold:
                group[1] = int(group[1]) + 1
                return
        self._groups.append([line, 1])

    def groups(self) -> list[tuple[str, int]]:
        """The current groups as ``(first line, count)``, oldest first."""
        return [(str(first), int(count)) for first, count in self._groups]

    def flush(self) -> list[str]:
        """Render and forget the current groups."""
        out = [f"{first} [{count} similar log lines]" for first, count in self.groups()]
        self._groups = []
        return out


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
                q.append(LogLines(r, stream, tuple(buf[stream]), "host0", 1000 + r))
                buf[stream] = []
        for stream in ("stdout", "stderr"):
            if buf[stream]:
                q.append(LogLines(r, stream, tuple(buf[stream]), "host0", 1000 + r))
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
    lev_sample: int = 20_000,
    *,
    window: float = 3.0,
    rate: float = 20_000.0,
    mixed: bool = True,
) -> dict[str, float]:
    """Time the three paths (see the module docstring) and return lines/s and ratios.

    ``rate`` is the synthetic output rate (lines/s of the synthetic clock) that drives the
    window schedule: with the defaults, 50 s of output in 17 windows of 3 s.  ``mixed`` is
    passed to :func:`make_batches`.  Keys:
    ``lines``, ``nowindow_lines_per_s``, ``aggregate_lines_per_s``,
    ``levenshtein_lines_per_s``, ``aggregate_cost_vs_nowindow`` (time_agg / time_nowindow)
    and ``speedup_vs_levenshtein`` (per-line cost of Levenshtein / of the aggregator).
    """
    batches = make_batches(total_lines, ranks, batch, mixed=mixed)
    stamps: list[float] = []
    clock = 0.0
    for b in batches:
        clock += len(b.lines) / rate
        stamps.append(clock)
    batches = [
        LogLines(b.rank, b.stream, b.lines, b.hostname, b.pid, 1.7e9 + t)
        for b, t in zip(batches, stamps, strict=True)
    ]
    n_lines = sum(len(b.lines) for b in batches)
    flat: list[tuple[float, str]] = [
        (t, ln) for b, t in zip(batches, stamps, strict=True) for ln in b.lines
    ][:lev_sample]

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

    def lev() -> None:
        out = io.StringIO()
        grouper = LevenshteinGrouper()
        deadline = None
        for now, line in flat:
            if deadline is not None and now >= deadline:
                out.write("\n".join(grouper.flush()))
                deadline = None
            if deadline is None:
                deadline = now + window
            grouper.add(line)
        out.write("\n".join(grouper.flush()))

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        times: dict[str, list[float]] = {"nowindow": [], "aggregate": [], "levenshtein": []}
        for _ in range(3):
            times["nowindow"].append(_timed(nowindow))
            times["aggregate"].append(_timed(aggregate))
            times["levenshtein"].append(_timed(lev))
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
    t_now = statistics.median(times["nowindow"])
    t_agg = statistics.median(times["aggregate"])
    t_lev_line = statistics.median(times["levenshtein"]) / max(1, len(flat))
    return {
        "lines": float(n_lines),
        "nowindow_lines_per_s": n_lines / t_now,
        "aggregate_lines_per_s": n_lines / t_agg,
        "levenshtein_lines_per_s": 1.0 / t_lev_line,
        "aggregate_cost_vs_nowindow": t_agg / t_now,
        "speedup_vs_levenshtein": t_lev_line / (t_agg / n_lines),
    }


def main() -> None:
    """Run the benchmark (the mixed output, then step lines only) and print a small table."""
    print("1,000,000 lines, 64 ranks, batches of 256, 3 s window, 20,000 lines/s, one core")
    results = [("mixed kinds", run()), ("step lines only", run(mixed=False, lev_sample=5_000))]
    print(f"{'lines/s':<24}" + "".join(f"{name:>18}" for name, _ in results))
    for key, label in [
        ("nowindow_lines_per_s", "no window"),
        ("aggregate_lines_per_s", "aggregate (3 s)"),
        ("levenshtein_lines_per_s", "levenshtein"),
    ]:
        print(f"{label:<24}" + "".join(f"{r[key]:>18,.0f}" for _, r in results))
    print(
        f"{'aggregate / no window':<24}"
        + "".join(f"{r['aggregate_cost_vs_nowindow']:>17.2f}x" for _, r in results)
    )
    print(
        f"{'speedup vs levenshtein':<24}"
        + "".join(f"{r['speedup_vs_levenshtein']:>17,.0f}x" for _, r in results)
    )


if __name__ == "__main__":
    main()
