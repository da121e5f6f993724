"""Heartbeats and teardown on trio's MockClock: no task outlives the nursery that owns it."""

from __future__ import annotations

import os
import signal

import trio
import trio.lowlevel

import trio_logmesh as lm
from trio_logmesh import _frames as f
from trio_logmesh import _wire as w
from trio_logmesh._channel import dial
from trio_logmesh._forwarder import HostLogForwarder
from trio_logmesh._outbox import RankOutbox

from .conftest import PY, Collected


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


async def test_host_forwarder_heartbeats_every_second_and_stops_with_its_nursery(
    autojump_clock, tmp_path
):
    token = os.urandom(16)
    outbox = RankOutbox()
    cuts: list[int] = []
    hf = HostLogForwarder(0, str(tmp_path / "f.sock"), token, outbox, cuts.append, 42, "h",
                          heartbeat_sec=1.0)
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(hf.serve)
            fs = await dial(hf.path)
            await fs.send_msg(f.Hello(w.ROLE_CLIENT, token, 0, 0))
            first = await fs.first()
            assert first is not None and f.decode(*first) == f.Welcome(0, 42, w.KIND_HOST, "h")
            start = trio.current_time()
            beats: list[float] = []
            while len(beats) < 3:
                for kind, _ in await fs.receive_frames():
                    if kind == w.HEARTBEAT:
                        beats.append(trio.current_time() - start)
            assert beats == [0.0, 1.0, 2.0]  # periodic(): the first beat at once
            await fs.send_msg(f.ForceSyncFlush(7))
            with trio.fail_after(1):
                while not cuts:
                    await trio.sleep(0.01)
            assert cuts == [7]
            nursery.cancel_scope.cancel()
    finally:
        trio.lowlevel.remove_instrument(tracker)
    assert tracker.spawned >= 4
    assert tracker.alive == set()
    assert not os.path.exists(hf.path)


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
            os.kill(mesh.pids[1], signal.SIGSTOP)
            with trio.move_on_after(30):
                while len(sink.lines()) < 1:
                    await trio.sleep(0.05)
    finally:
        trio.lowlevel.remove_instrument(tracker)
    assert tracker.alive == set()
    assert all(code is not None and code < 0 for code in mesh.returncodes)
    assert client.exit_codes == mesh.returncodes


async def test_client_window_on_the_mock_clock_live_first_then_rescheduled_summary(
    autojump_clock, tmp_path
):
    autojump_clock.autojump_threshold = 0.1  # real children: jump only once the loop is idle
    sink = Collected()
    child = "for i in 1 2 3; do echo step $i loss 0.$i$RANK; done; sleep 600"
    async with lm.open_proc_mesh(["bash", "-c", child], procs=3, log_dir=tmp_path,
                                 announce=False, grace=1.0) as mesh:
        client = await mesh.logging_option(aggregate_window_sec=100, sink=sink)
        with trio.fail_after(60):
            while not all(_count_lines(mesh.log_files(r)[0]) == 3 for r in range(3)):
                await trio.sleep(0.01)
        await trio.sleep(20)  # mock time: the 9 lines reach the client: 1 shown, 8 held
        live = [i for i in sink.items if isinstance(i, lm.LogLines)]
        assert [ln for i in live for ln in i.lines] == [live[0].lines[0]]
        assert not [i for i in sink.items if isinstance(i, lm.GroupLine)]
        # A shorter window whose end has already passed: the summary is due at once.
        client.set_mode(aggregate_window_sec=5)
        await trio.sleep(0.01)
        groups = [i for i in sink.items if isinstance(i, lm.GroupLine)]
        assert len(groups) == 1 and groups[0].count == 8 and groups[0].ranks_text == "0-2"
        assert groups[0].text.startswith("step 1..3 loss ")
        await client.flush()
    total = sum(len(i.lines) for i in sink.items if isinstance(i, lm.LogLines))
    assert total + sum(g.count for g in groups) == 9  # nothing lost, nothing twice


def _count_lines(path: str) -> int:
    with open(path, "rb") as fh:
        return fh.read().count(b"\n")
