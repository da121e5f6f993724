"""What the end of a cell costs with live meshes: the notebook extension's post-cell hook.

Run as ``python -m tests.nb_measure [--procs 4 16] [--cells 40]`` from the repository root.
It starts a kernel (jupyter_client), opens a mesh of ``nb_worker`` ranks, and times, inside the
kernel, the post-cell hook (the end-of-cell flush of every live mesh) of ``--cells`` cells of
each kind:

* ``idle``: ``pass``, the ranks printing nothing;
* ``printed``: each rank printed 100 lines into its block-buffered stdout during the cell,
  never flushed by the agent's timer (``flush_interval=0``): the end-of-cell flush brings them
  out of the ranks' buffers, and each cell is checked to show all of them;

and the round trip of a ``pass`` cell as the frontend sees it, with the mesh live and after it
was stopped.  Medians and 90th percentiles, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from jupyter_client.manager import start_new_kernel

from .notebook_kit import HELPERS, PY, WORKER, execute

TIMED_HOOK = r"""
from trio_logmesh.notebook import _extension as ext
hooks = ext._hooks[get_ipython()]
hook_times = []
def timed_post_run_cell(*args, _hook=hooks.post_run_cell):
    t = time.perf_counter()
    _hook(*args)
    hook_times.append(time.perf_counter() - t)
get_ipython().events.unregister("post_run_cell", hooks.post_run_cell)
get_ipython().events.register("post_run_cell", timed_post_run_cell)
"""


def ms(values: list[float]) -> str:
    values = sorted(values)
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    return f"median {statistics.median(values) * 1e3:.1f} ms, p90 {p90 * 1e3:.1f} ms"


def last_number_list(reply) -> list[float]:
    return [float(x) for x in reply.lines()[-1].strip("[]").split(",") if x.strip()]


def measure(procs: int, cells: int) -> None:
    tmp = tempfile.mkdtemp(prefix="nb-measure-")
    km, kc = start_new_kernel(kernel_name="python3", cwd=tmp)
    try:
        where = f"{tmp}/cmd"
        execute(kc, f"import os\nos.makedirs({where!r})")
        execute(kc, HELPERS + "\n%load_ext trio_logmesh\nfrom trio_logmesh import notebook as lmnb\n"
                f"a = Ranks({where!r}, {procs})\n"
                f"mesh = lmnb.open_mesh([{PY!r}, {WORKER!r}, {where!r}], procs={procs}, "
                f"env={{'PYTHONUNBUFFERED': None}}, log_dir={tmp + '/logs'!r}, "
                "flush_interval=0, announce=False)\na.say(0, lines=1)\n" + TIMED_HOOK)
        execute(kc, "hook_times.clear()")
        live = [execute(kc, "pass") for _ in range(cells)]
        idle = last_number_list(execute(kc, "print(hook_times[1:])"))
        execute(kc, "hook_times.clear()")
        for c in range(cells):
            reply = execute(kc, f"a.say({c + 1}, lines=100)")
            assert len(reply.lines()) == 100 * procs, len(reply.lines())
        printed = last_number_list(execute(kc, "print(hook_times[1:])"))
        execute(kc, "mesh.stop()")
        stopped = [execute(kc, "pass") for _ in range(cells)]
        print(f"{procs} ranks, {cells} cells of each kind:")
        print(f"  post-cell hook, idle ranks:              {ms(idle)}")
        print(f"  post-cell hook, 100 lines/rank buffered: {ms(printed)}")
        print(f"  'pass' cell round trip, mesh live:       "
              f"{ms([r.ended - r.started for r in live])}")
        print(f"  'pass' cell round trip, mesh stopped:    "
              f"{ms([r.ended - r.started for r in stopped])}")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--cells", type=int, default=40)
    args = parser.parse_args()
    for procs in args.procs:
        measure(procs, args.cells)
        time.sleep(0.5)


if __name__ == "__main__":
    main()
