"""``client.flush(ranks=...)``: a barrier over some ranks only (the notebook's end of cell
waits for the ranks that answer and only briefly for one that fell silent before)."""

from __future__ import annotations

import os
import signal

import pytest

import trio_logmesh as lm

from .conftest import PY, READY_PY, wait_stopped

CHILD = READY_PY + r"""
import os, sys
rank = os.environ["RANK"]
print(f"up {rank}")
sys.stdout.flush()
ready(f"up{rank}")
import time
while True:
    if os.path.exists(os.environ["GO"]):
        print(f"after {rank}")  # block-buffered: only a barrier brings it out
        ready(f"printed{rank}")
        break
    time.sleep(0.01)
time.sleep(600)
"""


async def test_flush_over_some_ranks_ignores_a_stopped_one(run_mesh, ready, tmp_path):
    go = tmp_path / "go"
    async with run_mesh([PY, "-c", CHILD], 2, flush_interval=0, grace=1.0,
                        env={**ready.env, "GO": str(go)}, exit_timeout=0.5) as run:
        await ready.wait("up0", "up1")
        await run.client.flush()
        os.kill(run.mesh.pids[1], signal.SIGSTOP)
        await wait_stopped(run.mesh.pids[1])
        go.touch()
        await ready.wait("printed0")
        await run.client.flush(timeout=10, ranks=[0])  # returns without rank 1
        assert run.sink.lines(0) == ["up 0", "after 0"]
        with pytest.raises(lm.FlushTimeout) as info:
            await run.client.flush(timeout=0.3, ranks=[1])
        assert info.value.missing_ranks == [1]
        with pytest.raises(ValueError, match=r"ranks \[2\] are not in a mesh of 2"):
            await run.client.flush(ranks=[2])
        os.kill(run.mesh.pids[1], signal.SIGCONT)
        await ready.wait("printed1")
        await run.client.flush(timeout=10, ranks=[1])
        assert run.sink.lines(1) == ["up 1", "after 1"]
