"""The notebook extension driven through jupyter_client, as a frontend drives a kernel: live
output during a blocking cell, output between cells, an interrupt during the end-of-cell
flush, and a kernel restart or kill leaving no rank behind."""

from __future__ import annotations

import os
import re
import time

import pytest

from .notebook_kit import HELPERS, PY, WORKER, Reply, alive, execute, wait_gone

jupyter_client = pytest.importorskip(
    "jupyter_client", reason="the notebook tests need jupyter_client (pip install -e '.[test]')")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel "
                    "(pip install -e '.[test]' or '.[notebook]')")

from jupyter_client.manager import start_new_kernel  # noqa: E402

ENV = "{'PYTHONUNBUFFERED': None}"


@pytest.fixture
def kernel(tmp_path):
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        if km.is_alive():
            km.shutdown_kernel(now=True)


def open_cell(where: str, procs: int, log_dir: str, **options: object) -> str:
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    return (HELPERS + "\n%load_ext trio_logmesh\nfrom trio_logmesh import notebook as lmnb\n"
            f"a = Ranks({where!r}, {procs})\n"
            f"mesh = lmnb.open_mesh([{PY!r}, {WORKER!r}, {where!r}], procs={procs}, "
            f"env={ENV}, log_dir={log_dir!r}, announce=False{extra})\n")


def ok(reply: Reply) -> Reply:
    assert reply.status == "ok", reply.outputs
    return reply


def rank_lines(reply: Reply) -> list[str]:
    return [line for line in reply.lines() if re.match(r"\[\d+\] ", line)]


def test_lines_stream_live_during_a_blocking_cell_and_between_cells_are_held(kernel, tmp_path):
    _, kc = kernel
    where = tmp_path / "cmd"
    where.mkdir()
    ok(execute(kc, open_cell(str(where), 2, str(tmp_path / "logs"))))
    arrivals: dict[str, float] = {}

    def seen(kind: str, content: dict) -> None:
        if kind == "stream":
            for line in content["text"].splitlines():
                arrivals.setdefault(line, time.monotonic())

    blocking = ok(execute(kc, "dones = a.send(1, lines=5, gap=0.1)\ntime.sleep(2.0)\n"
                              "a.wait(dones)", on_output=seen))
    assert sorted(rank_lines(blocking)) == sorted(
        f"[{r}] r{r} c1 n{i}" for r in range(2) for i in range(5))
    # The first line showed while the cell was still asleep, long before it ended.
    first = min(arrivals[f"[{r}] r{r} c1 n0"] for r in range(2))
    assert first - blocking.started < 1.0
    assert blocking.ended - first > 1.0

    # Lines printed after a cell ended wait for the next cell, under a note.
    before = ok(execute(kc, "a.send(2, lines=3, after=0.3)"))
    assert rank_lines(before) == []
    time.sleep(1.0)
    after = ok(execute(kc, "print('cell body')"))
    lines = after.text("stdout").splitlines()
    assert lines[0] == "[logmesh] printed between cells, before this cell: 6 line(s)"
    assert sorted(lines[1:7]) == sorted(f"[{r}] r{r} c2 n{i}" for r in range(2) for i in range(3))
    assert lines[7:] == ["[logmesh] this cell:", "cell body"]

    # What is held between cells is bounded: the oldest go, counted.
    ok(execute(kc, "import trio_logmesh.notebook._cells as cells\ncells.HOLD_LINES = 4\n"
                   "a.send(3, lines=5, gap=0.05, after=0.3)"))
    time.sleep(1.5)
    bounded = ok(execute(kc, "pass")).text("stdout").splitlines()
    m = re.fullmatch(r"\[logmesh\] printed between cells, before this cell: (\d+) line\(s\) "
                     r"\(and (\d+) earlier line\(s\) not kept: more than 4 lines or 1,024 KiB; "
                     r"the per-rank files have them\)", bounded[0])
    assert m, bounded[0]
    kept, dropped = int(m[1]), int(m[2])
    assert kept <= 4 and kept + dropped == 10
    assert len(bounded) == 1 + kept + 1 and bounded[-1] == "[logmesh] this cell:"
    for r in range(2):  # the newest are kept
        mine = [line for line in bounded[1:-1] if line.startswith(f"[{r}]")]
        assert mine == [f"[{r}] r{r} c3 n{i}" for i in range(5 - len(mine), 5)]


def test_a_cells_folded_lines_are_one_display_updated_in_place(kernel, tmp_path):
    _, kc = kernel
    where = tmp_path / "cmd"
    where.mkdir()
    ok(execute(kc, open_cell(str(where), 2, str(tmp_path / "logs"), aggregate_window_sec=1.0)))
    reply = ok(execute(kc, "for _ in range(3):\n    a.say(1, steps=5)\n    time.sleep(0.5)"))
    shows = [(t, c) for t, kind, c in reply.outputs if kind == "display_data"]
    updates = [(t, c) for t, kind, c in reply.outputs if kind == "update_display_data"]
    assert len(shows) == 1 and len(updates) >= 2
    display_id = shows[0][1]["transient"]["display_id"]
    assert all(c["transient"]["display_id"] == display_id for _, c in updates)
    assert reply.ended - shows[0][0] > 0.5  # shown while the cell ran, not at its end
    states = [c["data"]["text/plain"].splitlines() for _, c in [shows[0], *updates]]
    for old, new in zip(states, states[1:], strict=False):
        assert new[:len(old)] == old  # each update adds lines to what was shown
    final = states[-1]
    assert final[0] == "[logmesh] lines folded across ranks in this cell (aggregated):"
    # Each k-th step line of the two ranks is one line; the ranks' steps are lined up.
    assert [re.sub(r" loss .*", "", line) for line in final[1:]] == [
        f"[ranks 0-1] step {i}" for _ in range(3) for i in range(5)]
    assert rank_lines(reply) == []
    # A second, different display id for the next cell: its own display.
    nxt = ok(execute(kc, "a.say(2, steps=1)"))
    ids = [c["transient"]["display_id"] for _, kind, c in nxt.outputs if kind == "display_data"]
    assert len(ids) == 1 and ids[0] != display_id


def test_an_interrupt_during_the_end_of_cell_flush_cancels_that_flush_only(kernel, tmp_path):
    km, kc = kernel
    where = tmp_path / "cmd"
    where.mkdir()
    ok(execute(kc, open_cell(str(where), 2, str(tmp_path / "logs"), flush_interval=0)
               + "lmnb.set_cell_timeout(30)\na.say(0, lines=1)"))
    interrupted = []

    def interrupt_once_the_body_ran(kind: str, content: dict) -> None:
        if kind == "stream" and "body done" in content.get("text", "") and not interrupted:
            interrupted.append(time.monotonic())
            time.sleep(0.5)  # the post-cell hook is waiting for the stopped rank now
            km.interrupt_kernel()

    reply = execute(kc, "os.kill(mesh.pids[1], signal.SIGSTOP)\nwait_stopped(mesh.pids[1])\n"
                        "a.say(1, ranks=[0], lines=2)\nprint('body done', flush=True)",
                    timeout=25, on_output=interrupt_once_the_body_ran)
    assert interrupted, reply.outputs
    assert reply.ended - interrupted[0] < 5  # not the 30 s timeout
    assert reply.status == "ok"
    assert "[logmesh] end-of-cell flush interrupted: what the ranks printed and had not " \
           "arrived yet shows at the top of the next cell" in reply.text("stderr")
    # Rank 0 answered the cancelled flush before it was interrupted, or its lines come next.
    # The next cell is complete and correct: every line of every rank, once.
    nxt = ok(execute(kc, "os.kill(mesh.pids[1], signal.SIGCONT)\na.say(2, lines=2)",
                     timeout=20))
    shown = rank_lines(reply) + rank_lines(nxt)
    assert sorted(shown) == sorted(["[0] r0 c1 n0", "[0] r0 c1 n1"] + [
        f"[{r}] r{r} c2 n{i}" for r in range(2) for i in range(2)])
    assert nxt.ended - nxt.started < 5
    assert "[logmesh]" not in nxt.text("stderr")


def pids_of(reply: Reply) -> list[int]:
    line = next(line for line in reply.lines() if line.startswith("pids "))
    return [int(p) for p in line.split()[1:]]


#: A rank that leaves a marker when SIGTERM reaches it, and has a descendant of its own.
TRAPPING = r"""
import os, signal, subprocess, sys, time
child = subprocess.Popen(["sleep", "600"])
def term(*_):
    open(os.path.join(sys.argv[1], f"term.{os.environ['RANK']}"), "w").close()
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("child", child.pid, flush=True)
while True:
    time.sleep(1)
"""


def trapping_cell(tmp_path, procs: int = 2) -> str:
    script = tmp_path / "trap.py"
    script.write_text(TRAPPING)
    return ("%load_ext trio_logmesh\nimport time\nfrom trio_logmesh import notebook as lmnb\n"
            f"mesh = lmnb.open_mesh([{PY!r}, {str(script)!r}, {str(tmp_path)!r}], "
            f"procs={procs}, log_dir={str(tmp_path / 'logs')!r}, announce=False)\n"
            "time.sleep(0.5)\nprint('pids', *mesh.pids)")


def descendants(reply: Reply) -> list[int]:
    return [int(m[1]) for line in reply.lines() if (m := re.match(r"\[\d+\] child (\d+)$", line))]


@pytest.mark.parametrize("end", ["restart", "shutdown"])
def test_a_kernel_restart_or_shutdown_stops_every_rank(kernel, tmp_path, end):
    km, kc = kernel
    started = ok(execute(kc, trapping_cell(tmp_path)))
    pids = pids_of(started)
    kids = descendants(started)
    assert len(pids) == 2 and len(kids) == 2 and all(map(alive, pids + kids))
    if end == "restart":
        km.restart_kernel(now=False)
    else:
        km.shutdown_kernel(now=False)  # the frontend's shutdown request
    assert wait_gone(pids + kids) == []
    # The kernel's exit stopped them (SIGTERM reached every rank), not only the kill after.
    assert {"term.0", "term.1"} <= set(os.listdir(tmp_path))


def test_a_killed_kernel_leaves_no_rank_running(kernel, tmp_path):
    km, kc = kernel
    started = ok(execute(kc, trapping_cell(tmp_path)))
    pids, kids = pids_of(started), descendants(started)
    assert all(map(alive, pids + kids))
    km.shutdown_kernel(now=True)  # SIGKILL: no atexit; parent-death signal and watchdog
    assert wait_gone(pids + kids) == []


def test_lines_stay_in_their_cell_while_a_subshell_runs_a_cell_of_its_own(kernel, tmp_path):
    # A subshell's request becomes the kernel streams' fallback parent while the main cell
    # still runs: output that relied on it would land in the subshell's cell.
    _, kc = kernel
    info = kc.kernel_info(reply=True)["content"]
    if "kernel subshells" not in info.get("supported_features", []):
        pytest.skip("this ipykernel has no subshells")
    where = tmp_path / "cmd"
    where.mkdir()
    ok(execute(kc, open_cell(str(where), 2, str(tmp_path / "logs"))))
    request = kc.session.msg("create_subshell_request", {})
    kc.control_channel.send(request)
    subshell = kc.control_channel.get_msg(timeout=10)["content"]["subshell_id"]

    main_id = kc.execute("dones = a.send(1, lines=8, gap=0.15)\na.wait(dones)")
    time.sleep(0.5)  # the ranks are printing
    side = kc.session.msg("execute_request", {
        "code": "print('in the subshell')", "silent": False, "store_history": True,
        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True})
    side["header"]["subshell_id"] = subshell
    kc.shell_channel.send(side)
    side_id = side["header"]["msg_id"]
    texts: dict[str, str] = {main_id: "", side_id: ""}
    idle: set[str] = set()
    deadline = time.monotonic() + 30
    while idle != {main_id, side_id}:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        parent = msg["parent_header"].get("msg_id")
        if parent not in texts:
            continue
        if msg["msg_type"] == "stream":
            texts[parent] += msg["content"]["text"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle.add(parent)
    assert texts[side_id] == "in the subshell\n"
    assert sorted(texts[main_id].splitlines()) == sorted(
        f"[{r}] r{r} c1 n{i}" for r in range(2) for i in range(8))


def test_an_interrupt_stops_waiting_not_the_ranks(kernel, tmp_path):
    km, kc = kernel
    where = tmp_path / "cmd"
    where.mkdir()
    # No periodic flush: what the ranks print stays in their buffers until a barrier.
    ok(execute(kc, open_cell(str(where), 2, str(tmp_path / "logs"), flush_interval=0)))
    sent = []
    dones = [where / f"done.0.{r}" for r in range(2)]

    def interrupt(kind: str, content: dict) -> None:
        if kind == "stream" and "waiting" in content.get("text", "") and not sent:
            deadline = time.monotonic() + 10
            while not all(d.exists() for d in dones) and time.monotonic() < deadline:
                time.sleep(0.01)  # the ranks have printed (into their buffers)
            sent.append(time.monotonic())
            time.sleep(0.3)  # the cell is in mesh.wait() now
            km.interrupt_kernel()

    reply = execute(kc, "a.send(1, lines=3)\nprint('waiting', flush=True)\nmesh.wait()",
                    timeout=20, on_output=interrupt)
    assert sent and reply.status == "error"
    assert [c["ename"] for _, kind, c in reply.outputs if kind == "error"] == [
        "KeyboardInterrupt"]
    assert reply.ended - sent[0] < 5
    # The interrupted cell still ended with its flush: what the ranks printed is in it.
    assert sorted(rank_lines(reply)) == sorted(
        f"[{r}] r{r} c1 n{i}" for r in range(2) for i in range(3))
    assert "[logmesh]" not in reply.text("stderr")
    nxt = ok(execute(kc, "a.say(2, lines=1)\nprint(mesh.returncodes)"))
    assert sorted(rank_lines(nxt)) == ["[0] r0 c2 n0", "[1] r1 c2 n0"]
    assert "[None, None]" in nxt.lines()
