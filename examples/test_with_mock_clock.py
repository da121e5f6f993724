"""How to test your own code that uses trio_logmesh, under pytest-trio's ``autojump_clock``.

    python3 -m pytest examples/test_with_mock_clock.py

Windows and timeouts in trio_logmesh run on trio's clock, so under MockClock a
60-second aggregation window passes in no real time.  The children are real processes, though:
give the clock an ``autojump_threshold`` so it only jumps once the loop has been idle for a
moment of real time, or it would jump past a child that simply has not printed yet.
(``trio_mode = true`` is set in pyproject.toml; elsewhere mark tests with ``@pytest.mark.trio``.)
"""

from __future__ import annotations

import signal
import sys

import trio

import trio_logmesh as lm

# --- the code under test: a helper a user might write -------------------------------------


async def run_and_summarize(cmd: list[str], procs: int, window: float) -> list[lm.Output]:
    """Run ``cmd`` on ``procs`` ranks with an aggregation window; return what was printed."""
    out: list[lm.Output] = []
    async with lm.open_proc_mesh(cmd, procs=procs, announce=False) as mesh:
        async with lm.open_logging_client(mesh, sink=out.append,
                                          aggregate_window_sec=window) as client:
            await mesh.wait()
            await client.flush()  # prints the groups still held by the window
    return out


# --- its tests -------------------------------------------------------------------------


async def test_a_long_window_passes_in_no_real_time(autojump_clock):
    autojump_clock.autojump_threshold = 0.05
    child = "import os; [print(f'epoch {i} done on rank', os.environ['RANK']) for i in range(3)]"
    start = trio.current_time()
    out = await run_and_summarize([sys.executable, "-c", child], procs=4, window=60)
    groups = [o for o in out if isinstance(o, lm.GroupLine)]
    live = [o for o in out if isinstance(o, lm.LogLines)]
    # the first line of the kind printed at once; the other 11 were summarized in one group
    assert sum(len(o.lines) for o in live) + sum(g.count for g in groups) == 12
    assert any(g.ranks_text == "0-3" for g in groups)
    assert trio.current_time() - start < 120  # mock seconds; real time was well under one


async def test_flush_timeout_on_the_mock_clock(autojump_clock):
    autojump_clock.autojump_threshold = 0.05
    child = "import signal, time; print('up', flush=True); signal.pause()"
    async with lm.open_proc_mesh([sys.executable, "-c", child], procs=1, announce=False,
                                 grace=1) as mesh:
        seen: list[str] = []
        client = await mesh.logging_option(
            sink=lambda item: seen.extend(getattr(item, "lines", ())))
        while "up" not in seen:  # its user code runs: its agent is connected
            await client.flush()
        mesh.send_signal(signal.SIGSTOP)  # the rank can no longer answer
        while _state(mesh.pids[0]) != "T":  # a stop takes effect asynchronously
            await trio.sleep(0.01)
        try:
            with trio.fail_after(10):  # mock time: no real 10 s wait
                await client.flush(timeout=5)
        except lm.FlushTimeout as exc:
            assert exc.missing_ranks == [0]
            assert exc.reasons[0].startswith("is stopped")
        else:
            raise AssertionError("flush should have timed out")


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]
