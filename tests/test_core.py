"""The core guarantees with real processes: the exact barrier, crashes, timeouts, levels, files."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter

import pytest
import trio

import trio_logmesh as lm

from .conftest import CHILD_ENV, PY, READY_PY, Collected, wait_stopped

LINES = 5000

# Prints LINES lines and a partial line into sys.stdout's buffer (block-buffered, never
# flushed by the child itself), says it is ready, and waits.
PY_PRINTER = READY_PY + r"""
import os, sys, time
r = int(os.environ["RANK"])
for i in range({lines}):
    print(f"rank {{r}} line {{i}}")
print(f"partial-{{r}}", end="")
ready(f"ready-{{r}}")
time.sleep(60)
"""

BASH_PRINTER = r"""
for i in $(seq 0 $(({lines} - 1))); do echo "rank $RANK line $i"; done
printf "partial-$RANK"
echo "ready-$RANK" > "$READY"
sleep 60
"""


def assert_exact(sink: Collected, procs: int, lines: int) -> None:
    for r in range(procs):
        got = sink.lines(rank=r, stream="stdout")
        full = [ln for ln in got if not ln.startswith("partial-")]
        assert full == [f"rank {r} line {i}" for i in range(lines)], f"rank {r}"
        assert got.count(f"partial-{r}") == 1, f"rank {r} partial line"


async def test_flush_includes_unflushed_python_stdout_buffers(run_mesh, ready):
    # flush_interval=0: no periodic flushing in the child, so only the barrier can bring the
    # tail of each child's sys.stdout buffer out.
    cmd = [PY, "-c", PY_PRINTER.format(lines=LINES)]
    async with run_mesh(cmd, 4, env=ready.env, flush_interval=0) as run:
        await ready.wait(*(f"ready-{r}" for r in range(4)))
        with trio.fail_after(30):
            await run.client.flush()
        assert_exact(run.sink, 4, LINES)
        assert run.mesh.returncodes == [None] * 4  # they are all still alive
    # and the files hold every byte, exactly as written
    for r in range(4):
        out, _ = run.mesh.log_files(r)
        expected = "".join(f"rank {r} line {i}\n" for i in range(LINES)) + f"partial-{r}"
        assert open(out).read() == expected


async def test_flush_is_exact_for_bash_children(run_mesh, ready):
    cmd = ["bash", "-c", BASH_PRINTER.format(lines=LINES)]
    async with run_mesh(cmd, 4, env=ready.env) as run:
        await ready.wait(*(f"ready-{r}" for r in range(4)))
        with trio.fail_after(30):
            await run.client.flush()
        assert_exact(run.sink, 4, LINES)


async def test_python_child_with_no_periodic_flush_exits_by_itself(run_mesh):
    # The agent's thread must not keep the interpreter from exiting, even when it has no
    # periodic flush to wake it (flush_interval=0).
    async with run_mesh([PY, "-c", "print('bye')"], 2, flush_interval=0, grace=30) as run:
        with trio.fail_after(20):
            assert await run.mesh.wait() == [0, 0]
        await run.client.flush()
        assert run.sink.lines() == ["bye", "bye"]


async def test_crash_mid_output_delivers_last_lines_traceback_and_exit_code(run_mesh):
    child = r"""
import os, sys
r = int(os.environ["RANK"])
for i in range(300):
    print(f"rank {r} line {i}")
if r == 1:
    sys.stdout.write("half a line")
    raise RuntimeError("boom in rank 1")
"""
    async with run_mesh([PY, "-c", child], 2) as run:
        codes = await run.mesh.wait()
        with trio.fail_after(20):
            await run.client.flush()
        # Every rank had exited before flush() was called: their exits are reported by now.
        assert run.client.exit_codes == [0, 1]
        assert "rank 1 exited with code 1" in run.sink.notices()
    sink = run.sink
    assert codes == [0, 1]
    for r in range(2):
        got = [ln for ln in sink.lines(rank=r, stream="stdout") if ln != "half a line"]
        assert got == [f"rank {r} line {i}" for i in range(300)]
    assert "half a line" in sink.lines(rank=1, stream="stdout")
    err = sink.lines(rank=1, stream="stderr")
    assert err[0] == "Traceback (most recent call last):"
    assert err[-1] == "RuntimeError: boom in rank 1"
    assert "rank 1 exited with code 1" in sink.notices()
    assert run.client.exit_codes == [0, 1]  # known once flush() returned after wait()


async def test_flush_timeout_names_the_stopped_rank_and_teardown_does_not_hang(
    run_mesh, ready
):
    child = READY_PY + r"""
import os, time
print("hello from", os.environ["RANK"])
ready("ready-" + os.environ["RANK"])
time.sleep(60)
"""
    started = time.monotonic()
    async with run_mesh([PY, "-c", child], 3, env=ready.env, grace=1.0, exit_timeout=1) as run:
        await ready.wait("ready-0", "ready-1", "ready-2")
        await run.client.flush()
        os.kill(run.mesh.pids[2], signal.SIGSTOP)
        await wait_stopped(run.mesh.pids[2])
        t0 = trio.current_time()
        with pytest.raises(lm.FlushTimeout) as info:
            await run.client.flush(timeout=2)
        elapsed = trio.current_time() - t0
        assert info.value.missing_ranks == [2]
        assert info.value.reasons[2] == "is stopped (SIGSTOP, Ctrl-Z or a debugger)"
        assert "rank 2 is stopped" in str(info.value)
        assert 1.9 <= elapsed < 4.0
    assert time.monotonic() - started < 30
    assert run.mesh.returncodes[2] in (-signal.SIGTERM, -signal.SIGKILL)
    assert sorted(run.sink.lines(stream="stdout")) == [f"hello from {r}" for r in range(3)]


async def test_overlapping_flushes_each_complete(run_mesh, ready):
    async with run_mesh([PY, "-c", PY_PRINTER.format(lines=200)], 2, env=ready.env) as run:
        await ready.wait("ready-0", "ready-1")
        done = []

        async def one(i: int) -> None:
            await run.client.flush()
            done.append(i)

        with trio.fail_after(20):
            async with trio.open_nursery() as flushes:
                for i in range(5):
                    flushes.start_soon(one, i)
        assert sorted(done) == list(range(5))
        assert_exact(run.sink, 2, 200)


async def test_level_change_takes_effect_in_the_children(run_mesh, ready, tmp_path):
    # Each child logs at three levels when the test creates go<n>, then says it did.
    child = READY_PY + r"""
import logging, os, sys, time
logging.basicConfig(format="%(levelname)s %(message)s")
r = os.environ["RANK"]
n = 0
while True:
    if os.path.exists(os.path.join(sys.argv[1], f"go{n}")):
        logging.debug("debug %d", n)
        logging.info("info %d", n)
        logging.warning("warning %d", n)
        sys.stderr.flush()
        ready(f"done{n}-{r}")
        n += 1
    time.sleep(0.01)
"""
    async with run_mesh([PY, "-c", child, str(tmp_path)], 2, env=ready.env) as run:
        for n, level in enumerate([logging.INFO, logging.DEBUG, logging.WARNING]):
            run.client.set_mode(stream_to_client=True, level=level)
            await run.client.flush()  # the level is in force once this returns
            (tmp_path / f"go{n}").touch()
            with trio.fail_after(20):
                await ready.wait(f"done{n}-0", f"done{n}-1")
        await run.client.flush()
    for r in range(2):
        assert run.sink.lines(rank=r, stream="stderr") == [
            "INFO info 0", "WARNING warning 0",
            "DEBUG debug 1", "INFO info 1", "WARNING warning 1",
            "WARNING warning 2",
        ]


async def test_initial_log_level_is_in_force_before_user_code(run_mesh):
    child = "import logging; logging.basicConfig(format='%(message)s'); logging.info('shown')"
    async with run_mesh([PY, "-c", child], 1, log_level="info") as run:
        await run.mesh.wait()
        await run.client.flush()
    assert run.sink.lines(stream="stderr") == ["shown"]


async def test_window_without_streaming_is_a_value_error(run_mesh, log_dir):
    async with run_mesh(["true"], 1) as run:
        client = run.client
        with pytest.raises(ValueError, match="stream_to_client"):
            client.set_mode(stream_to_client=False, aggregate_window_sec=3)
        with pytest.raises(ValueError, match="positive"):
            client.set_mode(stream_to_client=True, aggregate_window_sec=0)
        with pytest.raises(ValueError, match="level"):
            client.set_mode(level="LOUD")
        client.set_mode(stream_to_client=False, aggregate_window_sec=None)
        with pytest.raises(ValueError, match="stream_to_client"):
            await run.mesh.logging_option(stream_to_client=False, aggregate_window_sec=1)
        with pytest.raises(ValueError, match="fold"):
            client.set_mode(aggregate_window_sec=1, fold="similar")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stream_to_client"):
            async with lm.open_logging_client(run.mesh, stream_to_client=False,
                                              aggregate_window_sec=1):
                pass


async def test_children_get_rank_environment_and_channel(run_mesh):
    child = "echo $RANK $WORLD_SIZE $LOCAL_RANK ${BOOTSTRAP_LOG_CHANNEL:+has-channel}"
    async with run_mesh(["bash", "-c", child], 3) as run:
        assert await run.mesh.wait() == [0, 0, 0]
        await run.client.flush()
    for r in range(3):
        assert run.sink.lines(rank=r) == [f"{r} 3 {r} has-channel"]


async def test_logging_option_one_liner_flushes_at_teardown(log_dir):
    sink = Collected()
    child = "import os; print('hi from', os.environ['RANK'])"
    async with lm.open_proc_mesh(
        [PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False
    ) as mesh:
        with pytest.raises(ValueError, match="fold"):
            await mesh.logging_option(aggregate_window_sec=1, fold="similar")
        client = await mesh.logging_option(stream_to_client=True, sink=sink)
        assert isinstance(client, lm.LoggingMeshClient)
        await mesh.wait()
    assert Counter(sink.lines()) == Counter(["hi from 0", "hi from 1"])


async def test_logging_option_folds_with_the_fold_asked_for(log_dir):
    sink = Collected()
    child = "import os; [print('tick', i, 'rank', os.environ['RANK']) for i in range(2)]"
    async with lm.open_proc_mesh(
        [PY, "-c", child], procs=2, env=CHILD_ENV, log_dir=log_dir, announce=False
    ) as mesh:
        await mesh.logging_option(aggregate_window_sec=30, sink=sink, fold="ranks")
        await mesh.wait()
    assert sorted(g.text for g in sink.items if isinstance(g, lm.GroupLine)) == [
        "tick 0 rank {rank}", "tick 1 rank {rank}"]


async def test_bad_arguments_fail_clearly(log_dir):
    with pytest.raises(ValueError, match="procs"):
        async with lm.open_proc_mesh(["true"], procs=0, log_dir=log_dir):
            pass
    with pytest.raises(ValueError, match="cmd"):
        async with lm.open_proc_mesh([], procs=1, log_dir=log_dir):
            pass
    for name, value in [("grace", 0), ("partial_idle", -1), ("drain_timeout", 0),
                        ("progress_interval", 0)]:
        with pytest.raises(ValueError, match=name):
            async with lm.open_proc_mesh(["true"], log_dir=log_dir, **{name: value}):
                pass
    with pytest.raises(ValueError, match="max_line"):
        async with lm.open_proc_mesh(["true"], log_dir=log_dir, max_line=10):
            pass
    with pytest.raises(ValueError, match="level"):
        async with lm.open_proc_mesh(["true"], log_dir=log_dir, log_level="LOUD"):
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


async def test_leaving_the_mesh_flushes_buffered_output_into_the_files(ready, log_dir):
    # The children hold their output in sys.stdout's buffer (no periodic flush) and would lose
    # it to SIGTERM: the teardown's barrier must get it into the files first.
    async with lm.open_proc_mesh(
        [PY, "-c", PY_PRINTER.format(lines=100)], procs=2, env={**CHILD_ENV, **ready.env},
        log_dir=log_dir, flush_interval=0, announce=False, grace=2.0,
    ) as mesh:
        await ready.wait("ready-0", "ready-1")
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
    out = os.popen(f"ps -o pid=,args= --ppid {os.getpid()}").read()
    assert "sleep 30" not in out


async def test_python_flags_that_skip_site_run_without_an_agent_and_without_delay(run_mesh):
    # `python -I` never imports our sitecustomize: nothing waits for an agent.
    child = "import sys; print('isolated'); sys.stdout.flush(); import time; time.sleep(30)"
    async with run_mesh([PY, "-I", "-c", child], 1, grace=1.0) as run:
        with trio.fail_after(5):
            await run.sink.wait_for(lambda: run.sink.lines() == ["isolated"])
            await run.client.flush()


# Prints a line into sys.stdout's buffer and never flushes it itself; only a barrier through
# the rank's agent can bring it out (the periodic flush is off in these tests).
BUFFERED = READY_PY + """
import os, sys, time
print("held in the buffer of", os.path.basename(sys.argv[0]) or "-c")
ready("printed")
time.sleep(60)
"""


@pytest.mark.parametrize("how", ["shebang", "env", "shell"])
async def test_python_behind_a_shebang_env_or_shell_gets_the_agent(run_mesh, ready, tmp_path,
                                                                    how):
    script = tmp_path / "tick.py"
    script.write_text(f"#!{PY}\n{BUFFERED}")
    script.chmod(0o755)
    cmd = {
        "shebang": [str(script)],
        "env": ["/usr/bin/env", PY, str(script)],
        "shell": ["bash", "-c", f"echo from bash; exec {PY} {script}"],
    }[how]
    async with run_mesh(cmd, 1, env=ready.env, flush_interval=0, grace=1.0) as run:
        await ready.wait("printed")
        with trio.fail_after(10):
            await run.client.flush()
        assert run.sink.lines()[-1] == "held in the buffer of tick.py"
async def test_a_line_printed_after_an_idle_spell_still_shows_by_itself(run_mesh, ready):
    # While a rank is idle its agent flushes less often; the next line must still come out
    # without a barrier (within the idle interval, a quarter second).
    child = READY_PY + r"""
import time
ready("idle")
time.sleep(1.5)
print("after a nap")  # block-buffered: only the agent's periodic flush brings it out
time.sleep(60)
"""
    async with run_mesh([PY, "-c", child], 1, env=ready.env, grace=1.0) as run:
        await ready.wait("idle")
        with trio.fail_after(10):
            await run.sink.wait_for(lambda: run.sink.lines() == ["after a nap"])


async def test_the_body_exception_survives_a_teardown_error(log_dir):
    # The mesh's own client (logging_option) flushes at teardown; its sink fails then.  The
    # user's ValueError is what comes out, the sink's error attached to it, not in its place.
    class SinkBroke(Exception):
        pass

    class FailsWhenArmed(Collected):
        armed = False

        async def emit(self, items):
            if self.armed:
                raise SinkBroke("the sink failed during teardown")
            await super().emit(items)

    sink = FailsWhenArmed()
    with pytest.raises(ValueError, match="the user's own") as info:
        # The ranks say goodbye when the teardown's SIGTERM reaches them: the sink is called.
        child = "trap 'echo bye; exit 0' TERM; echo hi; sleep 30 & wait"
        async with lm.open_proc_mesh(["bash", "-c", child], procs=2, log_dir=log_dir,
                                     announce=False, grace=2.0) as mesh:
            await mesh.logging_option(sink=sink)
            await sink.wait_for(lambda: sink.lines() == ["hi", "hi"])  # both traps are set
            sink.armed = True
            raise ValueError("the user's own")
    assert not isinstance(info.value, BaseExceptionGroup)
    notes = getattr(info.value, "__notes__", [])
    assert any("the sink failed during teardown" in n for n in notes), notes
    assert mesh.returncodes == [0, 0]  # and the teardown still stopped the ranks


async def test_a_prompt_waiting_for_its_newline_comes_before_what_follows_on_stderr(run_mesh):
    child = ("import sys\nsys.stdout.write('Enter a value: ')\nsys.stdout.flush()\n"
             "raise SystemExit('no input')\n")
    async with run_mesh([PY, "-c", child], 1) as run:
        await run.mesh.wait()
        await run.client.flush()
    shown = [(i.stream, i.text) for i in run.sink.items if isinstance(i, lm.LogLines)]
    assert shown == [("stdout", "Enter a value: "), ("stderr", "no input")]


async def test_a_long_line_is_cut_in_the_view_and_whole_in_the_file(run_mesh):
    child = "print('x' * 100_000); print('next')"
    async with run_mesh([PY, "-c", child], 1, max_line=65536) as run:
        await run.mesh.wait()
        await run.client.flush()
    lines = run.sink.lines()
    assert lines[0] == "x" * 65536 + " … [truncated 33.7 KiB]"
    assert lines[1] == "next"
    assert open(run.mesh.log_files(0)[0]).read() == "x" * 100_000 + "\nnext\n"


async def test_stderr_during_a_stdout_flood_splits_no_line_and_keeps_order(run_mesh):
    # stdout chunks end mid-line all the time; stderr lines must wait for the line to end,
    # never cut it in two, and each stream keeps its own order.
    child = ("import sys\nfor i in range(30000):\n"
             "    sys.stdout.write(f'out {i} ' + 'x' * 50 + '\\n')\n"
             "    if i % 1000 == 0:\n        sys.stderr.write(f'err {i}\\n')\n")
    async with run_mesh([PY, "-c", child], 1) as run:
        await run.mesh.wait()
        await run.client.flush()
    assert run.sink.lines(stream="stdout") == [f"out {i} " + "x" * 50 for i in range(30000)]
    assert run.sink.lines(stream="stderr") == [f"err {i}" for i in range(0, 30000, 1000)]
