"""A trio app that opens a mesh, streams its output, changes mode, flushes and tears down.

    python3 examples/embed_in_trio_app.py

Four ranks print a few lines each, wait for the driver's "go", log at INFO and DEBUG, and
exit.  The driver streams the first part line by line, switches to a 1 s aggregation window and
DEBUG level for the second part, and uses flush() as a barrier at each step.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

import trio

import trio_logmesh as lm

WORKER = r"""
import logging, os, sys, time
rank = int(os.environ["RANK"])
logging.basicConfig(format="%(levelname)s %(message)s")
print(f"rank {rank}: loading data", end="")      # a partial line, no newline yet
time.sleep(0.1)
print(" ... done")
go = os.path.join(sys.argv[1], "go")
while not os.path.exists(go):
    time.sleep(0.01)
for step in range(3):
    logging.info("step %d loss %.3f", step, 1.0 / (step + rank + 1))
    logging.debug("rank %d internals at step %d", rank, step)
"""


async def main() -> None:
    tmp = tempfile.mkdtemp()
    async with lm.open_proc_mesh([sys.executable, "-c", WORKER, tmp], procs=4) as mesh:
        # The client owns its tasks; leaving its block flushes it and closes it.
        async with lm.open_logging_client(mesh, level=logging.INFO) as client:
            await trio.sleep(0.5)
            await client.flush()  # every "loading data ... done" line is on screen now
            print("driver: switching to a 1 s window and DEBUG level", flush=True)
            client.set_mode(stream_to_client=True, aggregate_window_sec=1, level=logging.DEBUG)
            await client.flush()  # the new level is in force in every rank
            open(os.path.join(tmp, "go"), "w").close()
            codes = await mesh.wait()
            await client.flush()  # the last lines, the pending groups, the exit reports
            print(f"driver: exit codes {codes}", flush=True)
    print(f"driver: every byte is also in {mesh.run_dir}")


if __name__ == "__main__":
    trio.run(main)
