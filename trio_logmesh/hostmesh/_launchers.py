"""Launchers: who starts the host agents.  logmesh schedules nothing itself.

* ``none``: someone else starts them (a Kubernetes Job, a script, a user typing) with the
  join file; the driver waits.
* ``slurm``: inside an allocation, one ``srun`` runs one agent per node; the join document
  travels in srun's environment (``LOGMESH_JOIN``), each agent takes its node rank from
  ``SLURM_NODEID``.
* ``ssh``: one ``ssh`` per host, without a terminal; the join document goes down the session's
  stdin, and the agent takes the end of its stdin for the end of the driver (a plain ssh
  without a pty leaves the remote process running when it dies: ours notices).
* ``local``: agents on this machine, each on its own loopback address (127.0.0.2, ...): the
  whole multi-host path on one machine, to try it or test it.

Every process a launcher starts is ours the way a rank is: its own process group, SIGKILL when
the driver dies; what it prints is relayed, a line at a time, as the driver's notices.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
from collections.abc import Callable, Sequence

import attrs
import trio

from ..host._process import RankProcess, start_rank
from ..protocol._join import JoinInfo

LAUNCHERS = ("none", "local", "ssh", "slurm")


def default_agent_cmd() -> list[str]:
    """This Python running ``logmesh agent`` (the same path is assumed on every host)."""
    return [sys.executable, "-m", "trio_logmesh", "agent"]


@attrs.frozen
class LaunchPlan:
    """One process to start: its name in notices, argv, extra environment, whether the join
    document goes down its stdin, and the node ranks it carries."""

    name: str
    argv: list[str]
    env: dict[str, str]
    join_on_stdin: bool
    nodes: tuple[int, ...]


def plan_launch(
    launcher: str, nnodes: int, join: JoinInfo, *, hosts: Sequence[str] = (),
    agent_cmd: Sequence[str] | None = None,
) -> list[LaunchPlan]:
    """The processes ``launcher`` starts for ``nnodes`` agents.  Raises ``ValueError`` for an
    unknown launcher or too few hosts."""
    agent = list(agent_cmd) if agent_cmd else default_agent_cmd()
    if launcher == "none":
        return []
    if launcher == "local":
        if nnodes > 250:
            raise ValueError("the local launcher gives each agent a loopback address: at most "
                             "250 agents")
        loopback = join.host.startswith("127.") or join.host == "localhost"
        return [LaunchPlan(f"agent {i}",
                           [*agent, "--join", "-", "--node-rank", str(i),
                            *(["--bind", f"127.0.0.{i + 2}"] if loopback else [])],
                           {}, True, (i,)) for i in range(nnodes)]
    if launcher == "ssh":
        if len(hosts) < nnodes:
            raise ValueError(f"--launcher ssh needs {nnodes} hosts, got {len(hosts)}")
        ssh = shlex.split(os.environ.get("LOGMESH_SSH", "ssh"))
        return [LaunchPlan(f"ssh {host}",
                           [*ssh, "-T", "-o", "BatchMode=yes", host, "--",
                            shlex.join([*agent, "--join", "-", "--node-rank", str(i)])],
                           {}, True, (i,)) for i, host in enumerate(hosts[:nnodes])]
    if launcher == "slurm":
        srun = shlex.split(os.environ.get("LOGMESH_SRUN", "srun"))
        return [LaunchPlan("srun",
                           [*srun, f"--nodes={nnodes}", f"--ntasks={nnodes}",
                            "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--input=none",
                            *agent],
                           {"LOGMESH_JOIN": join.dumps()}, False, tuple(range(nnodes)))]
    raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, not {launcher!r}")


def slurm_nnodes() -> int | None:
    """The allocation's node count (``SLURM_NNODES``, or ``SLURM_JOB_NUM_NODES``), if any."""
    for name in ("SLURM_NNODES", "SLURM_JOB_NUM_NODES"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return None


@attrs.define(eq=False)
class Launched:
    """A started launcher process."""

    plan: LaunchPlan
    process: RankProcess
    returncode: int | None = None
    last_lines: list[str] = attrs.field(factory=list)
    exited: trio.Event = attrs.field(factory=trio.Event)


def start_plans(plans: list[LaunchPlan], join: JoinInfo) -> list[Launched]:
    """Start every planned process (on the trio thread: the parent-death signal follows it);
    the join document goes down the stdin of those that take it there.  Raises ``OSError``
    when one cannot start, after killing the ones started."""
    started: list[Launched] = []
    try:
        for plan in plans:
            env = dict(os.environ)
            env.pop("LOGMESH_JOIN", None)
            env.update(plan.env)
            process = start_rank(plan.argv, env, stdin=plan.join_on_stdin)
            started.append(Launched(plan, process))
            if plan.join_on_stdin and process.stdin is not None:
                try:
                    os.write(process.stdin, (join.dumps() + "\n").encode())
                except BrokenPipeError:
                    pass  # it ended already: its exit and last lines say why
    except BaseException:
        for launched in started:
            launched.process.signal_group(signal.SIGKILL)
        raise
    return started


async def run_launched(launched: Launched, say: Callable[[str], None]) -> None:
    """Relay what the process prints, wait for it, note its exit."""
    process = launched.process

    async def relay(fd: int | None) -> None:
        if fd is None:
            return
        buf = b""
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    launched.last_lines = [*launched.last_lines[-4:], text]
                    say(f"[{launched.plan.name}] {text}")

    relays_done = trio.Event()

    async def relays() -> None:
        async with trio.open_nursery() as inner:
            inner.start_soon(relay, process.stdout)
            inner.start_soon(relay, process.stderr)
        relays_done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relays)
            launched.returncode = await process.wait()
            launched.exited.set()
            with trio.move_on_after(2.0):  # a descendant may hold its pipes: not for long
                await relays_done.wait()
            nursery.cancel_scope.cancel()
    finally:
        process.close_pipes()


async def stop_launched(launched: list[Launched], wait: float) -> None:
    """Wait up to ``wait`` seconds for the processes to end by themselves (their agents were
    told to leave), then SIGTERM their groups, then SIGKILL; close their stdin first (for an
    ssh agent, the end of the driver)."""
    for one in launched:
        stdin = one.process.stdin
        if stdin is not None:
            one.process.stdin = None
            os.close(stdin)
    with trio.move_on_after(wait):
        for one in launched:
            await one.exited.wait()
    for sig, pause in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
        if all(one.exited.is_set() for one in launched):
            return
        for one in launched:
            if not one.exited.is_set():
                one.process.signal_group(sig)
        with trio.move_on_after(pause):
            for one in launched:
                await one.exited.wait()
