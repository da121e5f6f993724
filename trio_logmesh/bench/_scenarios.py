"""Benchmark scenarios: trials of ours and a baseline alternated in fresh processes, medians,
and the ratios the targets are judged on.

* ``throughput``: P children print L lines of ~40 bytes as fast as they can, no window, the
  driver's sink the terminal sink writing into a file; every line must arrive.  Against the
  bare ``selectors`` reader: wall-time ratio, the children's CPU, the driver's CPU.
* ``aggregate``: the same with a 3 s window against without one: the driver's CPU ratio.
* ``cpu``: the children's CPU seconds under the mesh over under the bare reader.
* ``latency``: a block-buffered child prints one line every 10 ms; print-to-sink p50/p99.
* ``flush``: ``await client.flush()`` with 4, 32 and 128 idle Python children.
* ``memory``: the driver's RSS while 16 children flood a slow sink (``"drop"`` policy).
* ``stall``: ``logmesh run`` with stdout a pipe nobody reads against stdout into a file: the
  children must finish and their files be complete.
* ``idle``: what idle Python ranks (their agents) and the driver cost, in percent of a core.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ._report import FLAT_MB, TARGET_FLUSH_P50_MS
from ._trials import Result, alternated, med, percentile, run_trial


def throughput(
    procs: int = 4, lines: int = 250_000, repeat: int = 3, window: float | None = None
) -> Result:
    """Alternate ``repeat`` trials of ours and the baseline; return medians and ratios.

    Raises ``RuntimeError`` if any trial did not deliver all ``procs * lines`` lines.
    """
    expected = procs * lines
    base, ours = alternated(repeat, expected,
                            {"kind": "baseline", "procs": procs, "lines": lines},
                            {"kind": "ours", "procs": procs, "lines": lines, "window": window})
    ours_wall, base_wall = med(ours, "wall"), med(base, "wall")
    ours_cpu, base_cpu = med(ours, "child_cpu"), med(base, "child_cpu")
    return {
        "procs": procs,
        "lines_per_proc": lines,
        "window_s": window,
        "trials_per_side": repeat,
        "lines_delivered": ours[0]["lines"],
        "ours_wall_s": ours_wall,
        "baseline_wall_s": base_wall,
        "ours_lines_per_s": expected / ours_wall,
        "baseline_lines_per_s": expected / base_wall,
        "throughput_ratio": base_wall / ours_wall,
        "ours_child_cpu_s": ours_cpu,
        "baseline_child_cpu_s": base_cpu,
        "child_cpu_ratio": ours_cpu / base_cpu,
        "ours_driver_cpu_s": med(ours, "self_cpu"),
        "baseline_driver_cpu_s": med(base, "self_cpu"),
        "ours_driver_cpu_s_per_m_lines": med(ours, "self_cpu") / expected * 1e6,
        "baseline_driver_cpu_s_per_m_lines": med(base, "self_cpu") / expected * 1e6,
    }


def aggregate(procs: int = 4, lines: int = 250_000, repeat: int = 3,
              window: float = 3.0) -> Result:
    """Alternate trials of ours with a ``window`` and without; the driver's CPU ratio.

    Raises ``RuntimeError`` if any trial did not account for every line.
    """
    plain, windowed = alternated(repeat, procs * lines,
                                 {"kind": "ours", "procs": procs, "lines": lines, "window": None},
                                 {"kind": "ours", "procs": procs, "lines": lines,
                                  "window": window})
    w_cpu, p_cpu = med(windowed, "self_cpu"), med(plain, "self_cpu")
    return {
        "procs": procs,
        "lines_per_proc": lines,
        "window_s": window,
        "trials_per_side": repeat,
        "lines_accounted": windowed[0]["lines"],
        "window_wall_s": med(windowed, "wall"),
        "nowindow_wall_s": med(plain, "wall"),
        "window_driver_cpu_s": w_cpu,
        "nowindow_driver_cpu_s": p_cpu,
        "driver_cpu_window_over_nowindow": w_cpu / p_cpu,
    }


def cpu_from_throughput(result: Result) -> Result:
    """The child-CPU view of a :func:`throughput` result."""
    n = result["procs"] * result["lines_per_proc"]
    ours, base = result["ours_child_cpu_s"], result["baseline_child_cpu_s"]
    return {
        "procs": result["procs"],
        "lines_per_proc": result["lines_per_proc"],
        "ours_child_cpu_s": ours,
        "baseline_child_cpu_s": base,
        "child_cpu_ratio": ours / base,
        "ours_child_us_per_line": ours / n * 1e6,
        "baseline_child_us_per_line": base / n * 1e6,
        "ours_driver_cpu_s": result["ours_driver_cpu_s"],
        "baseline_driver_cpu_s": result["baseline_driver_cpu_s"],
        "ours_total_cpu_s": ours + result["ours_driver_cpu_s"],
        "baseline_total_cpu_s": base + result["baseline_driver_cpu_s"],
    }


def cpu(procs: int = 4, lines: int = 250_000, repeat: int = 3) -> Result:
    """Children's CPU seconds under the mesh against under plain pipes (throughput trials)."""
    return cpu_from_throughput(throughput(procs, lines, repeat))


def latency(lines: int = 300, repeat: int = 2, interval: float = 0.01) -> Result:
    """p50/p99 of print-to-sink latency (ms) of a block-buffered child printing every
    ``interval`` s, ours against a plain pipe reader; samples of all trials pooled."""
    ours: list[float] = []
    base: list[float] = []
    for _ in range(repeat):
        base.extend(run_trial("latency-baseline", lines=lines, interval=interval)[
            "latencies_ms"])
        ours.extend(run_trial("latency-ours", lines=lines, interval=interval)["latencies_ms"])
    for got in (ours, base):
        if len(got) != lines * repeat:
            raise RuntimeError(f"lost lines: {len(got)} of {lines * repeat} arrived")
    return {
        "lines_per_trial": lines,
        "interval_ms": interval * 1000,
        "trials_per_side": repeat,
        "ours_p50_ms": percentile(ours, 50),
        "ours_p99_ms": percentile(ours, 99),
        "ours_max_ms": max(ours),
        "baseline_p50_ms": percentile(base, 50),
        "baseline_p99_ms": percentile(base, 99),
        "baseline_max_ms": max(base),
    }


def flush(procs: Sequence[int] = (4, 32, 128), flushes: int = 20, repeat: int = 1,
          warmup: int = 3) -> list[Result]:
    """``client.flush()`` latency with each number of idle Python children (one column each);
    ``repeat`` trials per size, samples pooled."""
    results = []
    for p in procs:
        trials = [run_trial("flush", procs=p, flushes=flushes, warmup=warmup)
                  for _ in range(repeat)]
        samples = [ms for t in trials for ms in t["flush_ms"]]
        wall = sum(t["wall"] for t in trials)
        results.append({
            "idle_children": p,
            "flushes": len(samples),
            "startup_s": statistics.median(t["startup_s"] for t in trials),
            "flush_p50_ms": percentile(samples, 50),
            "flush_p99_ms": percentile(samples, 99),
            "flush_max_ms": max(samples),
            "target_p50_ms": TARGET_FLUSH_P50_MS.get(p),
            # While flushing every ``gap`` s: the driver's CPU per flush, and what the "idle"
            # children burned meanwhile (percent of one core, all children together).
            "driver_cpu_ms_per_flush": sum(t["driver_cpu"] for t in trials) / len(samples) * 1000,
            "children_cpu_pct_of_core": sum(t["children_cpu"] for t in trials) / wall * 100,
        })
    return results


def memory(procs: int = 16, seconds: float = 30.0, sink_delay: float = 0.001,
           sample: float = 0.5) -> Result:
    """The driver's RSS while ``procs`` children flood output into a slow sink."""
    t = run_trial("memory", procs=procs, seconds=seconds, sink_delay=sink_delay, sample=sample)
    rss = [mb for _, mb in t["samples"]]
    half = len(rss) // 2
    growth = max(rss[half:]) - max(rss[:half]) if half else 0.0
    peak = max(t["maxrss_mb"], max(rss))
    return {
        "children": procs,
        "seconds": seconds,
        "sink_sleep_ms": sink_delay * 1000,
        "rss_before_mesh_mb": t["rss_before_mb"],
        "rss_first_sample_mb": rss[0],
        "rss_at_25pct_mb": rss[len(rss) // 4],
        "rss_at_50pct_mb": rss[half],
        "rss_at_75pct_mb": rss[3 * len(rss) // 4],
        "rss_last_sample_mb": rss[-1],
        "rss_max_sample_mb": max(rss),
        "peak_maxrss_mb": peak,
        "growth_2nd_half_mb": growth,
        "flat": growth <= FLAT_MB,
        "samples": len(rss),
        "lines_written": t["written"],
        "lines_delivered": t["delivered"],
        "lines_dropped_notices": t["dropped"],
        "drop_notices": t["drop_notices"],
        # Neither shown nor reported dropped yet when the live view stopped: queued in the
        # host's outbox, in flight, or dropped behind a gap whose notice had not arrived.
        "lines_not_shown_yet": t["written"] - t["delivered"] - t["dropped"],
        "written_lines_per_s": t["written"] / seconds,
        "shown_lines_per_s": t["delivered"] / seconds,
        "sink_calls": t["sink_calls"],
        "log_files_mb": t["log_bytes"] / 1e6,
    }




def stall(procs: int = 2, lines: int = 1_000_000, seconds: float = 25.0) -> Result:
    """``logmesh run`` with stdout a pipe nobody reads, against stdout into a file."""
    normal = run_trial("stall", procs=procs, lines=lines, seconds=seconds, stalled=False)
    stalled = run_trial("stall", procs=procs, lines=lines, seconds=seconds, stalled=True)
    return {
        "procs": procs,
        "lines_per_proc": lines,
        "limit_s": seconds,
        "stalled_children_finished": stalled["finished"],
        "stalled_finish_s": stalled["finish_s"],
        "stalled_file_bytes": stalled["file_bytes"],
        "stalled_expected_bytes": stalled["expected_bytes"],
        "stalled_files_complete": stalled["finished"] == procs
        and stalled["file_bytes"] == stalled["expected_bytes"] > 0,
        "file_finish_s": normal["finish_s"],
        "stalled_over_file_time": stalled["finish_s"] / normal["finish_s"],
    }


def idle(procs: int = 128, seconds: float = 5.0) -> Result:
    """What ``procs`` idle Python ranks and the driver cost, in percent of one core."""
    t = run_trial("idle", procs=procs, seconds=seconds)
    return {
        "idle_children": procs,
        "seconds": seconds,
        "children_cpu_pct_of_core": t["children_cpu_s"] / t["wall"] * 100,
        "driver_cpu_pct_of_core": t["driver_cpu_s"] / t["wall"] * 100,
    }
