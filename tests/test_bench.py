"""``logmesh bench``: tiny scenarios, checking shapes, completeness and the target rules.

No timing assertions: the machine is shared and noisy; benchmarks measure, tests check.
"""

from __future__ import annotations

import subprocess
import sys

from trio_logmesh.bench import _report, _scenarios, _trials
from trio_logmesh.cli._main import build_parser

THROUGHPUT_KEYS = {
    "procs", "lines_per_proc", "lines_delivered", "ours_wall_s", "baseline_wall_s",
    "ours_lines_per_s", "baseline_lines_per_s", "throughput_ratio", "ours_child_cpu_s",
    "baseline_child_cpu_s", "child_cpu_ratio", "ours_driver_cpu_s",
    "ours_driver_cpu_s_per_m_lines",
}
FLUSH_KEYS = {"idle_children", "flushes", "startup_s", "flush_p50_ms", "flush_p99_ms",
              "flush_max_ms", "target_p50_ms"}


def test_throughput_smoke_counts_every_line_and_judges_targets_at_p4() -> None:
    # Trials run in fresh processes, as in the real benchmark; every line must be counted.
    r = _scenarios.throughput(procs=2, lines=2000, repeat=1)
    assert THROUGHPUT_KEYS <= set(r)
    assert r["lines_delivered"] == 4000
    cpu = _scenarios.cpu_from_throughput(r)
    assert cpu["child_cpu_ratio"] == r["ours_child_cpu_s"] / r["baseline_child_cpu_s"]
    rows = _report.targets("throughput", [r]) + _report.targets("cpu", [cpu])
    assert [row[0] for row in rows] == ["cpu"]  # the throughput targets are judged at P=4 only
    r4 = dict(r, procs=4, throughput_ratio=0.9, ours_driver_cpu_s_per_m_lines=0.2)
    judged = {row[1]: row[4] for row in _report.targets("throughput", [r4])}
    assert judged == {"ratio ours/baseline (P=4)": True,
                      "driver CPU s per million lines (P=4)": False}
    table = _report.format_targets(_report.targets("throughput", [r4]))
    assert "PASS" in table and "MISS" in table


def test_aggregate_trial_accounts_for_every_line_in_groups() -> None:
    t = _trials.trial_ours(2, 1500, window=3.0)
    assert t["lines"] == 3000  # lines shown live plus the counts of the group lines
    assert {"wall", "child_cpu", "self_cpu"} <= set(t)


def test_flush_smoke() -> None:
    rows = _scenarios.flush(procs=(2,), flushes=3, warmup=1)
    assert len(rows) == 1
    assert FLUSH_KEYS <= set(rows[0])
    assert rows[0]["idle_children"] == 2 and rows[0]["flushes"] == 3
    assert rows[0]["flush_p50_ms"] > 0
    assert _report.targets("flush", rows) == []  # targets exist for 32 and 128 children only


def test_stall_trial_children_finish_and_files_are_complete() -> None:
    t = _trials.trial_stall(2, 20_000, seconds=60, stalled=True)
    assert t["finished"] == 2
    assert t["file_bytes"] == t["expected_bytes"] > 0


def test_percentile() -> None:
    assert _trials.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert _trials.percentile([0.0, 10.0], 99) == 9.9


def test_parser_and_that_parsing_does_not_import_the_benchmarks() -> None:
    args = build_parser().parse_args(["bench", "all", "-p", "4,16", "-p", "32", "--seconds", "5"])
    assert args.scenario == "all" and args.procs == [4, 16, 32] and args.seconds == 5.0
    args = build_parser().parse_args(["bench"])
    assert args.scenario == "throughput" and args.procs is None
    code = ("import sys; from trio_logmesh.cli._main import build_parser; "
            "build_parser().parse_args(['run', '-n', '1', '--', 'true']); "
            "print(sorted(m for m in sys.modules if m.startswith('trio_logmesh.bench')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "['trio_logmesh.bench', 'trio_logmesh.bench._options']"


def test_hosts_smoke_names_the_lost_host_and_judges_three_targets() -> None:
    from trio_logmesh.bench import _hosts

    results = _hosts.hosts(nnodes=2, procs=2, flushes=3, lines=3000, repeat=1, dead_after=1.0)
    flush, link, lost = results
    assert flush["agents_x_ranks"] == "2x2" and flush["flush_p50_ms"] > 0
    assert link["lines_per_proc"] == 3000 and link["link_over_one_host"] > 0
    assert lost["named_host_and_ranks"] is True
    assert lost["killed_reported_max_s"] > 0 and lost["stopped_reported_max_s"] > 0
    rows = _hosts.hosts_targets(results)
    assert [r[1].split(" (")[0] for r in rows] == [
        "flush p50 ms", "throughput one TLS link / one host", "lost agent reported, s"]
