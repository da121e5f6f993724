"""The ``logmesh`` command, run for real: in a pipe and in a pseudo-terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from trio_logmesh.cli._main import main, parse_ranks
from trio_logmesh.cli._run import exit_status

LOGMESH = [sys.executable, "-m", "trio_logmesh"]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args: list[str], tmp_path, extra_env: dict[str, str] | None = None,
        cmd: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path / "runs"), **(extra_env or {}))
    env.pop("PYTHONUNBUFFERED", None)
    return subprocess.run((cmd or LOGMESH) + args, capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)


def test_parse_ranks_and_exit_status():
    assert parse_ranks("0,3-5") == [0, 3, 4, 5]
    assert parse_ranks("2") == [2]
    for bad in ("", "a", "3-1", "1-"):
        with pytest.raises(ValueError):
            parse_ranks(bad)
    assert exit_status([0, 0]) == 0
    assert exit_status([0, 3, 1]) == 3
    assert exit_status([0, -9]) == 137


def test_help_reads_like_a_unix_tool(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    for word in ("usage: logmesh run -n N", "--window SEC", "--ranks LIST", "exit status",
                 "Ctrl-C", "examples:"):
        assert word in text
    assert main([]) == 2
    text = capsys.readouterr().out
    assert "commands:" in text and "run" in text and "bench" in text


def test_exit_code_summary_and_run_dir(tmp_path):
    script = "echo hello from $RANK; echo oops $RANK >&2; exit $RANK"
    res = run(["run", "-n", "3", "--no-window", "--", "bash", "-c", script], tmp_path)
    assert res.returncode == 1  # the lowest failing rank's code
    assert sorted(ln for ln in res.stdout.splitlines()) == [
        f"[{r}] hello from {r}" for r in range(3)
    ]
    assert res.stderr.count("logs in ") == 1
    assert "logmesh: 2 of 3 rank(s) failed: rank 1 (exit 1), rank 2 (exit 2)" in res.stderr
    assert "logmesh:   [2] oops 2" in res.stderr
    run_dir = res.stderr.split("logs in ")[1].split()[0]
    assert open(os.path.join(run_dir, "rank-2.stdout.log")).read() == "hello from 2\n"


def test_json_lines_and_rank_filter(tmp_path):
    script = "import os; print('value', os.environ['RANK'])"
    res = run(["run", "-n", "4", "--json", "--no-window", "--ranks", "1,3", "--",
               sys.executable, "-c", script], tmp_path)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    assert sorted(r["text"] for r in recs) == ["value 1", "value 3"]
    for rec in recs:
        assert set(rec) >= {"time", "rank", "host", "pid", "stream", "text"}
        assert rec["stream"] == "stdout" and rec["pid"] > 0


def test_aggregated_json_has_group_fields(tmp_path):
    script = "import os; [print(f'step {i} loss 0.{i}1') for i in range(5)]"
    res = run(["run", "-n", "4", "--json", "--window", "30", "--", sys.executable, "-c", script],
              tmp_path)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    groups = [r for r in recs if r.get("group")]
    assert groups and all({"ranks", "count", "first_time", "last_time"} <= set(g) for g in groups)
    assert sum(g["count"] for g in groups) + sum(1 for r in recs if not r.get("group")) == 20


def test_bad_usage_fails_clearly(tmp_path):
    res = run(["run", "-n", "2"], tmp_path)
    assert res.returncode != 0 and "no command given" in res.stderr
    res = run(["run", "-n", "2", "--ranks", "5", "--", "true"], tmp_path)
    assert res.returncode != 0 and "--ranks 5" in res.stderr
    res = run(["run", "-n", "2", "--window", "-1", "--", "true"], tmp_path)
    assert res.returncode == 2 and "positive" in res.stderr


def test_no_colors_in_a_pipe(tmp_path):
    res = run(["run", "-n", "1", "--no-window", "--", "bash", "-c", "echo hi; echo err >&2"],
              tmp_path)
    assert "\x1b[" not in res.stdout + res.stderr


class Pty:
    """``logmesh`` in a pseudo-terminal, as a person at a terminal runs it."""

    def __init__(self, args: list[str], tmp_path, env: dict[str, str] | None = None) -> None:
        full_env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path / "runs"), TERM="xterm")
        full_env.pop("PYTHONUNBUFFERED", None)
        full_env.pop("NO_COLOR", None)
        full_env.update(env or {})
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.execvpe(LOGMESH[0], LOGMESH + args, full_env)
        self.out = b""

    def read_until(self, needle: bytes, timeout: float = 30, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.out.count(needle) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not seen in {self.out[-2000:]!r}")
            r, _, _ = select.select([self.fd], [], [], 0.1)
            if r:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    break

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                try:
                    while True:
                        r, _, _ = select.select([self.fd], [], [], 0.05)
                        if not r:
                            break
                        data = os.read(self.fd, 65536)
                        if not data:
                            break
                        self.out += data
                except OSError:
                    pass
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if r:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:
                    pass
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"logmesh did not exit; output: {self.out[-2000:]!r}")


def test_colors_in_a_terminal_and_not_with_no_color(tmp_path):
    p = Pty(["run", "-n", "2", "--no-window", "--", "bash", "-c", "echo hi"], tmp_path)
    assert p.wait() == 0
    assert b"\x1b[" in p.out and b"hi" in p.out
    p = Pty(["run", "-n", "2", "--no-window", "--", "bash", "-c", "echo hi"], tmp_path,
            env={"NO_COLOR": "1"})
    assert p.wait() == 0
    assert b"\x1b[" not in p.out and b"hi" in p.out


def test_ctrl_c_once_stops_ranks_flushes_and_exits_130(tmp_path):
    child = ("import time\nprint('ready', flush=True)\n"
             "try:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
             "    print('rank got SIGINT, saving state'); raise SystemExit(3)\n")
    p = Pty(["run", "-n", "2", "--no-window", "--", sys.executable, "-c", child], tmp_path)
    p.read_until(b"ready", count=2)  # both ranks are up
    time.sleep(0.3)
    os.write(p.fd, b"\x03")
    assert p.wait() == 130
    assert p.out.count(b"rank got SIGINT, saving state") == 2  # their last output arrived


def test_ctrl_c_twice_kills_ranks_that_ignore_it(tmp_path):
    child = ("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "print('stubborn', flush=True)\ntime.sleep(60)\n")
    p = Pty(["run", "-n", "2", "--no-window", "--", sys.executable, "-c", child], tmp_path)
    p.read_until(b"stubborn")
    time.sleep(0.5)
    os.write(p.fd, b"\x03")
    p.read_until(b"Ctrl-C again to kill")
    time.sleep(0.3)
    os.write(p.fd, b"\x03")
    started = time.monotonic()
    assert p.wait() == 130
    assert time.monotonic() - started < 10


def test_quickstart_example_streams_aggregates_and_reports_the_failure(tmp_path):
    res = run(["run", "-n", "4", "--window", "2", "--level", "INFO", "--",
               sys.executable, "examples/train_sim.py"],
              tmp_path, {"TRAIN_SIM_STEPS": "12", "TRAIN_SIM_DELAY": "0.01"})
    assert res.returncode == 1
    # One line per step, the ranks lined up, each step's own number, the loss over the ranks.
    steps = re.findall(r"^\[ranks 0-3\] step (\d+) loss \d\.\d+\.\.\d\.\d+ ", res.stdout, re.M)
    assert steps == [str(i) for i in range(12)], res.stdout
    # --level INFO is in force: every rank's start-up record shows (folded when the ranks
    # start within the window of each other, as their own lines when one starts late).
    started = re.findall(r"^\[(ranks [\d,-]+|\d)\] INFO train: rank (?:\{rank\}|\d) of 4 starting",
                         res.stderr, re.M)
    assert started and sum(len(parse_ranks(g[6:])) if g.startswith("ranks")
                           else 1 for g in started) == 4, res.stderr
    assert "[3] RuntimeError: rank 3: simulated failure after training" in res.stderr
    assert "[logmesh] rank 3 exited with code 1" in res.stderr
    assert "logmesh: 1 of 4 rank(s) failed: rank 3 (exit 1)" in res.stderr


def test_embed_example_runs_as_written(tmp_path):
    res = run([os.path.join(ROOT, "examples", "embed_in_trio_app.py")], tmp_path,
              cmd=[sys.executable])
    assert res.returncode == 0, res.stderr
    assert "driver: exit codes [0, 0, 0, 0]" in res.stdout
    assert res.stdout.count("loading data ... done") == 4
    assert "DEBUG rank" in res.stdout + res.stderr


def test_fold_repeats_collapses_a_ranks_own_repeats_and_counts_them(tmp_path):
    script = "import os; [print('same line') for _ in range(3)]"
    res = run(["run", "-n", "2", "--json", "--window", "30", "--fold", "repeats", "--",
               sys.executable, "-c", script], tmp_path)
    recs = [json.loads(ln) for ln in res.stdout.splitlines()]
    groups = [r for r in recs if r.get("group")]
    assert groups and any(g["count"] > len(g["ranks"]) for g in groups)
    shown = sum(g["count"] for g in groups) + sum(1 for r in recs if not r.get("group"))
    assert shown == 6


def test_into_a_file_or_a_pipe_every_line_of_every_rank_is_written(tmp_path):
    # No window asked for, stdout not a terminal: nothing folded, nothing dropped, even for a
    # flood (the ranks wait for the output instead).
    script = ("import os, sys\nr = os.environ['RANK']\n"
              "for i in range(100_000):\n    print(f'rank {r} step {i} loss 0.{i % 97:02d}')\n")
    res = run(["run", "-n", "3", "--", sys.executable, "-c", script], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 300_000
    for r in range(3):
        mine = [ln for ln in lines if ln.startswith(f"[{r}] ")]
        assert mine == [f"[{r}] rank {r} step {i} loss 0.{i % 97:02d}" for i in range(100_000)]
    assert "dropped" not in res.stderr and "fold" not in res.stderr
    res = run(["run", "-n", "2", "--json", "--", sys.executable, "-c", "print('hi')"], tmp_path)
    assert [json.loads(ln)["rank"] for ln in res.stdout.splitlines()] in ([0, 1], [1, 0])


def test_a_stdout_nobody_reads_never_holds_back_the_ranks_or_the_files(tmp_path):
    # `logmesh run ... | something-that-never-reads`: the live view stalls on a full pipe, but
    # the event loop does not, so the pipe readers, the files and the ranks go on.
    lines = 200_000
    child = ("import os, sys\nr = os.environ['RANK']\n"
             "for i in range(int(sys.argv[1])):\n    print(f'rank {r} line {i} ' + 'x' * 20)\n"
             "sys.stdout.flush()\n"
             "with open(os.environ['READY'], 'w') as f:\n    f.write(f'done-{r}\\n')\n")
    fifo = str(tmp_path / "ready.fifo")
    os.mkfifo(fifo)
    ready_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    unread_r, unread_w = os.pipe()
    logs = tmp_path / "logs"
    env = dict(os.environ, READY=fifo)
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen(
        LOGMESH + ["run", "-n", "2", "--no-window", "--drop-policy", "drop", "--log-dir",
                   str(logs), "--", sys.executable, "-c", child, str(lines)],
        stdout=unread_w, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    os.close(unread_w)
    try:
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"\n") < 2:
            left = deadline - time.monotonic()
            assert left > 0, f"the ranks did not finish with stdout unread: {got!r}"
            if select.select([ready_fd], [], [], left)[0]:
                got += os.read(ready_fd, 100)
        assert sorted(got.split()) == [b"done-0", b"done-1"]
        # The ranks have exited: the host reads their last bytes into the files right away.
        expected = [sum(len(f"rank {r} line {i} {'x' * 20}\n") for i in range(lines))
                    for r in range(2)]
        sizes: list[int] = []
        while time.monotonic() < deadline:
            sizes = [os.path.getsize(logs / "latest" / f"rank-{r}.stdout.log") for r in range(2)]
            if sizes == expected:
                break
            time.sleep(0.05)
        assert sizes == expected
        assert proc.poll() is None  # logmesh itself is still trying to show the output
    finally:
        proc.kill()
        proc.wait()
        for fd in (ready_fd, keep, unread_r):
            os.close(fd)


def test_a_stdout_on_a_full_disk_stops_the_run_with_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        res = subprocess.run(LOGMESH + ["run", "-n", "2", "--no-window", "--", "bash", "-c",
                                        "echo hi; sleep 30"], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60, cwd=ROOT,
                             env=dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path)))
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert ("logmesh: cannot write to stdout: No space left on device; stopping the ranks "
            "(their files are complete)") in res.stderr
    assert "logmesh: stopped rank(s) 0-1 (stdout failed)" in res.stderr
