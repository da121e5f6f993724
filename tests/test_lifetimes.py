"""Lifetimes on trio's MockClock: no task outlives the nursery that owns it."""

from __future__ import annotations

import os
import signal

import trio
import trio.lowlevel

import trio_logmesh as lm

from .conftest import PY, Collected
from .fake_mesh import FakeMesh
from .test_view import StalledSink


class TaskTracker(trio.abc.Instrument):
    """Records every task spawned while installed and whether it has exited."""

    def __init__(self) -> None:
        self.alive: set[trio.lowlevel.Task] = set()
        self.spawned = 0

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.alive.add(task)
        self.spawned += 1

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.alive.discard(task)


async def test_mesh_teardown_under_mock_clock_ends_every_task(autojump_clock, tmp_path):
    # A stopped child ignores SIGTERM until continued; the teardown must still end it.
    # Real processes exit in real time: jump the clock only once the loop was idle for a
    # while, or grace periods would expire before a signalled child could be reaped.
    autojump_clock.autojump_threshold = 0.1
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    sink = Collected()
    try:
        async with lm.open_proc_mesh(
            [PY, "-c", "import time; print('up', flush=True); time.sleep(600)"], procs=2,
            log_dir=tmp_path, announce=False, grace=2.0,
        ) as mesh:
            client = await mesh.logging_option(stream_to_client=True, sink=sink)
            await sink.wait_for(lambda: len(sink.lines()) == 2)
            os.kill(mesh.pids[1], signal.SIGSTOP)
    finally:
        trio.lowlevel.remove_instrument(tracker)
    assert tracker.spawned > 10
    assert tracker.alive == set()
    assert all(code is not None and code < 0 for code in mesh.returncodes)
    assert client.exit_codes == mesh.returncodes


async def test_a_client_closed_over_a_stuck_sink_leaves_no_task_behind(autojump_clock):
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    mesh = FakeMesh(2)
    sink = StalledSink()
    try:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            client.set_mode(aggregate_window_sec=30)
            mesh.log(0, b"first\n")
            await sink.wait_for(lambda: sink.lines() == ["first"])
            for i in range(50):
                mesh.log(i % 2, f"step {i}\n".encode())
            flushing = trio.Event()

            async def flush() -> None:
                flushing.set()
                try:
                    await client.flush()
                except lm.ClientClosed:
                    pass

            nursery.start_soon(flush)  # pending when the client closes
            await flushing.wait()
            t0 = trio.current_time()
            await client.aclose()  # the sink never returns: bounded by close_timeout
            assert trio.current_time() - t0 <= client.close_timeout + 0.01
    finally:
        trio.lowlevel.remove_instrument(tracker)
    assert tracker.alive == set()
