"""A launcher people trust: no process of a run outlives it, teardown is bounded, nothing hangs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import trio

import trio_logmesh as lm

from .conftest import PY, READY_PY, alive


async def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    """Wait (polling /proc: these processes are not ours to wait for) until none of ``pids``
    is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        await trio.sleep(0.05)
    return [p for p in pids if alive(p)]


# A rank that starts a grandchild, says both pids, and waits.
WITH_GRANDCHILD = READY_PY + r"""
import os, subprocess, sys, time
child = subprocess.Popen(["sleep", "120"])
ready(f"pids {os.getpid()} {child.pid}")
time.sleep(120)
"""


async def test_a_ranks_descendants_end_with_the_run(ready, log_dir):
    async with lm.open_proc_mesh([PY, "-c", WITH_GRANDCHILD], procs=2, env=ready.env,
                                 log_dir=log_dir, announce=False, grace=1.0):
        said = await ready.wait_prefixed("pids", 2)
    pids = [int(p) for s in said for p in s.split()[1:]]
    assert len(pids) == 4
    assert await wait_gone(pids, 5) == []  # the ranks and their grandchildren


DRIVER = r"""
import sys, trio, trio_logmesh as lm
child = sys.argv[1]
async def main():
    async with lm.open_proc_mesh([sys.executable, "-c", child], procs=2, announce=False):
        await trio.sleep(600)
trio.run(main)
"""


async def test_no_rank_survives_a_killed_driver(ready, tmp_path):
    # SIGKILL leaves the driver no chance to stop anything: the kernel's parent-death signal
    # must end the ranks, and the watchdog their children.
    env = dict(os.environ, READY=ready.path, LOGMESH_LOG_DIR=str(tmp_path))
    driver = subprocess.Popen([PY, "-c", DRIVER, WITH_GRANDCHILD], env=env)
    try:
        with trio.fail_after(30):
            said = await ready.wait_prefixed("pids", 2)
        ranks = [int(s.split()[1]) for s in said]
        grandchildren = [int(s.split()[2]) for s in said]
        # Well past the age at which an idle worker thread of the driver would have ended:
        # the signal must follow the driver, not the thread that started the ranks.
        await trio.sleep(11)
        assert all(alive(p) for p in ranks)
        driver.kill()
        driver.wait()
        assert await wait_gone(ranks, 5) == []
        # ... and the watchdog ends what the ranks started.
        assert await wait_gone(grandchildren, 5) == []
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in locals().get("grandchildren", []):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def test_cancelling_the_mesh_ends_within_about_grace_and_reaps_every_rank(log_dir):
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "print('up', flush=True)\ntime.sleep(600)\n")
    grace = 1.0
    t0 = trio.current_time()
    with trio.move_on_after(0.5):
        async with lm.open_proc_mesh([PY, "-c", stubborn], procs=2, log_dir=log_dir,
                                     announce=False, grace=grace) as mesh:
            await trio.sleep_forever()
    elapsed = trio.current_time() - t0
    assert elapsed < 0.5 + grace + 3  # about grace, not several times it
    assert mesh.returncodes == [-signal.SIGKILL, -signal.SIGKILL]
    assert not any(alive(p) for p in mesh.pids)  # reaped: no zombie either
    out = subprocess.run(["ps", "-o", "pid=,stat=", "--ppid", str(os.getpid())],
                         capture_output=True, text=True).stdout
    assert not [ln for ln in out.splitlines() if ln.split()[1].startswith("Z")]


async def test_stop_signals_every_group_and_escalates(ready, log_dir):
    ignores_term = READY_PY + ("import os, signal, time\n"
                               "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "ready('up ' + os.environ['RANK'])\ntime.sleep(600)\n")
    async with lm.open_proc_mesh([PY, "-c", ignores_term], procs=2, env=ready.env,
                                 log_dir=log_dir, announce=False, grace=30) as mesh:
        await ready.wait("up 0", "up 1")
        t0 = trio.current_time()
        codes = await mesh.stop(grace=0.5)
        assert trio.current_time() - t0 < 3
        assert codes == [-signal.SIGKILL, -signal.SIGKILL]
        assert mesh.returncodes == codes
        assert await mesh.stop() == codes  # again: nothing left to do, same answer


def test_spawning_happens_on_the_calling_thread():
    # A statement of the design, checked: the parent-death signal follows the thread that
    # forked, so ranks must not be forked from a worker thread.
    code = ("import threading, trio, trio_logmesh as lm, sys\n"
            "from trio_logmesh.host import _process\n"
            "orig = _process.subprocess.Popen\n"
            "seen = []\n"
            "def spy(*a, **k):\n"
            "    if a[0] == ['true']:  # a rank, not the watchdog\n"
            "        seen.append(threading.current_thread().name)\n"
            "    return orig(*a, **k)\n"
            "_process.subprocess.Popen = spy\n"
            "async def main():\n"
            "    async with lm.open_proc_mesh(['true'], procs=2, announce=False):\n        pass\n"
            "trio.run(main)\nprint(seen)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, LOGMESH_LOG_DIR="/tmp")).stdout
    assert out.strip() == "['MainThread', 'MainThread']"


# sys.stdout replaced by a stream whose flush holds its lock for a while, as a BufferedWriter
# does while blocked on a full pipe.  The program forks while the agent is inside that flush.
FORK_DURING_FLUSH = r"""
import os, sys, threading, time
class Slow:
    def __init__(self, real):
        self.real, self.lock, self.flushing = real, threading.Lock(), threading.Event()
    def write(self, s):
        with self.lock:
            return self.real.write(s)
    def flush(self):
        with self.lock:
            self.flushing.set()
            time.sleep(0.5)
            self.real.flush()
sys.stdout = Slow(sys.stdout)
print("before the fork")
sys.stdout.flushing.wait(10)  # the agent's periodic flush is under way, holding the lock
pid = os.fork()
if pid == 0:
    print("the child prints")  # hangs forever if the lock was held across the fork
    sys.stdout.flush()
    os._exit(0)
os.waitpid(pid, 0)
print("the parent goes on")
"""


async def test_nothing_of_ours_holds_a_lock_across_a_fork(run_mesh):
    async with run_mesh([PY, "-c", FORK_DURING_FLUSH], 1, grace=1.0) as run:
        with trio.fail_after(20):
            assert await run.mesh.wait() == [0]
            await run.client.flush()
    assert run.sink.lines() == ["before the fork", "the child prints", "the parent goes on"]
