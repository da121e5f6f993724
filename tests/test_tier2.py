"""Tier 2 (root): a real SLURM cluster on this machine (``tests/multihost/slurm.sh``: one
slurmctld, three slurmd on loopback ports, munge), a real sshd on loopback, and real
partitions between network namespaces.  Each test skips, saying why, where root, ``slurmd``,
``sshd`` or ``ip netns`` is missing; ``.ci/run`` installs SLURM and openssh first where it
can.  Daemons and namespaces come down afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

import trio_logmesh as lm

from .conftest import CHILD_ENV, PY, Collected
from .multihost import netns, sshd
from .test_cli import LOGMESH, ROOT
from .test_cli_launcher import Logmesh, gone

SLURM_SH = Path(__file__).parent / "multihost" / "slurm.sh"
AGENT = [PY, "-m", "trio_logmesh", "agent"]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def slurm_why_not() -> str | None:
    if os.geteuid() != 0:
        return "tier 2: a SLURM cluster on this machine needs root"
    for tool in ("slurmd", "slurmctld", "srun", "salloc", "munged"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            return (f"tier 2: {tool} is not installed (as root: bash tests/multihost/slurm.sh "
                    "install)")
    return None


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running three-node cluster; yields the environment that reaches it."""
    reason = slurm_why_not()
    if reason:
        pytest.skip(reason)
    where = tmp_path_factory.mktemp("slurm")
    try:
        up = subprocess.run(["bash", str(SLURM_SH), "up", str(where), "3"], capture_output=True,
                            text=True, timeout=60)
        if up.returncode != 0:
            pytest.skip(f"tier 2: the SLURM cluster did not start: {up.stderr.strip()[-500:]}")
        env = dict(os.environ, SLURM_CONF=str(where / "slurm.conf"),
                   LOGMESH_LOG_DIR=str(where / "runs"))
        env.pop("PYTHONUNBUFFERED", None)
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_SH), "down", str(where)], capture_output=True,
                       timeout=60)


def salloc(env: dict[str, str], nodes: int, args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["salloc", "-Q", "-N", str(nodes), *LOGMESH, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def test_slurm_runs_one_agent_per_node_and_every_line_arrives(slurm):
    child = ("import os, sys\n"
             "r = os.environ['RANK']\n"
             "print(f\"env {r} {os.environ['WORLD_SIZE']} {os.environ['NODE_RANK']} "
             "{os.environ['SLURM_NODEID']}\")\n"
             "for i in range(500): print(f'r{r} {i}')\n"
             "sys.stdout.write(f'r{r} partial')\n")
    res = salloc(slurm, 3, ["run", "--launcher", "slurm", "--nproc-per-node", "2", "--",
                            PY, "-c", child])
    assert res.returncode == 0, res.stderr
    assert "3 host(s) x 2 rank(s)" in res.stderr
    by_rank: dict[int, list[str]] = {}
    for line in res.stdout.splitlines():
        tag, text = line.split("] ", 1)
        by_rank.setdefault(int(tag.rsplit(":", 1)[1]), []).append(text)
    assert sorted(by_rank) == list(range(6))
    for r, texts in by_rank.items():
        node = r // 2
        assert texts == [f"env {r} 6 {node} {node}", *(f"r{r} {i}" for i in range(500)),
                         f"r{r} partial"]


def test_slurm_a_failing_rank_keeps_its_last_stderr_line_and_its_status(slurm):
    # srun -K lost this line in 7 of 7 runs: the agents read the ranks' pipes themselves.
    child = ("import os, sys, time\n"
             "r = int(os.environ['RANK'])\n"
             "if r == 3:\n"
             "    sys.stderr.write('last words of rank 3'); sys.exit(7)\n"
             "time.sleep(60)\n")
    res = salloc(slurm, 3, ["run", "--launcher", "slurm", "--nproc-per-node", "2", "--",
                            PY, "-c", child])
    assert res.returncode == 7, res.stderr
    assert "last words of rank 3" in res.stdout + res.stderr
    assert "rank 3 (exit 7) on " in res.stderr


# -- real partitions -------------------------------------------------------------------------
FLUSHER = r"""
import os, sys, time
r = int(os.environ["RANK"])
i = 0
while True:
    print(f"r{r} tick {i}")
    i += 1
    time.sleep(0.01)
"""


@pytest.fixture
def hosts():
    reason = netns.why_not()
    if reason:
        pytest.skip(reason)
    made = netns.Hosts(2).open()
    try:
        yield made
    finally:
        made.close()


async def _run_over_namespaces(hosts: netns.Hosts, tmp_path, dead_after: float, body):
    join_file = tmp_path / "run.join"
    sink = Collected()
    agents: list[trio.Process] = []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}

    async def start_agents() -> None:
        while not join_file.exists():
            await trio.sleep(0.02)
        for i in range(hosts.count):
            agents.append(await trio.lowlevel.open_process(
                [*hosts.run_in(i), *AGENT, "--join", str(join_file), "--node-rank", str(i)],
                env=env, stderr=subprocess.DEVNULL))

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_agents)
            async with lm.open_host_mesh(
                [PY, "-c", FLUSHER], hosts.count, 2, launcher="none", join_file=join_file,
                rdzv_endpoint=f"{hosts.bridge_addr}:0", dead_after=dead_after,
                log_root=tmp_path / "logs", env=CHILD_ENV, join_timeout=60, flush_interval=0,
                say=lambda _: None,
            ) as mesh:
                async with lm.open_logging_client(mesh, sink=sink, exit_timeout=10) as client:
                    await body(mesh, client, sink)
                    mesh.send_signal(signal.SIGTERM)
    finally:
        for agent in agents:
            with trio.move_on_after(15):
                await agent.wait()
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    return mesh, sink, [a.returncode for a in agents]


async def test_a_real_partition_shorter_than_dead_after_heals_without_loss(hosts, tmp_path):
    async def body(mesh, client, sink):
        with trio.fail_after(30):
            await sink.wait_for(lambda: all(sink.lines(r) for r in range(4)))
        await client.flush(timeout=30)
        hosts.partition(1)
        try:
            await trio.sleep(2.0)  # the ranks print on; nothing crosses
        finally:
            hosts.heal(1)
        await client.flush(timeout=30)

    mesh, sink, codes = await _run_over_namespaces(hosts, tmp_path, 8.0, body)
    assert mesh.lost_hosts == {}
    assert codes == [0, 0]
    for r in range(4):
        got = sink.lines(r)
        assert got == [f"r{r} tick {i}" for i in range(len(got))] and len(got) > 100


async def test_a_real_partition_past_dead_after_loses_the_host_on_both_sides(hosts, tmp_path):
    dead_after = 2.0
    took: list[float] = []
    errors: list[lm.HostLost] = []

    async def body(mesh, client, sink):
        with trio.fail_after(30):
            await sink.wait_for(lambda: all(sink.lines(r) for r in range(4)))
        await client.flush(timeout=30)
        hosts.partition(1)
        cut = trio.current_time()
        try:
            with pytest.raises(lm.HostLost) as info:
                await client.flush(timeout=60)
            took.append(trio.current_time() - cut)
            errors.append(info.value)
            await trio.sleep(dead_after + 1)  # the agent gives its driver up too
        finally:
            hosts.heal(1)

    mesh, sink, codes = await _run_over_namespaces(hosts, tmp_path, dead_after, body)
    err = errors[0]
    assert err.missing_ranks == [2, 3] and list(err.missing_hosts) == [mesh.hosts[1].label]
    assert isinstance(err, lm.FlushTimeout)
    assert took[0] < dead_after + 3, took  # the bench measures it; this only bounds it
    # The partitioned agent found its driver gone: it stopped its ranks and left (status 3).
    assert codes == [0, 3]
    assert any("was lost" in n for n in sink.notices())
    print(json.dumps({"partition_reported_after_s": round(took[0], 3)}))



# -- ssh ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ssh(tmp_path_factory):
    """An sshd on loopback; yields the environment whose ``LOGMESH_SSH`` reaches it."""
    reason = sshd.why_not()
    if reason:
        pytest.skip(reason)
    server = sshd.start(tmp_path_factory.mktemp("sshd"))
    try:
        env = dict(os.environ, LOGMESH_SSH=server.ssh)
        env.pop("PYTHONUNBUFFERED", None)
        yield env
    finally:
        server.close()


def test_ssh_runs_one_agent_per_host_over_a_real_sshd(ssh, tmp_path):
    res = subprocess.run(
        [*LOGMESH, "run", "--launcher", "ssh", "--hosts", "127.0.0.1,localhost",
         "--nproc-per-node", "2", "--rdzv-endpoint", "127.0.0.1:0", "--log-dir",
         str(tmp_path), "--", PY, "-c",
         "import os, sys; print('hi', os.environ['RANK']); sys.stdout.write('partial')"],
        capture_output=True, text=True, env=ssh, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    texts = sorted(ln.split("] ", 1)[1] for ln in res.stdout.splitlines())
    assert texts == sorted([*(f"hi {r}" for r in range(4)), *["partial"] * 4])


def test_ssh_agents_stop_their_ranks_when_the_driver_is_killed(ssh, tmp_path):
    # ssh without a pty leaves the remote process running: the agent notices the end of its
    # stdin (the session that carried the join document) and stops its ranks.
    ticker = ("import os, time\n"
              "print(f\"r{os.environ['RANK']} up pid {os.getpid()}\", flush=True)\n"
              "while True: time.sleep(0.05)\n")
    driver = Logmesh(["run", "--launcher", "ssh", "--hosts", "127.0.0.1,localhost",
                      "--nproc-per-node", "1", "--rdzv-endpoint", "127.0.0.1:0",
                      "--dead-after", "3", "--", PY, "-c", ticker], tmp_path, env=ssh)
    try:
        found = driver.read_until(r"r\d+ up pid \d+", 2)
        pids = [int(m.rsplit(" ", 1)[1]) for m in found]
        driver.proc.send_signal(signal.SIGKILL)
        driver.proc.wait(timeout=10)
    finally:
        if driver.proc.poll() is None:
            driver.proc.kill()
    assert len(pids) == 2 and gone(pids, timeout=15)
