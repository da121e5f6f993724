"""``logmesh bench hosts``: the multi-host figures, with agents on this machine's loopback
addresses (the ``local`` launcher: real agent processes, real TLS links).

* **flush**: ``client.flush()`` p50/p99 with N agents x K idle Python ranks, and what the run
  costs: the driver's and each agent's resident memory, per rank.
* **link throughput**: K ranks printing L lines as fast as they can, through one agent and its
  TLS link, against the same ranks in a one-host mesh: wall time from the ranks started to the
  last line in the sink (ratio; every line counted).
* **lost agent**: an agent SIGKILLed, and one SIGSTOPped (silent), with ``dead_after`` D: the
  seconds from the signal until a pending ``flush()`` raises ``HostLost`` naming it.

Each trial runs in a fresh process (:func:`~._trials.run_trial`).
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from typing import Any

from ._trials import (
    CHILD,
    IDLE_CHILD,
    Result,
    _count_output,
    _maxrss_mb,
    _self_cpu,
    alternated,
    med,
    percentile,
    run_trial,
)

TARGET_HOSTS_FLUSH_P50_MS = 20.0
TARGET_LINK_THROUGHPUT = 0.8
#: A lost agent is reported within ``dead_after`` plus this many seconds.
TARGET_LOST_SLACK_S = 1.0

_TICKER = "import time\nprint('up', flush=True)\nwhile True: time.sleep(0.05)\n"


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _agent_pids(mesh: Any) -> list[int]:
    return [int(h.join_info["pid"]) for h in mesh.hosts]


# -- trials (in fresh processes) ---------------------------------------------------------------
async def _trial_hosts_flush(nnodes: int, procs: int, flushes: int, warmup: int,
                             gap: float) -> Result:
    import trio

    import trio_logmesh as lm

    t0 = time.perf_counter()
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with lm.open_host_mesh(
            [sys.executable, "-c", IDLE_CHILD], nnodes, procs, launcher="local",
            rdzv_endpoint="127.0.0.1:0", env={"PYTHONUNBUFFERED": None}, log_root=tmp,
            join_timeout=240, say=lambda _: None,
        ) as mesh:
            async with lm.open_logging_client(mesh, sink=lambda item: None) as client:
                await client.flush(timeout=240)  # every rank started and connected
                startup = time.perf_counter() - t0
                for _ in range(warmup):
                    await client.flush(timeout=60)
                    await trio.sleep(gap)
                for _ in range(flushes):
                    t = time.perf_counter()
                    await client.flush(timeout=60)
                    samples.append((time.perf_counter() - t) * 1000)
                    await trio.sleep(gap)
                agents_rss = [_rss_mb(p) for p in _agent_pids(mesh)]
                driver_rss = _rss_mb(os.getpid())
                await client.aclose()
    return {"startup_s": startup, "flush_ms": samples, "agents_rss_mb": agents_rss,
            "driver_rss_mb": driver_rss, "driver_maxrss_mb": _maxrss_mb()}


def trial_hosts_flush(nnodes: int, procs: int, flushes: int, warmup: int = 3,
                      gap: float = 0.05) -> Result:
    """``flushes`` timed flushes (ms) over ``nnodes`` local agents x ``procs`` idle ranks."""
    import trio

    return trio.run(_trial_hosts_flush, nnodes, procs, flushes, warmup, gap)


async def _trial_link(procs: int, lines: int, hosts: bool) -> Result:
    import trio_logmesh as lm

    cpu0 = _self_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sink.txt")
        cmd = [sys.executable, "-c", CHILD, str(lines)]
        env = {"PYTHONUNBUFFERED": None}
        with open(path, "w") as out:
            sink = lm.TerminalSink(stdout=out, stderr=out, color="never")
            if hosts:
                opened = lm.open_host_mesh(cmd, 1, procs, launcher="local",
                                           rdzv_endpoint="127.0.0.1:0", env=env,
                                           log_root=tmp, drop_policy="block",
                                           say=lambda _: None)
            else:
                opened = lm.open_proc_mesh(cmd, procs=procs, env=env, log_dir=tmp,
                                           announce=False, drop_policy="block")
            async with opened as mesh:
                # From the ranks started (an agent's own start-up is not the link's rate).
                t0 = time.perf_counter()
                async with lm.open_logging_client(mesh, sink=sink) as client:
                    await mesh.wait()
                    await client.flush(timeout=120)
                    wall = time.perf_counter() - t0
        self_cpu = _self_cpu() - cpu0
        delivered = _count_output(path)
    return {"wall": wall, "lines": delivered, "self_cpu": self_cpu}


def trial_link(procs: int, lines: int, hosts: bool) -> Result:
    """``procs`` ranks printing ``lines`` each through one agent's TLS link (``hosts``) or a
    one-host mesh; every line delivered is counted."""
    import trio

    return trio.run(_trial_link, procs, lines, hosts)


async def _trial_lost(dead_after: float, how: str) -> Result:
    import trio

    import trio_logmesh as lm

    with tempfile.TemporaryDirectory() as tmp:
        async with lm.open_host_mesh(
            [sys.executable, "-c", _TICKER], 2, 2, launcher="local",
            rdzv_endpoint="127.0.0.1:0", env={"PYTHONUNBUFFERED": None}, log_root=tmp,
            dead_after=dead_after, grace=1.0, say=lambda _: None,
        ) as mesh:
            async with lm.open_logging_client(mesh, sink=lambda item: None,
                                              exit_timeout=5) as client:
                await client.flush(timeout=60)
                victim = _agent_pids(mesh)[1]
                os.kill(victim, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
                t = time.perf_counter()
                try:
                    await client.flush(timeout=dead_after + 30)
                    raise RuntimeError("the lost agent was not reported")
                except lm.HostLost as exc:
                    took = time.perf_counter() - t
                    named = exc.missing_ranks == [2, 3] and len(exc.missing_hosts) == 1
                finally:
                    if how == "stop":
                        os.kill(victim, signal.SIGCONT)
                mesh.send_signal(signal.SIGKILL)
                await trio.sleep(0)
    return {"reported_s": took, "named": named}


def trial_lost(dead_after: float, how: str) -> Result:
    """Seconds from SIGKILL (``how="kill"``) or SIGSTOP (``"stop"``) of one of two agents to
    a pending flush raising ``HostLost`` that names it and its ranks."""
    import trio

    return trio.run(_trial_lost, dead_after, how)


HOST_TRIALS = {"hosts-flush": trial_hosts_flush, "link": trial_link, "lost": trial_lost}


# -- the scenario --------------------------------------------------------------------------------
def hosts_flush(nnodes: int = 8, procs: int = 16, flushes: int = 20) -> Result:
    """Flush p50/p99 and memory over ``nnodes`` local agents x ``procs`` ranks."""
    r = run_trial("hosts-flush", nnodes=nnodes, procs=procs, flushes=flushes)
    ms = r["flush_ms"]
    agents = [v for v in r["agents_rss_mb"] if v == v]
    ranks = nnodes * procs
    return {
        "figure": "flush over hosts",
        "agents_x_ranks": f"{nnodes}x{procs}",
        "startup_s": r["startup_s"],
        "flush_p50_ms": percentile(ms, 50),
        "flush_p99_ms": percentile(ms, 99),
        "driver_rss_mb": r["driver_rss_mb"],
        "driver_rss_kb_per_rank": r["driver_rss_mb"] * 1024 / ranks,
        "agent_rss_mb_median": sorted(agents)[len(agents) // 2] if agents else float("nan"),
        "agent_rss_kb_per_rank": (sorted(agents)[len(agents) // 2] * 1024 / procs
                                  if agents else float("nan")),
    }


def link_throughput(procs: int = 4, lines: int = 250_000, repeat: int = 3) -> Result:
    """Wall time of one host's ranks through a TLS link against a one-host mesh."""
    expected = procs * lines
    local, link = alternated(repeat, expected,
                             {"kind": "link", "procs": procs, "lines": lines, "hosts": False},
                             {"kind": "link", "procs": procs, "lines": lines, "hosts": True})
    lw, sw = med(link, "wall"), med(local, "wall")
    return {
        "figure": "one TLS link",
        "procs": procs,
        "lines_per_proc": lines,
        "trials_per_side": repeat,
        "link_wall_s": lw,
        "one_host_wall_s": sw,
        "link_lines_per_s": expected / lw,
        "one_host_lines_per_s": expected / sw,
        "link_over_one_host": sw / lw,
        "link_driver_cpu_s": med(link, "self_cpu"),
        "one_host_driver_cpu_s": med(local, "self_cpu"),
    }


def lost_agent(dead_after: float = 2.0, repeat: int = 3) -> Result:
    """Worst of ``repeat`` trials: a killed and a stopped agent reported after how long."""
    kill = [run_trial("lost", dead_after=dead_after, how="kill") for _ in range(repeat)]
    stop = [run_trial("lost", dead_after=dead_after, how="stop") for _ in range(repeat)]
    return {
        "figure": "lost agent",
        "dead_after_s": dead_after,
        "trials": repeat,
        "killed_reported_max_s": max(t["reported_s"] for t in kill),
        "stopped_reported_max_s": max(t["reported_s"] for t in stop),
        "named_host_and_ranks": all(t["named"] for t in kill + stop),
    }


def hosts(nnodes: int = 8, procs: int = 16, flushes: int = 20, lines: int = 250_000,
          repeat: int = 3, dead_after: float = 2.0) -> list[Result]:
    """The three multi-host figures."""
    return [hosts_flush(nnodes, procs, flushes), link_throughput(4, lines, repeat),
            lost_agent(dead_after, repeat)]


def hosts_targets(results: list[Result]) -> list[tuple[str, str, str, float, bool]]:
    """Summary rows for the multi-host targets."""
    rows = []
    for r in results:
        if r["figure"] == "flush over hosts":
            v = r["flush_p50_ms"]
            rows.append(("hosts", f"flush p50 ms ({r['agents_x_ranks']} on loopback)",
                         f"<= {TARGET_HOSTS_FLUSH_P50_MS:g}", v,
                         v <= TARGET_HOSTS_FLUSH_P50_MS))
        elif r["figure"] == "one TLS link":
            v = r["link_over_one_host"]
            rows.append(("hosts", f"throughput one TLS link / one host (P={r['procs']})",
                         f">= {TARGET_LINK_THROUGHPUT}", v, v >= TARGET_LINK_THROUGHPUT))
        elif r["figure"] == "lost agent":
            d = r["dead_after_s"]
            v = max(r["killed_reported_max_s"], r["stopped_reported_max_s"])
            rows.append(("hosts", f"lost agent reported, s (dead_after {d:g})",
                         f"<= {d + TARGET_LOST_SLACK_S:g}", v,
                         v <= d + TARGET_LOST_SLACK_S and bool(r["named_host_and_ranks"])))
    return rows
