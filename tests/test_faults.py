"""Real-world output and faults, with real processes: nothing lost, memory bounded, no hang."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import stat
import time

import pytest
import trio
import trio.testing

import trio_logmesh as lm
from trio_logmesh.protocol import _wire as w

from .conftest import CHILD_ENV, PY, READY_PY, Collected, wait_stopped


def dropped_counts(sink: Collected) -> dict[int, int]:
    counts: dict[int, int] = {}
    for text in sink.notices():
        m = re.fullmatch(r"([\d,]+) lines dropped for rank (\d+)", text)
        if m:
            r = int(m.group(2))
            counts[r] = counts.get(r, 0) + int(m.group(1).replace(",", ""))
    return counts


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_tqdm_bar_shows_throttled_states_and_its_final_state(sink, log_dir):
    pytest.importorskip("tqdm")
    child = r"""
import sys, time
from tqdm import tqdm
for _ in tqdm(range(60), file=sys.stderr, mininterval=0, ascii=True, desc="work"):
    time.sleep(0.01)
print("after the bar")
"""
    started = time.monotonic()
    async with lm.open_proc_mesh([PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir,
                                 announce=False) as mesh:
        await mesh.logging_option(sink=sink)
        await mesh.wait()
    elapsed = time.monotonic() - started
    for r in range(2):
        err = sink.lines(rank=r, stream="stderr")
        assert err[-1].startswith("work: 100%") and "60/60" in err[-1]
        assert all("\r" not in ln for ln in err)
        # 60 redraws, 10 ms apart: at most one state per 0.25 s (plus the first and the final
        # ones) reaches the view, not 60
        assert 2 <= len(err) <= elapsed / 0.25 + 3, (elapsed, err)
        assert len(err) < 30
        raw = open(mesh.log_files(r)[1], "rb").read()
        assert raw.count(b"\r") >= 60  # the file keeps every redraw
        assert sink.lines(rank=r, stream="stdout") == ["after the bar"]


async def test_bad_bytes_do_not_break_framing_and_files_keep_them_raw(sink, log_dir):
    raw = b"ok \xff\xfe bad\nnul\x00byte\n\x1b[31mred\x1b[0m\ncrlf\r\n\xe2\x82\n"
    child = f"import os; os.write(1, {raw!r})"
    async with lm.open_proc_mesh([PY, "-c", child], procs=1, env=CHILD_ENV, log_dir=log_dir,
                                 announce=False) as mesh:
        await mesh.logging_option(sink=sink)
        await mesh.wait()
    assert sink.lines() == [
        "ok \ufffd\ufffd bad", "nul\x00byte", "\x1b[31mred\x1b[0m", "crlf", "\ufffd",
    ]
    assert open(mesh.log_files(0)[0], "rb").read() == raw


async def test_huge_line_is_cut_in_the_view_kept_in_the_file_memory_flat(sink, log_dir):
    mib = 256
    child = f"""
import os
chunk = b"x" * 65536
for _ in range({mib} * 16):
    os.write(1, chunk)
os.write(1, b"\\nafter\\n")
"""
    base = rss_mb()
    peak = base
    async with lm.open_proc_mesh([PY, "-c", child], procs=1, env=CHILD_ENV, log_dir=log_dir,
                                 announce=False) as mesh:
        await mesh.logging_option(sink=sink)
        with trio.fail_after(120):
            while mesh.returncodes[0] is None:
                peak = max(peak, rss_mb())
                await trio.sleep(0.02)
    lines = sink.lines()
    assert lines[-1] == "after"
    assert lines[0].startswith("x" * 1000) and lines[0].endswith(" … [truncated 255.9 MiB]")
    assert len(lines[0]) < 70_000
    assert os.path.getsize(mesh.log_files(0)[0]) == mib * 2**20 + len(b"\nafter\n")
    assert peak - base < 64, f"driver RSS grew by {peak - base:.0f} MB"


FLOOD = r"""
import os, sys
r = os.environ["RANK"]
for i in range(int(sys.argv[1])):
    print(f"rank {r} line {i}")
"""


class SlowSink(Collected):
    async def emit(self, items):
        await trio.sleep(0.02)
        await super().emit(items)


async def test_slow_consumer_drops_are_counted_files_keep_all_flush_returns(log_dir):
    n = 100_000
    sink = SlowSink()
    async with lm.open_proc_mesh(
        [PY, "-c", FLOOD, str(n)], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False,
        buffer_bytes=128 * 1024,
    ) as mesh:
        async with lm.open_logging_client(mesh, sink=sink) as client:
            with trio.fail_after(30):
                assert await mesh.wait() == [0, 0]  # the children were never blocked
                await client.flush()
    drops = dropped_counts(sink)
    for r in range(2):
        got = sink.lines(rank=r)
        assert drops.get(r, 0) > 0
        assert len(got) + drops[r] == n  # every line shown or counted
        nums = [int(ln.split()[-1]) for ln in got]
        assert nums == sorted(set(nums))  # in order, none twice
        assert sum(1 for _ in open(mesh.log_files(r)[0])) == n


async def test_block_policy_loses_nothing_with_a_slow_sink(log_dir):
    n = 30_000
    sink = SlowSink()
    async with lm.open_proc_mesh(
        [PY, "-c", FLOOD, str(n)], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False,
        buffer_bytes=64 * 1024, drop_policy="block",
    ) as mesh:
        async with lm.open_logging_client(mesh, sink=sink) as client:
            with trio.fail_after(60):
                await mesh.wait()
                await client.flush()
    assert sink.notices() == []
    for r in range(2):
        assert sink.lines(rank=r) == [f"rank {r} line {i}" for i in range(n)]


async def test_sigkill_mid_line_and_during_a_flush(run_mesh, ready):
    child = READY_PY + r"""
import os, sys, time
r = int(os.environ["RANK"])
for i in range(2000):
    print(f"rank {r} line {i}")
sys.stdout.write("no newline yet")
sys.stdout.flush()
ready(f"ready-{r}")
i = 0
while r == 1:  # rank 1 keeps printing until it is killed
    os.write(1, f"more {i}\n".encode()); i += 1; time.sleep(0.001)
time.sleep(60)
"""
    async with run_mesh([PY, "-c", child], 2, env=ready.env) as run:
        client, mesh = run.client, run.mesh
        await ready.wait("ready-0", "ready-1")
        os.kill(mesh.pids[0], signal.SIGKILL)
        async with trio.open_nursery() as inner:
            inner.start_soon(client.flush)
            await trio.testing.wait_all_tasks_blocked()  # the flush is under way
            os.kill(mesh.pids[1], signal.SIGKILL)
        with trio.fail_after(20):
            assert await mesh.wait() == [-9, -9]
            await client.flush()
        assert client.exit_codes == [-9, -9]
    sink = run.sink
    for r in range(2):
        file_lines = open(mesh.log_files(r)[0]).read().split("\n")
        got = sink.lines(rank=r, stream="stdout")
        # everything the child wrote before it died, in order, once (rank 0 died mid-line)
        assert got == [ln for ln in file_lines if ln]
    assert sink.lines(rank=0)[-1] == "no newline yet"
    assert "rank 0 was killed by SIGKILL" in sink.notices()


async def test_a_rank_that_execs_loses_its_agent_and_barriers_still_complete(run_mesh, ready):
    # exec closes the agent's connection (close-on-exec): from then on the host cuts the
    # pipes without asking the process to flush, and says nothing is wrong.
    after = READY_PY + "import time; print('after', flush=True); ready('execd'); time.sleep(60)"
    child = READY_PY + f"""
import os, sys
print("before", flush=True)
ready("before")
os.execv(sys.executable, [sys.executable, "-c", {after!r}])
"""
    async with run_mesh([PY, "-c", child], 1, env=ready.env, grace=1.0) as run:
        with trio.fail_after(20):
            await ready.wait("before", "execd")
            await run.client.flush()
        assert run.sink.lines() == ["before", "after"]


async def test_cancelled_flush_and_leaving_with_a_barrier_pending(log_dir):
    sink = Collected()
    child = "import time; print('up', flush=True); time.sleep(60)"
    t0 = time.monotonic()
    pending_done = trio.Event()
    async with trio.open_nursery() as outer:
        async with lm.open_proc_mesh([PY, "-c", child], procs=2, env=CHILD_ENV,
                                     log_dir=log_dir, announce=False, grace=1.0) as mesh:
            client = await mesh.logging_option(sink=sink)
            await sink.wait_for(lambda: sink.lines() == ["up", "up"])  # their code is running
            os.kill(mesh.pids[1], signal.SIGSTOP)
            await wait_stopped(mesh.pids[1])
            with trio.move_on_after(0.2) as scope:
                await client.flush()
            assert scope.cancelled_caught

            async def pending() -> None:
                try:
                    await client.flush()
                except lm.LogmeshError:
                    pass
                pending_done.set()

            outer.start_soon(pending)  # still waiting for the stopped rank when we leave
            await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(20):
            await pending_done.wait()  # the teardown ended the stopped rank: the flush ended
    assert time.monotonic() - t0 < 20
    assert sorted(sink.lines()) == ["up", "up"]


async def test_channel_is_private_and_strangers_cannot_disturb_it(run_mesh, ready):
    child = READY_PY + r"""
import os, time
print(os.environ["BOOTSTRAP_LOG_CHANNEL"], flush=True)
ready("up")
print("unflushed tail", end="")
time.sleep(60)
"""
    async with run_mesh([PY, "-c", child], 1, env=ready.env, flush_interval=0) as run:
        await ready.wait("up")
        await run.sink.wait_for(lambda: len(run.sink.lines()) == 1)
        path = run.sink.lines()[0]
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700

        def attempt(payload: bytes) -> bytes:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(5)
            s.connect(path)
            s.sendall(payload)
            got = b""
            try:
                while chunk := s.recv(4096):
                    got += chunk
            except OSError:
                pass
            s.close()
            return got

        # a hello with the wrong token, a header announcing 2 GiB, and junk: each connection
        # is closed, without an answer
        wrong = w.encode(w.HELLO, b"0" * 16, 0, os.getpid())
        assert await trio.to_thread.run_sync(attempt, wrong) == b""
        assert await trio.to_thread.run_sync(attempt, w.HEADER.pack(w.HELLO, 2**31)) == b""
        junk = bytes(random.Random(1).randrange(256) for _ in range(5000))
        assert await trio.to_thread.run_sync(attempt, junk) == b""
        # the real agent is unharmed: the barrier still flushes the child's buffer
        with trio.fail_after(10):
            await run.client.flush()
        assert run.sink.lines()[1:] == ["unflushed tail"]


async def test_closing_a_client_mid_backlog_does_not_break_the_mesh(log_dir):
    sink = SlowSink()
    async with lm.open_proc_mesh([PY, "-c", FLOOD, "50000"], procs=2, env=CHILD_ENV,
                                 log_dir=log_dir, announce=False) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            await mesh.wait()  # exited: the backlog is still on its way to the slow sink
            await sink.wait_for(lambda: len(sink.items) > 0)
            await client.aclose()
        # a second client still gets served
        second = Collected()
        client2 = await mesh.logging_option(sink=second)
        with trio.fail_after(20):
            await client2.flush()
        assert client2.exit_codes == [0, 0]
    assert mesh.returncodes == [0, 0]


async def test_block_policy_with_streaming_off_never_stalls_the_child(log_dir):
    async with lm.open_proc_mesh([PY, "-c", FLOOD, "300000"], procs=2, env=CHILD_ENV,
                                 log_dir=log_dir, announce=False, drop_policy="block",
                                 buffer_bytes=256 * 1024) as mesh:
        async with lm.open_logging_client(mesh, sink=Collected(),
                                          stream_to_client=False) as client:
            with trio.fail_after(60):
                assert await mesh.wait() == [0, 0]
                await client.flush()
    assert sum(1 for _ in open(mesh.log_files(1)[0])) == 300_000


async def test_block_policy_with_both_streams_flooding_keeps_reading_both(log_dir):
    # Both readers wait for room at once; each wake-up must reach both of them.
    child = ("import sys\nfor i in range(20000):\n"
             "    print(f'out {i}')\n    print(f'err {i}', file=sys.stderr)\n")
    sink = SlowSink()
    async with lm.open_proc_mesh([PY, "-c", child], procs=1, env=CHILD_ENV, log_dir=log_dir,
                                 announce=False, drop_policy="block",
                                 buffer_bytes=64 * 1024) as mesh:
        async with lm.open_logging_client(mesh, sink=sink) as client:
            with trio.fail_after(60):
                assert await mesh.wait() == [0]
                await client.flush()
    assert sink.lines(stream="stdout") == [f"out {i}" for i in range(20000)]
    assert sink.lines(stream="stderr") == [f"err {i}" for i in range(20000)]


async def test_forked_descendant_holding_pipes_and_sockets_does_not_keep_the_rank_open(run_mesh):
    child = ("import os, time\nprint('parent says hi', flush=True)\n"
             "if os.fork() == 0:\n    time.sleep(30)\n    os._exit(0)\n")
    async with run_mesh([PY, "-c", child], 1, grace=1.0, drain_timeout=1.0) as run:
        with trio.fail_after(20):
            assert await run.mesh.wait() == [0]
            await run.client.flush()
            await run.client.wait_finished()
        assert run.client.exit_codes == [0]
    assert run.sink.lines() == ["parent says hi"]


async def test_flush_works_while_a_non_daemon_thread_outlives_main(run_mesh):
    child = ("import threading, time\n"
             "def work():\n    for i in range(40):\n        print('worker', i); time.sleep(0.05)\n"
             "threading.Thread(target=work).start()\n")
    async with run_mesh([PY, "-c", child], 1) as run:
        # main has returned at once; the worker prints for 2 s
        await run.sink.wait_for(lambda: "worker 3" in run.sink.lines())
        with trio.fail_after(5):
            await run.client.flush()
        await run.mesh.wait()
    assert run.sink.lines() == [f"worker {i}" for i in range(40)]


async def test_logging_option_twice_keeps_one_client_and_closed_client_flush_fails(log_dir):
    sink = Collected()
    async with lm.open_proc_mesh(["bash", "-c", "echo one; sleep 30"], procs=1,
                                 log_dir=log_dir, announce=False, grace=1.0) as mesh:
        a = await mesh.logging_option(sink=sink)
        b = await mesh.logging_option(aggregate_window_sec=2)
        assert a is b
        with pytest.raises(lm.LogmeshError, match="sink"):
            await mesh.logging_option(sink=Collected())
        await sink.wait_for(lambda: sink.lines() == ["one"])
        await a.flush()
        await a.aclose()
        with pytest.raises(lm.ClientClosed):
            await a.flush()
    assert sink.lines() == ["one"]


async def test_a_client_taken_over_by_a_newer_one_ends_and_says_so(log_dir):
    old_sink, new_sink = Collected(), Collected()
    child = "import time; print('hello', flush=True); time.sleep(30)"
    async with lm.open_proc_mesh([PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir,
                                 announce=False, grace=1.0) as mesh:
        async with trio.open_nursery() as nursery:
            old = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=old_sink)
            await old_sink.wait_for(lambda: old_sink.lines() == ["hello", "hello"])
            await old.flush()
            new = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=new_sink)
            with trio.fail_after(10):
                await new.flush()
                await old.wait_finished()  # its tasks ended instead of waiting forever
            with pytest.raises(lm.ClientReplaced):
                await old.flush()
            assert not isinstance(lm.ClientReplaced("x"), lm.ClientClosed)
            await new.aclose()
    assert sorted(old_sink.lines()) == ["hello", "hello"]
    # what the old client had already confirmed is not replayed to the newcomer
    assert new_sink.lines() == []
