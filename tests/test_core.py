"""The core guarantees with real processes and real sockets: exact barrier, crashes, timeouts."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

import pytest
import trio

import trio_logmesh as lm

from .conftest import CHILD_ENV, PY, Collected, wait_for_files, wait_stopped

LINES = 5000

PY_PRINTER = r"""
import os, sys, time
r = int(os.environ["RANK"])
for i in range({lines}):
    print(f"rank {{r}} line {{i}}")
print(f"partial-{{r}}", end="")
open(os.path.join(sys.argv[1], f"ready-{{r}}"), "w").close()
time.sleep(60)
"""

BASH_PRINTER = r"""
for i in $(seq 0 $(({lines} - 1))); do echo "rank $RANK line $i"; done
printf "partial-$RANK"
touch "$1/ready-$RANK"
sleep 60
"""


def assert_exact(sink: Collected, procs: int, lines: int) -> None:
    for r in range(procs):
        got = sink.lines(rank=r, stream="stdout")
        full = [ln for ln in got if not ln.startswith("partial-")]
        assert full == [f"rank {r} line {i}" for i in range(lines)], f"rank {r}"
        assert got.count(f"partial-{r}") == 1, f"rank {r} partial line"


async def test_flush_includes_unflushed_python_stdout_buffers(tmp_path, sink, log_dir):
    cmd = [PY, "-c", PY_PRINTER.format(lines=LINES), str(tmp_path)]
    # flush_interval=0: no periodic flushing in the child, so only the barrier can bring the
    # tail of each child's sys.stdout buffer out.
    async with lm.open_proc_mesh(
        cmd, procs=4, env=CHILD_ENV, log_dir=log_dir, flush_interval=0, announce=False
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            client.set_mode(stream_to_client=True, aggregate_window_sec=None)
            await wait_for_files(tmp_path / f"ready-{r}" for r in range(4))
            with trio.fail_after(30):
                await client.flush()
            assert_exact(sink, 4, LINES)
            assert mesh.returncodes == [None] * 4  # they are all still alive
            await client.aclose()
    # and the files hold every byte, exactly as written
    for r in range(4):
        out, _ = mesh.log_files(r)
        expected = "".join(f"rank {r} line {i}\n" for i in range(LINES)) + f"partial-{r}"
        assert open(out).read() == expected


async def test_flush_is_exact_for_bash_children(tmp_path, sink, log_dir):
    cmd = ["bash", "-c", BASH_PRINTER.format(lines=LINES), "bash", str(tmp_path)]
    async with lm.open_proc_mesh(cmd, procs=4, log_dir=log_dir, announce=False) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            await wait_for_files(tmp_path / f"ready-{r}" for r in range(4))
            with trio.fail_after(30):
                await client.flush()
            assert_exact(sink, 4, LINES)
            await client.aclose()


async def test_crash_mid_output_delivers_last_lines_traceback_and_exit_code(sink, log_dir):
    child = r"""
import os, sys
r = int(os.environ["RANK"])
for i in range(300):
    print(f"rank {r} line {i}")
if r == 1:
    sys.stdout.write("half a line")
    raise RuntimeError("boom in rank 1")
"""
    async with lm.open_proc_mesh(
        [PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            codes = await mesh.wait()
            with trio.fail_after(20):
                await client.flush()
    assert codes == [0, 1]
    for r in range(2):
        got = [ln for ln in sink.lines(rank=r, stream="stdout") if ln != "half a line"]
        assert got == [f"rank {r} line {i}" for i in range(300)]
    assert "half a line" in sink.lines(rank=1, stream="stdout")
    err = sink.lines(rank=1, stream="stderr")
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1] == "RuntimeError: boom in rank 1"
    assert "rank 1 exited with code 1" in sink.notices()
    assert client.exit_codes == [0, 1]


async def test_flush_timeout_names_the_stopped_rank_and_teardown_does_not_hang(
    tmp_path, sink, log_dir
):
    child = r"""
import os, sys, time
print("hello from", os.environ["RANK"])
open(os.path.join(sys.argv[1], "ready-" + os.environ["RANK"]), "w").close()
time.sleep(60)
"""
    started = time.monotonic()
    async with lm.open_proc_mesh(
        [PY, "-c", child, str(tmp_path)], procs=3, env=CHILD_ENV, log_dir=log_dir,
        announce=False, grace=1.0,
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            await wait_for_files(tmp_path / f"ready-{r}" for r in range(3))
            await client.flush()
            assert [rp.forwarder.value[0] for rp in mesh.ranks] == [1, 1, 1]  # type: ignore[index]
            os.kill(mesh.pids[2], signal.SIGSTOP)
            await wait_stopped(mesh.pids[2])
            t0 = time.monotonic()
            with pytest.raises(lm.FlushTimeout) as info:
                await client.flush(timeout=2)
            elapsed = time.monotonic() - t0
            assert info.value.missing_ranks == [2]
            assert "rank(s) 2" in str(info.value)
            assert 1.9 <= elapsed < 4.0
            await client.aclose()
    assert time.monotonic() - started < 30
    assert mesh.returncodes[2] in (-signal.SIGTERM, -signal.SIGKILL)
    assert sorted(sink.lines(stream="stdout")) == [f"hello from {r}" for r in range(3)]


async def test_overlapping_flushes_each_complete(tmp_path, sink, log_dir):
    cmd = [PY, "-c", PY_PRINTER.format(lines=200), str(tmp_path)]
    async with lm.open_proc_mesh(
        cmd, procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            await wait_for_files(tmp_path / f"ready-{r}" for r in range(2))
            done = []

            async def one(i: int) -> None:
                await client.flush()
                done.append(i)

            with trio.fail_after(20):
                async with trio.open_nursery() as flushes:
                    for i in range(5):
                        flushes.start_soon(one, i)
            assert sorted(done) == list(range(5))
            assert_exact(sink, 2, 200)
            await client.aclose()


async def test_level_change_takes_effect_in_the_children(tmp_path, sink, log_dir):
    child = r"""
import logging, os, sys, time
go = os.path.join(sys.argv[1], "go")
logging.basicConfig(format="%(levelname)s %(message)s")
n = 0
while True:
    if os.path.exists(go + str(n)):
        logging.debug("debug %d", n)
        logging.info("info %d", n)
        logging.warning("warning %d", n)
        n += 1
    time.sleep(0.01)
"""
    async with lm.open_proc_mesh(
        [PY, "-c", child, str(tmp_path)], procs=2, env=CHILD_ENV, log_dir=log_dir,
        announce=False,
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            for n, level in enumerate([logging.INFO, logging.DEBUG, logging.WARNING]):
                client.set_mode(stream_to_client=True, level=level)
                await client.flush()  # the level is in force once this returns
                (tmp_path / f"go{n}").touch()
                with trio.fail_after(20):
                    while sum(f"WARNING warning {n}" in ln for ln in sink.lines()) < 2:
                        await client.flush()
                        await trio.sleep(0.02)
            await client.aclose()
    for r in range(2):
        err = sink.lines(rank=r, stream="stderr")
        assert err == [
            "INFO info 0", "WARNING warning 0",
            "DEBUG debug 1", "INFO info 1", "WARNING warning 1",
            "WARNING warning 2",
        ]


async def test_window_without_streaming_is_a_value_error(log_dir):
    async with lm.open_proc_mesh(["true"], procs=1, log_dir=log_dir, announce=False) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=Collected())
            with pytest.raises(ValueError, match="stream_to_client"):
                client.set_mode(stream_to_client=False, aggregate_window_sec=3)
            with pytest.raises(ValueError, match="positive"):
                client.set_mode(stream_to_client=True, aggregate_window_sec=0)
            with pytest.raises(ValueError, match="level"):
                client.set_mode(level="LOUD")
            client.set_mode(stream_to_client=False, aggregate_window_sec=None)
        with pytest.raises(ValueError, match="stream_to_client"):
            await mesh.logging_option(stream_to_client=False, aggregate_window_sec=1)


async def test_children_get_rank_environment_and_channel(sink, log_dir):
    child = "echo $RANK $WORLD_SIZE $LOCAL_RANK ${BOOTSTRAP_LOG_CHANNEL:+has-channel}"
    async with lm.open_proc_mesh(
        ["bash", "-c", child], procs=3, log_dir=log_dir, announce=False
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            assert await mesh.wait() == [0, 0, 0]
            await client.flush()
    for r in range(3):
        assert sink.lines(rank=r) == [f"{r} 3 {r} has-channel"]


async def test_logging_option_one_liner_flushes_at_teardown(log_dir):
    sink = Collected()
    child = "import os; print('hi from', os.environ['RANK'])"
    async with lm.open_proc_mesh(
        [PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False
    ) as mesh:
        await mesh.logging_option(stream_to_client=True, sink=sink)
        await mesh.wait()
    assert Counter(sink.lines()) == Counter(["hi from 0", "hi from 1"])


async def test_bad_arguments_fail_clearly(log_dir):
    with pytest.raises(ValueError, match="procs"):
        async with lm.open_proc_mesh(["true"], procs=0, log_dir=log_dir):
            pass
    with pytest.raises(ValueError, match="cmd"):
        async with lm.open_proc_mesh([], procs=1, log_dir=log_dir):
            pass
    with pytest.raises(FileNotFoundError):
        async with lm.open_proc_mesh(["/no/such/program"], procs=2, log_dir=log_dir,
                                     announce=False):
            pass
    with pytest.raises(TypeError, match="sink"):
        lm.make_sink(42)


async def test_mirror_copies_children_bytes_to_the_host_streams_only_when_asked(capfd, log_dir):
    child = "echo to-out; echo to-err >&2"
    async with lm.open_proc_mesh(["bash", "-c", child], procs=1, log_dir=log_dir,
                                 announce=False, mirror=True) as mesh:
        await mesh.wait()
    async with lm.open_proc_mesh(["bash", "-c", "echo quiet"], procs=1, log_dir=log_dir,
                                 announce=False) as mesh:
        await mesh.wait()
    out, err = capfd.readouterr()
    assert out == "to-out\n" and err == "to-err\n"  # raw, unprefixed, and "quiet" not at all


async def test_leaving_the_mesh_flushes_buffered_output_into_the_files(tmp_path, log_dir):
    # The children hold their output in sys.stdout's buffer (no periodic flush) and would lose
    # it to SIGTERM: the teardown's barrier must get it into the files first.
    cmd = [PY, "-c", PY_PRINTER.format(lines=100), str(tmp_path)]
    async with lm.open_proc_mesh(cmd, procs=2, env=CHILD_ENV, log_dir=log_dir,
                                 flush_interval=0, announce=False, grace=2.0) as mesh:
        await wait_for_files(tmp_path / f"ready-{r}" for r in range(2))
    for r in range(2):
        expected = "".join(f"rank {r} line {i}\n" for i in range(100)) + f"partial-{r}"
        assert open(mesh.log_files(r)[0]).read() == expected
    assert mesh.returncodes == [-signal.SIGTERM] * 2


async def test_a_log_file_that_cannot_be_opened_fails_plainly_and_leaves_no_child(log_dir):
    os.makedirs(log_dir / "rank-1.stdout.log")  # a directory where rank 1's file should go
    with pytest.raises(IsADirectoryError):
        async with lm.open_proc_mesh(["sleep", "30"], procs=3, log_dir=log_dir,
                                     announce=False):
            pass
    # no "sleep 30" child of ours is left running
    me = os.getpid()
    out = os.popen(f"ps -o pid=,args= --ppid {me}").read()
    assert "sleep 30" not in out
