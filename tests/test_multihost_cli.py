"""``logmesh run`` over many hosts as a user runs it (tier 1: loopback, no root): the whole run,
a host lost and named with its ranks, agents whose driver is gone stopping their ranks, the
ssh launcher (with an ``ssh`` that runs the command here), and no token on any command line."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from .test_cli import LOGMESH, ROOT, run
from .test_cli_launcher import Logmesh, gone

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="loopback addresses 127.0.0.x are Linux's")

PY = sys.executable
TICKER = ("import os, time\n"
          "print(f\"r{os.environ['RANK']} up pid {os.getpid()}\", flush=True)\n"
          "while True:\n"
          "    time.sleep(0.05)\n")
TOKEN_RX = re.compile(rb"[0-9a-f]{64}")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            out.extend(int(p) for p in fh.read().split())
    return out


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read()


def up_pids(lines: list[str]) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for ln in lines
            if (m := re.search(r"r(\d+) up pid (\d+)", ln))}


def test_a_whole_run_through_the_cli_tags_hosts_and_keeps_partial_lines(tmp_path):
    child = ("import os, sys\n"
             "r = os.environ['RANK']\n"
             "for i in range(200): print(f'r{r} {i}')\n"
             "sys.stdout.write(f'r{r} partial')\n")
    res = run(["run", "--nnodes", "2", "--nproc-per-node", "2", "--launcher", "local",
               "--", PY, "-c", child], tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    for rank in range(4):
        host = f"{os.uname().nodename.split('.')[0]}/{rank // 2}"
        mine = [ln for ln in lines if ln.startswith(f"[{host}:{rank}] ")]
        assert [ln.split("] ", 1)[1] for ln in mine] == [
            *(f"r{rank} {i}" for i in range(200)), f"r{rank} partial"]
    assert len(lines) == 4 * 201
    assert "2 host(s) x 2 rank(s)" in res.stderr


def test_a_killed_agent_ends_the_run_naming_its_host_and_ranks(tmp_path):
    dead_after = 1.0
    lm = Logmesh(["run", "--nnodes", "2", "--nproc-per-node", "2", "--launcher", "local",
                  "--dead-after", str(dead_after), "--", PY, "-c", TICKER], tmp_path)
    try:
        pids = up_pids(lm.read_until(r"r\d+ up pid \d+", 4))
        agents = {int(re.search(rb"--node-rank\x00(\d+)", cmdline(p)).group(1)): p
                  for p in children(lm.proc.pid) if b"agent" in cmdline(p)}
        assert sorted(agents) == [0, 1]
        for agent in agents.values():  # the token reaches agents by stdin, never by argv
            assert not TOKEN_RX.search(cmdline(agent))
        os.kill(agents[1], signal.SIGKILL)
        killed = time.monotonic()
        status = lm.proc.wait(timeout=30)
        took = time.monotonic() - killed
        err = lm.proc.stderr.read().decode()
    finally:
        if lm.proc.poll() is None:
            lm.proc.kill()
    assert status == 1
    host = f"{os.uname().nodename.split('.')[0]}/1"
    assert f"logmesh: host {host} (node 1, ranks 2-3) was lost: no word from its agent" in err
    assert "logmesh: stopped rank(s) 0-1" in err
    # The run ends within dead_after plus the others' stop (the bench measures the report).
    assert took < dead_after + 5
    assert len(pids) == 4 and gone(list(pids.values()))


def test_agents_whose_driver_is_gone_stop_their_ranks_and_exit(tmp_path):
    join = tmp_path / "run.join"
    driver = Logmesh(["run", "--nnodes", "2", "--nproc-per-node", "2", "--join-file",
                      str(join), "--rdzv-endpoint", "127.0.0.1:0", "--dead-after", "1.5",
                      "--", PY, "-c", TICKER], tmp_path)
    agents: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 30
        while not join.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert stat.S_IMODE(join.stat().st_mode) == 0o600
        env = dict(os.environ)
        env.pop("PYTHONUNBUFFERED", None)
        for node in range(2):
            agents.append(subprocess.Popen(
                [*LOGMESH, "agent", "--join", str(join), "--node-rank", str(node)],
                stderr=subprocess.PIPE, env=env, cwd=ROOT))
        pids = up_pids(driver.read_until(r"r\d+ up pid \d+", 4))
        driver.proc.send_signal(signal.SIGKILL)
        driver.proc.wait(timeout=10)
        codes = [a.wait(timeout=30) for a in agents]
        errs = [a.stderr.read().decode() for a in agents]
    finally:
        for proc in [driver.proc, *agents]:
            if proc.poll() is None:
                proc.kill()
    assert codes == [3, 3], errs
    assert all("driver" in e for e in errs), errs
    assert len(pids) == 4 and gone(list(pids.values()), timeout=10)


def test_the_ssh_launcher_sends_the_join_document_down_the_session(tmp_path):
    fake_ssh = tmp_path / "ssh"
    # An ssh that runs the remote command here: argv is [-T -o BatchMode=yes HOST -- CMD].
    fake_ssh.write_text(f"#!{PY}\nimport os, sys\n"
                        "log = open(os.environ['SSH_LOG'], 'a')\n"
                        "log.write(repr(sys.argv[1:]) + '\\n'); log.close()\n"
                        "os.execvp('sh', ['sh', '-c', sys.argv[-1]])\n")
    fake_ssh.chmod(0o755)
    res = run(["run", "--launcher", "ssh", "--hosts", "h-one,h-two", "--nproc-per-node", "1",
               "--rdzv-endpoint", "127.0.0.1:0", "--", PY, "-c",
               "import os; print('hello', os.environ['RANK'], os.environ['WORLD_SIZE'])"],
              tmp_path, extra_env={"LOGMESH_SSH": str(fake_ssh),
                                   "SSH_LOG": str(tmp_path / "ssh.log")})
    assert res.returncode == 0, res.stderr
    assert sorted(ln.split("] ", 1)[1] for ln in res.stdout.splitlines()) == [
        "hello 0 2", "hello 1 2"]
    calls = sorted((tmp_path / "ssh.log").read_text().splitlines())  # in any order
    assert len(calls) == 2
    assert "'h-one'" in calls[0] and calls[0].endswith("--node-rank 0']")
    assert "'h-two'" in calls[1] and calls[1].endswith("--node-rank 1']")
    assert not TOKEN_RX.search((tmp_path / "ssh.log").read_bytes())


def test_the_ssh_launcher_needs_hosts(tmp_path):
    res = run(["run", "--launcher", "ssh", "--nproc-per-node", "1", "--", "true"], tmp_path)
    assert res.returncode == 2
    assert "--launcher ssh needs --hosts or --hostfile" in res.stderr


def test_a_launcher_that_fails_ends_the_run_with_its_last_words(tmp_path):
    refuse = "sh -c 'echo ssh: connect to host $0 port 22: Connection refused >&2; exit 255'"
    res = run(["run", "--launcher", "ssh", "--hosts", "a,b", "--nproc-per-node", "1",
               "--rdzv-endpoint", "127.0.0.1:0", "--", "true"], tmp_path,
              extra_env={"LOGMESH_SSH": refuse})
    assert res.returncode == 1
    assert "Traceback" not in res.stderr
    assert ("exited with status 255 before node(s) 0 joined: ssh: connect to host"
            in res.stderr), res.stderr
    res = run(["run", "--launcher", "ssh", "--hosts", "a", "--nproc-per-node", "1",
               "--rdzv-endpoint", "127.0.0.1:0", "--", "true"], tmp_path,
              extra_env={"LOGMESH_SSH": str(tmp_path / "no-such-ssh")})
    assert res.returncode == 1
    assert res.stderr.strip().endswith(
        f"logmesh: cannot run {tmp_path / 'no-such-ssh'}: No such file or directory")


def test_ctrl_c_while_the_hosts_join_is_one_line_and_exit_130(tmp_path):
    join = tmp_path / "run.join"
    driver = Logmesh(["run", "--nnodes", "2", "--nproc-per-node", "1", "--join-file", str(join),
                      "--", sys.executable, "-c", "pass"], tmp_path)
    deadline = time.monotonic() + 30
    while not join.exists():  # listening: the join file is written
        assert time.monotonic() < deadline, "no join file"
        time.sleep(0.05)
    driver.proc.send_signal(signal.SIGINT)
    status, err = driver.finish()
    assert status == 130, err
    assert "logmesh: interrupted while the hosts were joining" in err
    assert "Traceback" not in err
    assert not join.exists()


def test_ranks_are_global_over_many_hosts(tmp_path):
    res = run(["run", "--nnodes", "2", "-n", "2", "--launcher", "local", "--ranks", "3", "--",
               sys.executable, "-c", "import os; print('r', os.environ['RANK'])"], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[0].endswith("r 3") and "r 0" not in res.stdout
    res = run(["run", "--nnodes", "2", "-n", "2", "--launcher", "local", "--ranks", "4", "--",
               "true"], tmp_path)
    assert res.returncode == 2 and "--ranks 4 is not below the run's 4 ranks" in res.stderr
