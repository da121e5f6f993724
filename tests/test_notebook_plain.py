"""``trio_logmesh.notebook`` outside IPython: a plain-Python API whose output goes to
``sys.stdout``/``sys.stderr`` as it comes, and whose ranks end with the interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .notebook_kit import alive, wait_gone

SCRIPT = r"""
import sys
from trio_logmesh import notebook as lmnb
mesh = lmnb.open_mesh([sys.executable, "-c",
                       "import os, sys; print('hello from', os.environ['RANK']); "
                       "print('oops', file=sys.stderr); sys.exit(int(os.environ['RANK']))"],
                      procs=2, log_dir=sys.argv[1], env={"PYTHONUNBUFFERED": None})
print("codes", mesh.wait(), flush=True)
mesh.flush()
print("stopped", mesh.stop(), flush=True)
print("IPython" in sys.modules, flush=True)
"""

#: Ranks that leave a marker when SIGTERM reaches them: stopped, not just killed.
RANK = (
    "import os, signal, sys, time\n"
    "def term(*_):\n"
    "    open(os.path.join(sys.argv[1], 'term.' + os.environ['RANK']), 'w').close()\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, term)\n"
    "print('up', flush=True)\n"
    "while True:\n"
    "    time.sleep(1)\n"
)

LEFT_RUNNING = r"""
import sys, time
from trio_logmesh import notebook as lmnb
mesh = lmnb.open_mesh([sys.executable, "-c", RANK, sys.argv[1]], procs=2,
                      log_dir=sys.argv[1], announce=False)
time.sleep(0.5)
print("pids", *mesh.pids, flush=True)
""".replace("RANK", repr(RANK))


def test_outside_ipython_lines_go_to_stdout_and_stderr_as_they_come(tmp_path):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert sorted(out) == sorted(["[0] hello from 0", "[1] hello from 1", "codes [0, 1]",
                                  "stopped [0, 1]", "False"])
    assert out.index("stopped [0, 1]") > max(out.index("[0] hello from 0"),
                                             out.index("[1] hello from 1"))
    err = done.stderr.splitlines()
    assert sorted(err) == sorted([f"logmesh: 2 rank(s), logs in {tmp_path}", "[0] oops",
                                  "[1] oops", "[logmesh] rank 1 exited with code 1"])


def test_ranks_left_running_end_with_the_interpreter(tmp_path):
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-c", LEFT_RUNNING, str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("pids "))
    pids = [int(p) for p in line.split()[1:]]
    assert len(pids) == 2
    assert wait_gone(pids, timeout=5) == []
    assert time.monotonic() - t0 < 10
    assert not any(map(alive, pids))
    assert {"term.0", "term.1"} <= set(os.listdir(tmp_path))  # stopped at exit, with SIGTERM
