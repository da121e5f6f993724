"""Benchmark trials: each runs in a fresh Python process and prints one JSON line.

A fresh process per trial, so ``RUSAGE_CHILDREN`` measures exactly that trial's children and
``ru_maxrss`` exactly that trial's driver.  Children are block-buffered, as real users' are:
``PYTHONUNBUFFERED`` is removed from their environment.  The baseline of the pipeline trials
is the same children on plain ``subprocess`` pipes read by a ``selectors`` loop that only
counts newlines.  :func:`run_trial` starts one (``python -m trio_logmesh.bench KIND PARAMS``).
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

#: One result table column: metric name -> value (int, float, str, bool or None).
Result = dict[str, Any]

CHILD = r"""
import os, sys
r = os.environ.get("RANK", "0")
n = int(sys.argv[1])
w = sys.stdout.write
for i in range(n):
    w(f"rank {r} step {i} loss 0.{i % 10000:04d}\n")
"""

#: One line every ``interval`` seconds, each carrying the wall-clock time of its print.
#: Block-buffered: print() without flush, as a user would.
LATENCY_CHILD = r"""
import sys, time
n, interval = int(sys.argv[1]), float(sys.argv[2])
start = time.monotonic()
for i in range(n):
    print(f"{time.time():.6f} latency probe {i:06d} pad")
    time.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
"""

#: An idle Python child (the teardown stops it).
IDLE_CHILD = "import time; time.sleep(600)"

#: Prints as fast as it can until SIGTERM (or ``argv[1]`` seconds), then writes its line count
#: to a file in ``argv[2]``.
FLOOD_CHILD = r"""
import os, signal, sys, time
r = os.environ.get("RANK", "0")
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
end = time.monotonic() + float(sys.argv[1])
w = sys.stdout.write
i = 0
while not stop and time.monotonic() < end:
    for _ in range(1000):
        w(f"rank {r} step {i} loss 0.{i % 10000:04d}\n")
        i += 1
sys.stdout.flush()
with open(os.path.join(sys.argv[2], f"count-{r}"), "w") as f:
    f.write(str(i))
"""

#: Prints ``argv[1]`` lines as fast as it can, then writes how many bytes it wrote to a file in
#: ``argv[2]``.
STALL_CHILD = r"""
import os, sys
r = os.environ.get("RANK", "0")
w = sys.stdout.write
total = 0
for i in range(int(sys.argv[1])):
    line = f"rank {r} step {i} loss 0.{i % 10000:04d}\n"
    w(line)
    total += len(line)
sys.stdout.flush()
with open(os.path.join(sys.argv[2], f"done-{r}"), "w") as f:
    f.write(str(total))
"""

_DROPPED_RE = re.compile(r"([\d,]+) lines dropped for rank \d+")


# -- helpers -----------------------------------------------------------------------------------
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


def _maxrss_mb() -> float:
    """Peak RSS of this process in MB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vm_rss_mb() -> float:
    """Current RSS of this process in MB, from ``/proc/self/status`` (0.0 if unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def procs_cpu(pids: Sequence[int]) -> float:
    """CPU seconds (user+sys) used so far by the live processes ``pids``, from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated; NaN if empty."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def med(rows: list[Result], key: str) -> float:
    """The median of ``key`` over ``rows``."""
    return statistics.median(r[key] for r in rows)


# -- throughput / aggregate / cpu trials -------------------------------------------------------
def trial_baseline(procs: int, lines: int) -> Result:
    """Plain ``subprocess`` pipes read by a ``selectors`` loop that only counts newlines."""
    cpu0 = _self_cpu()
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
    return {"wall": wall, "lines": count, "child_cpu": _children_cpu(),
            "self_cpu": _self_cpu() - cpu0}


def _count_output(path: str) -> int:
    """Lines a trial's output file stands for: one per line; a group line stands for its
    count (``[120x ranks 0-3]``) or for one line of each of its ranks (``[ranks 0-3]``)."""
    with open(path, "rb") as fh:
        data = fh.read()
    total = data.count(b"\n") - len(re.findall(rb"(?m)^\[logmesh\] ", data))  # our notices
    if b"ranks " not in data:
        return total
    for count, ranks in re.findall(rb"(?m)^\[(?:(\d+)x )?ranks ([\d,-]+)\] ", data):
        total += (int(count) if count else _rank_count(ranks.decode())) - 1
    return total


def _rank_count(folded: str) -> int:
    """How many ranks ``0-3,7`` names."""
    n = 0
    for part in folded.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


async def _trial_ours(procs: int, lines: int, window: float | None) -> Result:
    import trio_logmesh as lm

    cpu0 = _self_cpu()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sink.txt")
        # The terminal sink writing into a file: ``logmesh run ... > out.txt``.
        with open(path, "w") as out:
            sink = lm.TerminalSink(stdout=out, stderr=out, color="never")
            async with lm.open_proc_mesh(
                [sys.executable, "-c", CHILD, str(lines)], procs=procs,
                env={"PYTHONUNBUFFERED": None}, log_dir=tmp, announce=False,
                drop_policy="block",
            ) as mesh:
                async with lm.open_logging_client(mesh, sink=sink,
                                                  aggregate_window_sec=window) as client:
                    await mesh.wait()
                    await client.flush()
        wall = time.perf_counter() - t0
        self_cpu = _self_cpu() - cpu0
        delivered = _count_output(path)  # after the measurement: the count is ours, not theirs
    return {"wall": wall, "lines": delivered, "child_cpu": _children_cpu(), "self_cpu": self_cpu}


def trial_ours(procs: int, lines: int, window: float | None = None) -> Result:
    """Our pipeline, driver sink a file, counting every line delivered."""
    import trio

    return trio.run(_trial_ours, procs, lines, window)


# -- latency trials ----------------------------------------------------------------------------
def _line_latency(line: str, now: float) -> float | None:
    """Milliseconds from the timestamp at the start of ``line`` to ``now``; None if none."""
    head = line.split(" ", 1)[0]
    try:
        return (now - float(head)) * 1000
    except ValueError:
        return None


def trial_latency_baseline(lines: int, interval: float) -> Result:
    """The latency child on a plain pipe read by a ``selectors`` loop; per-line latency (ms)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", LATENCY_CHILD, str(lines), str(interval)],
        stdout=subprocess.PIPE, env=_child_env(),
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    lat: list[float] = []
    carry = b""
    while True:
        sel.select()
        data = os.read(fd, 65536)
        now = time.time()
        if not data:
            break
        *complete, carry = (carry + data).split(b"\n")
        for raw in complete:
            ms = _line_latency(raw.decode(), now)
            if ms is not None:
                lat.append(ms)
    proc.wait()
    sel.close()
    return {"latencies_ms": lat}


async def _trial_latency_ours(lines: int, interval: float) -> Result:

    import trio_logmesh as lm

    class StampingSink:
        """Records, per complete stdout line, receive time minus the time it carries."""

        def __init__(self) -> None:
            self.lat: list[float] = []
            self.carry = ""

        async def emit(self, items: Sequence[lm.Output]) -> None:
            now = time.time()
            for item in items:
                if not isinstance(item, lm.LogLines) or item.stream != "stdout":
                    continue
                got = list(item.lines)
                got[0] = self.carry + got[0]
                self.carry = got.pop() if item.partial else ""
                for line in got:
                    ms = _line_latency(line, now)
                    if ms is not None:
                        self.lat.append(ms)

    sink = StampingSink()
    with tempfile.TemporaryDirectory() as tmp:
        async with lm.open_proc_mesh(
            [sys.executable, "-c", LATENCY_CHILD, str(lines), str(interval)],
            env={"PYTHONUNBUFFERED": None}, log_dir=tmp, announce=False,
        ) as mesh:
            async with lm.open_logging_client(mesh, sink=sink) as client:
                await mesh.wait()
                await client.flush()
    return {"latencies_ms": sink.lat}


def trial_latency_ours(lines: int, interval: float) -> Result:
    """The latency child under our mesh, no window; per-line latency (ms) at the sink."""
    import trio

    return trio.run(_trial_latency_ours, lines, interval)


# -- flush trial -------------------------------------------------------------------------------
async def _trial_flush(procs: int, flushes: int, warmup: int, gap: float) -> Result:
    import trio

    import trio_logmesh as lm

    t0 = time.perf_counter()
    samples: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with lm.open_proc_mesh(
            [sys.executable, "-c", IDLE_CHILD], procs=procs, env={"PYTHONUNBUFFERED": None},
            log_dir=tmp, announce=False,
        ) as mesh:
            async with lm.open_logging_client(mesh, sink=lambda item: None) as client:
                # The first barrier waits for every child to start and its agent to connect.
                await client.flush(timeout=120)
                startup = time.perf_counter() - t0
                for _ in range(warmup):
                    await client.flush(timeout=60)
                    await trio.sleep(gap)
                kids0, cpu0, wall0 = procs_cpu(mesh.pids), _self_cpu(), time.perf_counter()
                for _ in range(flushes):
                    t = time.perf_counter()
                    await client.flush(timeout=60)
                    samples.append((time.perf_counter() - t) * 1000)
                    await trio.sleep(gap)
                wall = time.perf_counter() - wall0
                kids, driver = procs_cpu(mesh.pids) - kids0, _self_cpu() - cpu0
                await client.aclose()
    return {"startup_s": startup, "flush_ms": samples, "driver_cpu": driver,
            "children_cpu": kids, "wall": wall}


def trial_flush(procs: int, flushes: int, warmup: int = 3, gap: float = 0.05) -> Result:
    """``flushes`` timed ``client.flush()`` calls (ms) on ``procs`` idle Python children."""
    import trio

    return trio.run(_trial_flush, procs, flushes, warmup, gap)


# -- idle trial --------------------------------------------------------------------------------
async def _trial_idle(procs: int, seconds: float) -> Result:
    import trio

    import trio_logmesh as lm

    with tempfile.TemporaryDirectory() as tmp:
        async with lm.open_proc_mesh(
            [sys.executable, "-c", IDLE_CHILD], procs=procs, env={"PYTHONUNBUFFERED": None},
            log_dir=tmp, announce=False,
        ) as mesh:
            async with lm.open_logging_client(mesh, sink=lambda item: None) as client:
                await client.flush(timeout=120)  # every agent is up
                await trio.sleep(1)  # and has settled into its idle pace
                kids0, cpu0, t0 = procs_cpu(mesh.pids), _self_cpu(), time.perf_counter()
                await trio.sleep(seconds)
                wall = time.perf_counter() - t0
                kids, driver = procs_cpu(mesh.pids) - kids0, _self_cpu() - cpu0
    return {"children_cpu_s": kids, "driver_cpu_s": driver, "wall": wall}


def trial_idle(procs: int, seconds: float) -> Result:
    """CPU used by ``procs`` idle Python ranks (and the driver) over ``seconds``."""
    import trio

    return trio.run(_trial_idle, procs, seconds)


# -- memory trial ------------------------------------------------------------------------------
async def _trial_memory(procs: int, seconds: float, sink_delay: float, sample: float) -> Result:
    import trio

    import trio_logmesh as lm

    class SlowSink:
        """Sleeps ``sink_delay`` per call; counts lines and the drops that Notices report."""

        def __init__(self) -> None:
            self.lines = 0
            self.dropped = 0
            self.notices = 0
            self.calls = 0

        async def emit(self, items: Sequence[lm.Output]) -> None:
            self.calls += 1
            for item in items:
                if isinstance(item, lm.LogLines):
                    self.lines += item.line_count - (1 if item.partial else 0)
                elif isinstance(item, lm.Notice):
                    m = _DROPPED_RE.search(item.text)
                    if m:
                        self.notices += 1
                        self.dropped += int(m.group(1).replace(",", ""))
            await trio.sleep(sink_delay)

    sink = SlowSink()
    rss_before = vm_rss_mb()
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        counts = os.path.join(tmp, "counts")
        os.mkdir(counts)
        async with lm.open_proc_mesh(
            [sys.executable, "-c", FLOOD_CHILD, str(seconds + 60), counts], procs=procs,
            env={"PYTHONUNBUFFERED": None}, log_dir=tmp, announce=False,
        ) as mesh:
            async with trio.open_nursery() as nursery:
                client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
                client.set_mode(stream_to_client=True, aggregate_window_sec=None)
                start = trio.current_time()
                tick = 0
                while True:
                    now = trio.current_time()
                    samples.append((now - start, vm_rss_mb()))
                    if now - start >= seconds:
                        break
                    tick += 1
                    await trio.sleep_until(start + tick * sample)
                # Stop the live view (the backlog a slow sink still owes is not the point here),
                # then leave the mesh: its teardown SIGTERMs the children, which stop printing
                # and write their line counts.
                await client.aclose()
        written = 0
        for name in os.listdir(counts):
            with open(os.path.join(counts, name)) as f:
                written += int(f.read())
        log_bytes = sum(
            os.path.getsize(os.path.join(tmp, n)) for n in os.listdir(tmp) if n.endswith(".log")
        )
    return {"samples": samples, "rss_before_mb": rss_before, "maxrss_mb": _maxrss_mb(),
            "written": written, "delivered": sink.lines, "dropped": sink.dropped,
            "drop_notices": sink.notices, "sink_calls": sink.calls, "log_bytes": log_bytes}


def trial_memory(procs: int, seconds: float, sink_delay: float = 0.001,
                 sample: float = 0.5) -> Result:
    """``procs`` children flood output for ``seconds`` into a sink sleeping ``sink_delay`` per
    call; this process's RSS every ``sample`` seconds and its peak."""
    import trio

    return trio.run(_trial_memory, procs, seconds, sink_delay, sample)


# -- stalled output trial ----------------------------------------------------------------------
def trial_stall(procs: int, lines: int, seconds: float, stalled: bool = True) -> Result:
    """``logmesh run --drop-policy drop`` with its stdout a pipe nobody reads (``stalled``), or
    into a file: when do the children finish, and do their files hold every byte by then?"""
    with tempfile.TemporaryDirectory() as tmp:
        logs = os.path.join(tmp, "logs")
        cmd = [sys.executable, "-m", "trio_logmesh", "run", "-n", str(procs), "--no-window",
               "--drop-policy", "drop", "--log-dir", logs, "--",
               sys.executable, "-c", STALL_CHILD, str(lines), tmp]
        read_end, write_end = os.pipe()
        out = write_end if stalled else os.open(os.path.join(tmp, "out.txt"),
                                                 os.O_WRONLY | os.O_CREAT)
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL, env=_child_env(),
                                start_new_session=True)
        os.close(write_end)
        if not stalled:
            os.close(out)
        done = [os.path.join(tmp, f"done-{r}") for r in range(procs)]
        while time.monotonic() - t0 < seconds and not all(map(os.path.exists, done)):
            time.sleep(0.05)
        finished = [p for p in done if os.path.exists(p)]
        finish_s = time.monotonic() - t0
        expected = 0
        for p in finished:
            with open(p) as f:
                expected += int(f.read() or 0)
        width = len(str(procs - 1))
        paths = [os.path.join(logs, "latest", f"rank-{r:0{width}d}.stdout.log")
                 for r in range(procs)]

        def on_disk() -> int:
            return sum(os.path.getsize(p) for p in paths if os.path.exists(p))

        # The files trail the children by what the host has not read yet: give it a moment.
        settle = time.monotonic() + 5
        while on_disk() < expected and time.monotonic() < settle:
            time.sleep(0.05)
        file_bytes = on_disk()
        try:
            os.killpg(proc.pid, 9)
        except ProcessLookupError:
            pass
        proc.wait()
        os.close(read_end)
    return {"finished": len(finished), "finish_s": finish_s, "expected_bytes": expected,
            "file_bytes": file_bytes}


# -- running trials in fresh processes ---------------------------------------------------------
#: Seconds a trial process may take before the benchmark gives up on it.
TRIAL_TIMEOUT = 300.0

TRIALS: dict[str, Callable[..., Result]] = {
    "baseline": trial_baseline,
    "ours": trial_ours,
    "latency-baseline": trial_latency_baseline,
    "latency-ours": trial_latency_ours,
    "flush": trial_flush,
    "memory": trial_memory,
    "stall": trial_stall,
    "idle": trial_idle,
}


def run_trial(kind: str, **params: Any) -> Result:
    """Run trial ``kind`` with ``params`` in a fresh Python process; return its JSON result."""
    cmd = [sys.executable, "-m", "trio_logmesh.bench", kind, json.dumps(params)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TRIAL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{kind} trial {params} hung for {TRIAL_TIMEOUT:.0f} s") from None
    if out.returncode != 0:
        raise RuntimeError(f"{kind} trial {params} failed ({out.returncode}):\n"
                           f"{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternated(repeat: int, expected: int, first: dict[str, Any], second: dict[str, Any]
               ) -> tuple[list[Result], list[Result]]:
    """``repeat`` rounds of two trials, ``run_trial(**first)`` then ``run_trial(**second)``,
    alternated so that the machine's noise falls on both alike; their results, as two lists.

    Raises ``RuntimeError`` if any trial did not deliver ``expected`` lines.
    """
    a: list[Result] = []
    b: list[Result] = []
    for _ in range(repeat):
        a.append(run_trial(**first))
        b.append(run_trial(**second))
    for t in a + b:
        if t["lines"] != expected:
            raise RuntimeError(f"lost lines: {t['lines']} of {expected} arrived")
    return a, b


