"""The benchmark targets, and the tables ``logmesh bench`` prints."""

from __future__ import annotations

import math
from typing import Any

from ._trials import Result

TARGET_THROUGHPUT = 0.85  # ours over the bare reader, lossless, no window
TARGET_CHILD_CPU = 1.03  # the children's CPU under the mesh over under the bare reader
TARGET_DRIVER_CPU_PER_M = 0.10  # driver CPU seconds per million lines, no window
TARGET_WINDOW_COST = 1.2  # driver CPU with a 3 s window over without
TARGET_FLUSH_P50_MS = {32: 5.0, 128: 20.0}
TARGET_LATENCY_P99_MS = 50.0
TARGET_MEMORY_MB = 150.0
#: RSS "flat": the highest sample of the second half exceeds that of the first by at most this.
FLAT_MB = 10.0

#: One summary row: scenario, metric, target text, measured value, met?
Target = tuple[str, str, str, float, bool]


def targets(scenario: str, results: list[Result]) -> list[Target]:
    """The summary rows of the targets that ``results`` of ``scenario`` can be judged on."""
    rows: list[Target] = []
    for r in results:
        if scenario == "throughput" and r["procs"] == 4:
            v = r["throughput_ratio"]
            rows.append(("throughput", "ratio ours/baseline (P=4)", f">= {TARGET_THROUGHPUT}",
                         v, v >= TARGET_THROUGHPUT))
            v = r["ours_driver_cpu_s_per_m_lines"]
            rows.append(("throughput", "driver CPU s per million lines (P=4)",
                         f"<= {TARGET_DRIVER_CPU_PER_M}", v, v <= TARGET_DRIVER_CPU_PER_M))
        elif scenario == "aggregate":
            v = r["driver_cpu_window_over_nowindow"]
            rows.append(("aggregate", f"driver CPU, {r['window_s']:g} s window / none",
                         f"<= {TARGET_WINDOW_COST}", v, v <= TARGET_WINDOW_COST))
        elif scenario == "cpu":
            v = r["child_cpu_ratio"]
            rows.append(("cpu", f"children's CPU ours/baseline (P={r['procs']})",
                         f"<= {TARGET_CHILD_CPU}", v, v <= TARGET_CHILD_CPU))
        elif scenario == "latency":
            v = r["ours_p99_ms"]
            rows.append(("latency", "p99 ms", f"<= {TARGET_LATENCY_P99_MS:.0f}", v,
                         v <= TARGET_LATENCY_P99_MS))
        elif scenario == "flush" and r["idle_children"] in TARGET_FLUSH_P50_MS:
            goal = TARGET_FLUSH_P50_MS[r["idle_children"]]
            v = r["flush_p50_ms"]
            rows.append(("flush", f"p50 ms ({r['idle_children']} idle children)",
                         f"<= {goal:g}", v, v <= goal))
        elif scenario == "memory":
            v = r["peak_maxrss_mb"]
            rows.append(("memory", "driver peak RSS MB", f"< {TARGET_MEMORY_MB:.0f}", v,
                         v < TARGET_MEMORY_MB))
            g = r["growth_2nd_half_mb"]
            rows.append(("memory", "RSS growth, 2nd half over 1st (MB)",
                         f"<= {FLAT_MB:.0f} (flat)", g, bool(r["flat"])))
        elif scenario == "stall":
            rows.append(("stall", f"stdout unread: children finish, files complete "
                                  f"(in {r['limit_s']:g} s)", "yes",
                         float(r["stalled_files_complete"]), bool(r["stalled_files_complete"])))
    return rows


# -- output ------------------------------------------------------------------------------------
def format_table(rows: list[Result]) -> str:
    """Render result dicts as an aligned text table: one line per key, one column per dict."""
    keys = list(rows[0])
    cells = [[k] + [_fmt(r.get(k)) for r in rows] for k in keys]
    width = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return "\n".join(
        "  ".join(c[i].ljust(width[i]) for i in range(len(c))).rstrip() for c in cells
    )


def format_targets(rows: list[Target]) -> str:
    """Render target rows as an aligned table with a PASS/MISS column."""
    cells = [["scenario", "metric", "target", "measured", "result"]]
    cells += [[s, m, t, _fmt(v), "PASS" if ok else "MISS"] for s, m, t, v, ok in rows]
    width = [max(len(c[i]) for c in cells) for i in range(5)]
    return "\n".join(
        "  ".join(c[i].ljust(width[i]) for i in range(5)).rstrip() for c in cells
    )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


