"""``logmesh run`` as a launcher people trust: signals, orphans, closed outputs, mistakes,
environments that fail, and the program running as it would without logmesh."""

from __future__ import annotations

import os
import re
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from .conftest import alive
from .test_cli import LOGMESH, ROOT, Pty, run

PY = sys.executable


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().rsplit(")", 1)[1].split()[0]


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


class Logmesh:
    """``logmesh`` started with its stdout a pipe this test reads line by line."""

    def __init__(self, args: list[str], tmp_path, **popen) -> None:
        env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path / "runs"))
        env.pop("PYTHONUNBUFFERED", None)
        env.update(popen.pop("env", {}))
        self.proc = subprocess.Popen(LOGMESH + args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env, cwd=ROOT, **popen)
        self.out = b""

    def read_until(self, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
        """Read stdout until ``count`` lines match ``pattern``; return the matches."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            found = [m.group(0) for m in rx.finditer(self.out.decode(errors="replace"))]
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} x{count} not seen: {self.out[-2000:]!r}"
            if select.select([fd], [], [], left)[0]:
                data = os.read(fd, 65536)
                assert data, f"stdout ended before {pattern!r}: {self.out[-2000:]!r}"
                self.out += data

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self.out += out
        return self.proc.returncode, err.decode(errors="replace")


# Each rank starts a grandchild, says both pids, then waits (ignoring SIGINT, as a rank
# started from a script does).
FAMILY = ("import os, signal, subprocess, time\n"
          "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
          "kid = subprocess.Popen(['sleep', '120'])\n"
          "print('pids', os.getpid(), kid.pid, flush=True)\n"
          "time.sleep(120)\n")


def _pids(lines: list[str]) -> list[int]:
    return [int(p) for line in lines for p in line.split()[1:]]


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_term_and_hup_stop_every_rank_and_descendant(tmp_path, sig, status):
    lm = Logmesh(["run", "-n", "2", "--no-window", "--grace", "1", "--", PY, "-c", FAMILY],
                 tmp_path)
    pids = _pids(lm.read_until(r"pids \d+ \d+", 2))
    os.kill(lm.proc.pid, sig)
    code, err = lm.finish()
    assert code == status
    assert gone(pids), "a rank or a grandchild outlived the run"
    assert f"logmesh: {signal.Signals(sig).name}; stopping ranks" in err
    assert "Traceback" not in err


def test_ctrl_c_reaches_descendants_and_twice_kills_at_once(tmp_path):
    printing = ("import os, subprocess, time\n"
                "kid = subprocess.Popen(['bash', '-c', 'trap \"\" INT; while :; do echo kid; "
                "sleep 0.05; done'])\n"
                "print('pids', os.getpid(), kid.pid, flush=True)\n"
                "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "time.sleep(120)\n")
    p = Pty(["run", "-n", "2", "--no-window", "--grace", "30", "--", PY, "-c", printing],
            tmp_path)
    p.read_until(b"pids", count=2)
    pids = [int(x) for x in re.findall(rb"pids (\d+) (\d+)", p.out) for x in x]
    os.write(p.fd, b"\x03")
    p.read_until(b"Ctrl-C again to kill")
    os.write(p.fd, b"\x03")
    started = time.monotonic()
    assert p.wait() == 130
    assert time.monotonic() - started < 10  # not the 30 s grace
    assert gone(pids, 5)


def test_ctrl_z_stops_the_ranks_and_fg_continues_them(tmp_path):
    ticking = ("import os, time\nprint('pid', os.getpid(), flush=True)\n"
               "while True:\n    time.sleep(0.05)\n")
    p = Pty(["run", "-n", "2", "--no-window", "--", PY, "-c", ticking], tmp_path)
    p.read_until(b"pid ", count=2)
    ranks = [int(x) for x in re.findall(rb"pid (\d+)", p.out)]
    os.write(p.fd, b"\x1a")  # Ctrl-Z
    deadline = time.monotonic() + 10
    while not all(state(x) == "T" for x in [p.pid, *ranks]):
        assert time.monotonic() < deadline, [state(x) for x in [p.pid, *ranks]]
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGCONT)  # what the shell's fg does
    deadline = time.monotonic() + 10
    while any(state(x) == "T" for x in ranks):
        assert time.monotonic() < deadline, [state(x) for x in ranks]
        time.sleep(0.05)
    os.write(p.fd, b"\x03")
    assert p.wait() == 130


def test_a_failing_rank_stops_the_others_unless_keep_going(tmp_path):
    child = ("import os, sys, time\nr = int(os.environ['RANK'])\n"
             "print('up', r, flush=True)\n"
             "if r == 1:\n    sys.exit(3)\n"
             "time.sleep(20)\nprint('finished', r)\n")
    t0 = time.monotonic()
    res = run(["run", "-n", "3", "--no-window", "--grace", "1", "--", PY, "-c", child], tmp_path)
    assert res.returncode == 3
    assert time.monotonic() - t0 < 15  # not the 20 s the others would have slept
    assert "logmesh: rank 1 failed (exit 3); stopping the other ranks" in res.stderr
    assert "logmesh: 1 of 3 rank(s) failed: rank 1 (exit 3)" in res.stderr
    assert "logmesh: stopped rank(s) 0,2 (after rank 1 failed)" in res.stderr
    child = child.replace("time.sleep(20)", "time.sleep(1)")
    res = run(["run", "-n", "3", "--no-window", "--keep-going", "--", PY, "-c", child],
              tmp_path)
    assert res.returncode == 3
    assert sorted(re.findall(r"finished \d", res.stdout)) == ["finished 0", "finished 2"]


def with_marker(marker: str) -> list[int]:
    """The live processes whose command line holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_a_closed_stdout_ends_quietly_with_141_and_the_ranks_stopped(tmp_path):
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    flood = "while True:\n    print('line')\n"
    env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path / "runs"))
    head = subprocess.Popen(["head", "-c", "200"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    lm = subprocess.Popen(LOGMESH + ["run", "-n", "2", "--no-window", "--", PY, "-c", flood,
                                     marker],
                          stdout=head.stdin, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    head.stdin.close()  # type: ignore[union-attr]
    shown = head.stdout.read()  # type: ignore[union-attr]
    _, err = lm.communicate(timeout=30)
    assert lm.returncode == 141
    assert "Traceback" not in err.decode() and "stopped" not in err.decode()
    assert with_marker(marker) == []  # no rank left running
    assert shown  # head did get its 200 bytes


def test_ctrl_c_works_while_nobody_reads_stdout(tmp_path):
    import fcntl
    import termios

    r, w = os.pipe()
    env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path / "runs"))
    proc = subprocess.Popen(LOGMESH + ["run", "-n", "2", "--no-window", "--grace", "1", "--",
                                       PY, "-c", "while True: print('x' * 100)"],
                            stdout=w, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    os.close(w)
    try:
        capacity = fcntl.fcntl(r, 1032)  # F_GETPIPE_SZ
        deadline = time.monotonic() + 30
        while True:  # until the pipe nobody reads is full: logmesh's view is stalled
            held = int.from_bytes(fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4), "little")
            if held >= capacity - 4096:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(r)


def test_a_program_that_cannot_run_gets_one_line_and_127_or_126(tmp_path):
    runs = tmp_path / "runs"
    res = run(["run", "-n", "2", "--", "nosuchcmd"], tmp_path)
    assert res.returncode == 127
    assert res.stderr.strip() == "logmesh: cannot run 'nosuchcmd': No such file or directory"
    assert not runs.exists() or [p.name for p in runs.iterdir() if p.name != "latest"] == []
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    res = run(["run", "-n", "1", "--", "train.py"], tmp_path, cmd=None)
    assert res.returncode == 127  # (run from the project root: train.py is not there)
    res = subprocess.run(LOGMESH + ["run", "-n", "1", "--", "train.py"], capture_output=True,
                         text=True, cwd=tmp_path,
                         env=dict(os.environ, LOGMESH_LOG_DIR=str(runs),
                                  PYTHONPATH=ROOT))
    assert res.returncode == 127
    assert "(it is in this directory: ./train.py, or run it with its interpreter)" in res.stderr
    res = run(["run", "-n", "1", "--", str(script)], tmp_path)  # not executable
    assert res.returncode == 126
    assert "Permission denied" in res.stderr and "Traceback" not in res.stderr


def test_usage_errors_and_a_bad_log_dir_are_one_line(tmp_path):
    for args in (["run", "-n", "0", "--", "true"], ["run", "-n", "2"],
                 ["run", "-n", "2", "--ranks", "5", "--", "true"],
                 ["run", "-n", "2", "--window", "0", "--", "true"],
                 ["run", "-n", "2", "--stdin", "2", "--", "true"]):
        res = run(args, tmp_path)
        assert res.returncode == 2, args
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) <= 3
    (tmp_path / "afile").write_text("")
    res = run(["run", "-n", "1", "--log-dir", str(tmp_path / "afile" / "x"), "--", "true"],
              tmp_path)
    assert res.returncode == 1
    assert res.stderr.startswith("logmesh: cannot make the run directory")
    assert len(res.stderr.strip().splitlines()) == 1


def test_each_run_has_its_own_directory_and_old_ones_go(tmp_path):
    root = tmp_path / "logs"
    for i in range(3):
        res = run(["run", "-n", "1", "--no-window", "--log-dir", str(root), "--keep-runs", "2",
                   "--", "bash", "-c", f"echo run {i} >&2; exit {i}"], tmp_path)
        assert res.returncode == i
        if i:  # the summary quotes this run's stderr only
            assert f"logmesh:   [0] run {i}" in res.stderr
            assert f"run {i - 1}" not in res.stderr.split("failed")[-1]
    runs = sorted(p.name for p in root.iterdir() if p.name != "latest")
    assert len(runs) == 2
    assert os.readlink(root / "latest") == runs[-1]
    assert (root / "latest" / "rank-0.stderr.log").read_text() == "run 2\n"


def test_the_default_log_root_is_private_to_the_user(tmp_path):
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.pop("LOGMESH_LOG_DIR", None)
    res = subprocess.run(LOGMESH + ["run", "-n", "1", "--", "true"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    root = tmp_path / f"logmesh-{os.getuid()}"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert str(root) in res.stderr


def test_no_level_change_without_level(tmp_path):
    child = ("import logging\nlogging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
             "logging.info('info shown')\nlogging.warning('warning shown')\n")
    res = run(["run", "-n", "1", "--no-window", "--", PY, "-c", child], tmp_path)
    assert res.returncode == 0
    assert "info shown" not in res.stderr and "[0] warning shown" in res.stderr
    res = run(["run", "-n", "1", "--no-window", "--level", "INFO", "--", PY, "-c",
               child.replace("basicConfig(level=logging.WARNING, ", "basicConfig(")], tmp_path)
    assert "[0] info shown" in res.stderr


def test_stdin_goes_to_rank_0_or_where_asked(tmp_path):
    child = "import os, sys; print(os.environ['RANK'], repr(sys.stdin.read()))"
    env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path))
    for flag, want in [([], {"0 'hello\\n'", "1 ''"}), (["--stdin", "1"], {"0 ''", "1 'hello\\n'"}),
                       (["--stdin", "none"], {"0 ''", "1 ''"})]:
        res = subprocess.run(LOGMESH + ["run", "-n", "2", "--no-window", *flag, "--", PY, "-c",
                                        child], input="hello\n", capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=60)
        assert res.returncode == 0, res.stderr
        assert {ln.split("] ", 1)[1] for ln in res.stdout.splitlines()} == want, flag


def test_torchrun_variables_and_the_users_own_win(tmp_path):
    show = "echo $RANK $LOCAL_RANK $WORLD_SIZE $GROUP_RANK $MASTER_ADDR $MASTER_PORT"
    res = run(["run", "-n", "2", "--no-window", "--", "bash", "-c", show], tmp_path)
    got = sorted(ln.split("] ", 1)[1].split() for ln in res.stdout.splitlines())
    assert [g[:5] for g in got] == [["0", "0", "2", "0", "127.0.0.1"],
                                    ["1", "1", "2", "0", "127.0.0.1"]]
    assert got[0][5] == got[1][5] and int(got[0][5]) > 0  # one port for the whole job
    res = run(["run", "-n", "1", "--no-window", "--", "bash", "-c", show], tmp_path,
              {"MASTER_PORT": "4242", "MASTER_ADDR": "10.1.2.3"})
    assert res.stdout.split()[-2:] == ["10.1.2.3", "4242"]


def test_the_open_file_limit_is_raised_or_the_error_says_how_many_ranks_fit(tmp_path):
    def low(soft: int, hard: int):
        return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    env = dict(os.environ, LOGMESH_LOG_DIR=str(tmp_path))
    res = subprocess.run(LOGMESH + ["run", "-n", "150", "--no-window", "--", "true"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
                         preexec_fn=low(256, 4096))
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run(LOGMESH + ["run", "-n", "150", "--", "true"], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=60, preexec_fn=low(256, 256))
    assert res.returncode == 1
    assert re.fullmatch(r"logmesh: 150 ranks need about \d+ open files, and the limit is 256 "
                        r"\(ulimit -n; hard limit 256\): at most \d+ ranks fit\n", res.stderr)
    # and the ranks do not inherit the limit logmesh raised for itself
    res = subprocess.run(LOGMESH + ["run", "-n", "200", "--no-window", "--", "bash", "-c",
                                    "ulimit -n"], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, preexec_fn=low(256, 4096))
    assert set(ln.split()[-1] for ln in res.stdout.splitlines()) == {"256"}


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="needs root to mount a small tmpfs as a full disk")
def test_a_full_disk_under_the_log_dir_warns_once_and_the_job_goes_on(tmp_path):
    disk = tmp_path / "small"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        child = ("import sys\nfor i in range(50000):\n    print('line', i)\n"
                 "print('done', file=sys.stderr)\n")
        res = run(["run", "-n", "1", "--no-window", "--log-dir", str(disk), "--", PY, "-c",
                   child], tmp_path)
        assert res.returncode == 0  # the rank finished
        assert res.stdout.count("\n") == 50000  # the live view got every line
        # one warning per file, naming it (both of the rank's files are on the full disk)
        assert res.stderr.count("rank-0.stdout.log: No space left on device; the file stops") == 1
        assert re.search(r"logmesh: \S+rank-0\.stdout\.log is incomplete: No space left on "
                         r"device after [\d,]+ bytes", res.stderr)
        assert "[0] done" in res.stderr
    finally:
        subprocess.run(["umount", str(disk)])
