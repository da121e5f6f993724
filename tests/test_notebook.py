"""The notebook extension in a real kernel: a notebook run by nbclient, cross-checked cell by
cell against the per-rank files.

The ranks (``nb_worker``) print only when a cell tells them to, and tag each line with that
cell; they are block-buffered and never flushed by the agent's timer (``flush_interval=0``),
so what a cell shows of them got there through the end-of-cell flush alone.
"""

from __future__ import annotations

import os
import re

import pytest

from .notebook_kit import (
    HELPERS,
    PY,
    WORKER,
    CellOutput,
    cell_tag,
    cross_check,
    read_outputs,
)

nbformat = pytest.importorskip("nbformat", reason="the notebook tests need nbformat "
                               "(pip install -e '.[test]' or '.[notebook]')")
nbclient = pytest.importorskip("nbclient", reason="the notebook tests need nbclient "
                               "(pip install -e '.[test]' or '.[notebook]')")
pytest.importorskip("ipykernel", reason="the notebook tests need ipykernel "
                    "(pip install -e '.[test]' or '.[notebook]')")

CELL_TIMEOUT = 1.0


def notebook_cells(tmp: str) -> list[str]:
    a_dir, b_dir, c_dir, d_dir = (os.path.join(tmp, f"cmd-{x}") for x in "abcd")
    for d in (a_dir, b_dir, c_dir, d_dir):
        os.makedirs(d)
    env = "{'PYTHONUNBUFFERED': None}"
    return [
        "# cell 0\nimport os\nfds = [os.readlink(f'/proc/self/fd/{fd}') for fd in (1, 2)]\n"
        "%load_ext trio_logmesh\n%load_ext trio_logmesh\n"
        "import trio_logmesh\ntrio_logmesh.load_ipython_extension(get_ipython())\n"
        "cbs = get_ipython().events.callbacks\n"
        "print('hooks', *[sum('CellHooks' in repr(f) for f in cbs[e])\n"
        "                 for e in ('pre_run_cell', 'post_run_cell')])",
        "# cell 1\n" + HELPERS + "\nimport trio\nfrom trio_logmesh import notebook as lmnb\n"
        f"lmnb.set_cell_timeout({CELL_TIMEOUT})\n"
        f"a = Ranks({a_dir!r}, 3)\n"
        f"mesh = lmnb.open_mesh([{PY!r}, {WORKER!r}, {a_dir!r}], procs=3, env={env},\n"
        f"                      log_dir={os.path.join(tmp, 'logs-a')!r}, flush_interval=0,\n"
        "                      grace=1.0)\n"
        "a.say(1, lines=3)",
        "# cell 2\na.say(2, lines=50, err_lines=2)\n"
        "async def shout(x):\n    await trio.sleep(0.01)\n    print('runtime says', x)\n"
        "    return x\nprint(lmnb.run(shout, 2))",
        "# cell 3\nawait a.asay(3, lines=20)\nprint(await lmnb.arun(shout, 3))",
        "# cell 4\ndones = a.send(4, lines=10, gap=0.05)\ntime.sleep(0.8)\na.wait(dones)",
        "# cell 5\na.say(5, lines=2, partial=True)",
        "# cell 6\na.say(6, lines=2)",
        "# cell 7\nos.kill(mesh.pids[2], signal.SIGSTOP)\nwait_stopped(mesh.pids[2])\n"
        "a.say(7, ranks=[0, 1], lines=3)",
        "# cell 8\na.say(8, ranks=[0, 1], lines=3)",
        # Rank 2 speaks (and its line is shown: the flush), then stops again.
        "# cell 19\nos.kill(mesh.pids[2], signal.SIGCONT)\na.say(19, ranks=[2], err_lines=1)\n"
        "lmnb.run(mesh.client.flush, 10.0)\n"
        "os.kill(mesh.pids[2], signal.SIGSTOP)\nwait_stopped(mesh.pids[2])",
        "# cell 9\nos.kill(mesh.pids[2], signal.SIGCONT)\na.say(9, lines=3)",
        "# cell 10\na.say(10, ranks=[1], lines=2, exit=3)\n"
        "lmnb.run(mesh.proc_mesh.wait_rank, 1)",
        "# cell 11\n"
        f"b = Ranks({b_dir!r}, 4)\n"
        f"agg = lmnb.open_mesh([{PY!r}, {WORKER!r}, {b_dir!r}], procs=4, env={env},\n"
        f"                     log_dir={os.path.join(tmp, 'logs-b')!r}, name='agg',\n"
        "                     aggregate_window_sec=0.3, announce=False)\n"
        "b.say(11, steps=20)\ntime.sleep(0.6)\nb.say(11, steps=20)",
        "# cell 18\nagg.set_mode(aggregate_window_sec=0.3, fold='repeats')\n"
        "b.say(18, steps=20)\ntime.sleep(0.6)\nb.say(18, steps=20)",
        "# cell 12\npids = mesh.pids + agg.pids\n"
        "print('kernel fds unchanged', fds == [os.readlink(f'/proc/self/fd/{fd}') for fd in (1, 2)])\n"
        "print('codes', mesh.stop(), agg.stop())\n"
        "print('running', [p for p in pids if os.path.exists(f'/proc/{p}')])",
        "# cell 13\nlmnb.open_mesh(['/nonexistent/program'], procs=2)",
        "# cell 14\n%unload_ext trio_logmesh\n"
        "print('hooks', *[sum('CellHooks' in repr(f) for f in cbs[e])\n"
        "                 for e in ('pre_run_cell', 'post_run_cell')])",
        "# cell 15\n%load_ext trio_logmesh\n"
        "print('hooks', *[sum('CellHooks' in repr(f) for f in cbs[e])\n"
        "                 for e in ('pre_run_cell', 'post_run_cell')])",
        "# cell 16\n"
        f"c = Ranks({c_dir!r}, 1)\n"
        f"m3 = lmnb.open_mesh([{PY!r}, {WORKER!r}, {c_dir!r}], env={env}, announce=False,\n"
        "                    name='m3')\n"
        "c.say(16, lines=2)\nlmnb.shutdown()\nprint('m3', m3.closed, m3.returncodes)",
        "# cell 17\n"
        f"d = Ranks({d_dir!r}, 1)\n"
        f"m4 = lmnb.open_mesh([{PY!r}, {WORKER!r}, {d_dir!r}], env={env}, announce=False,\n"
        "                    name='m4')\n"
        "d.say(17, lines=2)\nprint('m4', m4.stop())",
    ]


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> tuple[list[CellOutput], str]:
    tmp = str(tmp_path_factory.mktemp("nb"))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in notebook_cells(tmp)]
    for cell in nb.cells:
        if cell_tag(cell.source) == 13:  # the cell whose program cannot start
            cell.metadata["tags"] = ["raises-exception"]
    client = nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                                     resources={"metadata": {"path": tmp}})
    client.execute()
    nbformat.write(nb, os.path.join(tmp, "executed.ipynb"))  # to look at when a test fails
    return read_outputs(nb.cells), tmp


def test_loading_twice_keeps_one_hook_pair_and_unloading_removes_it(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    assert by_tag[0].other[-1] == "hooks 1 1"
    assert by_tag[14].other == ["hooks 0 0"]
    assert by_tag[15].other == ["hooks 1 1"]


def test_what_a_function_run_on_the_runtime_prints_goes_to_its_cell(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    assert by_tag[2].other == ["runtime says 2", "2"]
    assert by_tag[3].other == ["runtime says 3", "3"]


def test_a_program_that_cannot_start_is_one_clear_error(executed):
    outputs, _ = executed
    cell = {co.tag: co for co in outputs}[13]
    assert cell.errors == ["FileNotFoundError: [Errno 2] No such file or directory: "
                           "'/nonexistent/program'"]
    shown = "\n".join(cell.tracebacks)
    assert "trio" not in shown.replace("trio_logmesh", "") and "_runtime.py" not in shown


def test_every_line_is_in_the_cell_that_printed_it_once(executed):
    outputs, tmp = executed
    check = cross_check(outputs, os.path.join(tmp, "logs-a"), 3)
    print(f"\ncross-check, mesh of 3 ranks over {len(outputs)} cells: {check.summary()}"
          f"\nlines shown per cell: {check.per_cell_summary()}")
    assert (check.wrong_cell, check.missing, check.twice, check.out_of_order) == ([], [], [], [])
    # Every cell that told ranks to print shows each of those lines (none is missing above),
    # and the total is what the ranks were told to print.
    assert check.lines_checked == 3 * 3 + 3 * 52 + 3 * 20 + 3 * 10 + 3 * 2 + 3 * 2 + 2 * 3 * 2 \
        + 1 + 3 * 3 + 2


def test_block_buffered_and_partial_lines_reach_their_cell(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    # Cell 2: 50 block-buffered stdout lines and 2 stderr lines per rank, nothing else.
    assert sorted((r, s) for _, r, s, _ in by_tag[2].lines) == sorted(
        [(r, "stdout") for r in range(3) for _ in range(50)]
        + [(r, "stderr") for r in range(3) for _ in range(2)])
    # Cell 5 ends with each rank's partial line; cell 6 starts each rank with its rest.
    for r in range(3):
        assert [t for _, rank, _, t in by_tag[5].lines if rank == r][-1] == f"r{r} c5 partial"
        assert [t for _, rank, _, t in by_tag[6].lines if rank == r][0] == f"r{r} c6 n0"


def test_async_and_blocking_cells_show_their_lines(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    assert len(by_tag[3].lines) == 60 and by_tag[3].errors == []
    assert len(by_tag[4].lines) == 30 and by_tag[4].errors == []


def test_a_stopped_rank_costs_one_timeout_and_one_line(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    first, later, spoke, resumed = by_tag[7], by_tag[8], by_tag[19], by_tag[9]
    no_answer = (r"end of cell: no answer from rank 2 within 1 s \(rank 2 is stopped "
                 r"\(SIGSTOP, Ctrl-Z or a debugger\)\); what it printed may show in a "
                 r"later cell")
    assert len(first.notes) == 1
    assert re.fullmatch(no_answer, first.notes[0]), first.notes
    assert first.seconds is not None and first.seconds >= CELL_TIMEOUT
    assert len(later.notes) == 1 and later.notes[0].startswith(
        "end of cell: rank 2 still silent (since an earlier cell; not waited for)")
    assert later.seconds is not None and later.seconds < CELL_TIMEOUT - 0.3
    # It spoke since, then stopped again: it is waited for in full again, and named again.
    assert spoke.lines == [("", 2, "stderr", "r2 c19 e0")]
    assert len(spoke.notes) == 1 and re.fullmatch(no_answer, spoke.notes[0]), spoke.notes
    assert spoke.seconds is not None and spoke.seconds >= CELL_TIMEOUT
    assert resumed.notes == []
    assert sorted({r for _, r, _, _ in resumed.lines}) == [0, 1, 2]


def test_an_exit_is_reported_in_the_cell_it_happened_in(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    assert by_tag[10].notes == ["rank 1 exited with code 3"]
    assert by_tag[10].results == ["3"]


def summary_display(cell: CellOutput) -> tuple[list[str], list[int], list[str]]:
    """The cell's one summary display: its tags, the count each stands for, the lines shown
    as they are."""
    assert len(cell.displays) == 1
    lines = cell.displays[0]["text/plain"].splitlines()
    assert lines[0] == "[logmesh] lines folded across ranks in this cell (aggregated):"
    tags, counts = [], []
    for line in lines[1:]:
        m = re.match(r"\[agg ((?:(\d+)x )?ranks ([\d,-]+))\] step \d+(\.\.\d+)? loss ", line)
        assert m, line
        tags.append(m[1])
        counts.append(int(m[2]) if m[2] else len(expand_ranks(m[3])))
    shown = [t for mesh, _, _, t in cell.lines if mesh == "agg"]
    assert all(t.startswith("step ") for t in shown)
    return tags, counts, shown


def expand_ranks(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def test_summaries_go_into_one_display_per_cell_that_adds_up(executed):
    outputs, tmp = executed
    by_tag = {co.tag: co for co in outputs}
    printed = 0
    for r in range(4):
        with open(os.path.join(tmp, "logs-b", f"rank-{r}.stdout.log")) as fh:
            printed += len(fh.read().splitlines())
    assert printed == 2 * 4 * 40
    # Folding the ranks (the default): the k-th step line of the 4 ranks is one line.
    tags, counts, shown = summary_display(by_tag[11])
    assert tags and all(t == "ranks 0-3" for t in tags)
    assert len(shown) + sum(counts) == 4 * 40  # every line: shown, or counted in a summary
    # Folding repeats (set_mode(fold="repeats")): one line stands for many steps.
    tags, counts, shown = summary_display(by_tag[18])
    assert tags and any(c > 4 for c in counts)
    assert len(shown) + sum(counts) == 4 * 40


def test_stop_ends_every_rank_and_no_cell_gets_output_of_another(executed):
    outputs, _ = executed
    last = {co.tag: co for co in outputs}[12]
    assert last.other[-1] == "running []"
    assert last.other[-3] == "kernel fds unchanged True"  # no redirection of the kernel's 1/2
    assert last.other[-2] == "codes [-15, 3, -15] [-15, -15, -15, -15]"
    assert all(co.errors == [] for co in outputs if co.tag != 13)
    assert not any("between cells" in n for co in outputs for n in co.notes)


def test_after_a_shutdown_the_next_mesh_runs_on_a_new_runtime(executed):
    outputs, _ = executed
    by_tag = {co.tag: co for co in outputs}
    assert by_tag[16].lines == [("m3", 0, "stdout", "r0 c16 n0"), ("m3", 0, "stdout", "r0 c16 n1")]
    assert by_tag[16].other == ["m3 True [-15]"]
    assert by_tag[16].notes == ["m3: rank 0 was killed by SIGTERM"]
    assert by_tag[17].lines == [("m4", 0, "stdout", "r0 c17 n0"), ("m4", 0, "stdout", "r0 c17 n1")]
    assert by_tag[17].other == ["m4 [-15]"]
