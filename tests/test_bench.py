"""Smoke tests of ``logmesh bench``: tiny scenarios, checking shapes and completeness only.

No timing assertions: the machine is shared and noisy.
"""

from __future__ import annotations

from trio_logmesh import _bench
from trio_logmesh._cli import build_parser

THROUGHPUT_KEYS = {
    "procs", "lines_per_proc", "lines_delivered", "ours_wall_s", "baseline_wall_s",
    "ours_lines_per_s", "baseline_lines_per_s", "throughput_ratio", "ours_child_cpu_s",
    "baseline_child_cpu_s", "child_cpu_overhead", "ours_driver_cpu_s",
}
FLUSH_KEYS = {"idle_children", "flushes", "startup_s", "flush_p50_ms", "flush_p99_ms",
              "flush_max_ms", "target_p50_ms"}


def test_throughput_smoke() -> None:
    # Trials run in fresh processes, as in the real benchmark; every line must be counted.
    r = _bench.throughput(procs=2, lines=2000, repeat=1)
    assert THROUGHPUT_KEYS <= set(r)
    assert r["lines_delivered"] == 4000
    assert r["throughput_ratio"] > 0
    cpu = _bench.cpu_from_throughput(r)
    assert {"child_cpu_overhead_pct", "ours_child_cpu_s", "baseline_child_cpu_s"} <= set(cpu)
    rows = _bench.targets("throughput", [r]) + _bench.targets("cpu", [cpu])
    assert [row[0] for row in rows] == ["cpu"]  # the throughput target is judged at P=4 only
    assert "PASS" in _bench.format_targets(rows) or "MISS" in _bench.format_targets(rows)
    assert "lines_delivered" in _bench.format_table([r, r])


def test_aggregate_trial_in_process_counts_every_line() -> None:
    # In this process: lines arrive as LogLines or inside GroupLine counts, all of them.
    t = _bench.trial_ours(2, 1500, window=3.0)
    assert t["lines"] == 3000
    assert {"wall", "child_cpu", "self_cpu"} <= set(t)


def test_flush_smoke() -> None:
    rows = _bench.flush(procs=(2,), flushes=3, warmup=1)
    assert len(rows) == 1
    assert FLUSH_KEYS <= set(rows[0])
    assert rows[0]["idle_children"] == 2 and rows[0]["flushes"] == 3
    assert rows[0]["flush_p50_ms"] > 0
    assert _bench.targets("flush", rows) == []  # targets exist for 32 and 128 children only


def test_flush_trial_in_process() -> None:
    t = _bench.trial_flush(2, flushes=2, warmup=0, gap=0.0)
    assert len(t["flush_ms"]) == 2 and t["startup_s"] > 0


def test_percentile() -> None:
    assert _bench.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert _bench.percentile([0.0, 10.0], 99) == 9.9


def test_parser() -> None:
    args = build_parser().parse_args(["bench", "all", "-p", "4,16", "-p", "32", "--seconds", "5"])
    assert args.scenario == "all" and args.procs == [4, 16, 32] and args.seconds == 5.0
    args = build_parser().parse_args(["bench"])
    assert args.scenario == "throughput" and args.procs is None
