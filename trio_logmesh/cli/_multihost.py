"""``logmesh run`` over many hosts: its options (torchrun's names), the mesh it opens, and
what its summary says about hosts.  ``_run`` stays the same launcher for one host or many."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._errors import HostLost, LogmeshError
from ..host._launch import _private_root as private_root
from ..host._launch import default_log_root
from ..hostmesh._launchers import LAUNCHERS
from ..hostmesh._mesh import DEAD_AFTER, HostMesh, open_host_mesh
from ..protocol._join import JoinInfo

MULTIHOST_EPILOG = """\
many hosts: with --nnodes (or --launcher), each host runs a host agent that dials this driver
(TLS 1.3 with a certificate made for the run, and the run's token), runs that host's ranks
(RANK = node_rank * K + local rank, WORLD_SIZE = N * K, NODE_RANK/GROUP_RANK, node 0's
MASTER_ADDR and a free MASTER_PORT there) and sends their output over its one link. Lines say
which host they came from. --launcher none waits for agents someone else starts with the join
file; slurm runs them with srun inside an allocation; ssh over ssh to --hosts; local on this
machine's loopback addresses. A host not heard from for --dead-after seconds is lost: the run
ends, naming it and its ranks (exit status 1).

  logmesh run --nnodes 2 --nproc-per-node 4 --launcher local -- python3 train.py
  logmesh run --nnodes 2 --nproc-per-node 4 --join-file run.join -- python3 train.py
      (then on each host: logmesh agent --join run.join --node-rank I)
  salloc -N 4 logmesh run --launcher slurm --nproc-per-node 8 -- python3 train.py
"""


def _host_list(text: str) -> list[str]:
    return [h.strip() for h in text.split(",") if h.strip()]


def add_multihost_arguments(run: argparse.ArgumentParser) -> None:
    """The options of ``logmesh run`` for a run over many hosts."""
    group = run.add_argument_group("many hosts")
    group.add_argument("--nnodes", type=int, metavar="N",
                       help="run on N hosts (default 1; --launcher slurm: $SLURM_NNODES; "
                            "ssh: the number of --hosts)")
    group.add_argument("--launcher", choices=LAUNCHERS, default=None,
                       help="who starts the host agents: none (you do, with the join file; "
                            "the default with --nnodes), slurm, ssh, local")
    group.add_argument("--rdzv-endpoint", metavar="HOST:PORT", default=None,
                       help="where this driver listens for agents (default 0.0.0.0:0, a free "
                            "port; local: 127.0.0.1:0)")
    group.add_argument("--join-file", metavar="PATH",
                       help="write the join document (address, token, certificate) here, "
                            "mode 0600, once listening (--launcher none: default "
                            "join-PID.json in the log root, printed at start)")
    hosts = group.add_mutually_exclusive_group()
    hosts.add_argument("--hosts", type=_host_list, metavar="H1,H2,...",
                       help="hosts for --launcher ssh")
    hosts.add_argument("--hostfile", metavar="FILE",
                       help="hosts for --launcher ssh, one per line ('#' comments)")
    group.add_argument("--dead-after", type=float, default=DEAD_AFTER, metavar="SEC",
                       help=f"a host not heard from this long is lost, and an agent whose "
                            f"driver is not heard from this long stops its ranks (default "
                            f"{DEAD_AFTER:g})")
    group.add_argument("--join-timeout", type=float, default=None, metavar="SEC",
                       help="give up when the agents have not all joined by then (default: "
                            "wait; a launcher that fails ends the wait)")
    group.add_argument("--cert", metavar="PEM", help="the driver's certificate (with --key; "
                                                     "default: one made for the run)")
    group.add_argument("--key", metavar="PEM", help="the driver's private key")
    group.add_argument("--ca", metavar="PEM",
                       help="the CA that signed --cert: agents check the certificate against "
                            "it and the endpoint's host name")
    group.add_argument("--agent-cmd", metavar="CMD",
                       help="how to run 'logmesh agent' on the hosts (default: this Python "
                            "with -m trio_logmesh agent)")


def is_multihost(args: argparse.Namespace) -> bool:
    """Whether ``logmesh run`` was asked for more than this one host's mesh."""
    return args.nnodes is not None or args.launcher is not None


def check_multihost_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the multi-host options, if anything (a usage error)."""
    if args.nnodes is not None and args.nnodes < 1:
        return "--nnodes must be at least 1"
    launcher = args.launcher or "none"
    if (args.hosts or args.hostfile) and launcher != "ssh":
        return "--hosts and --hostfile are for --launcher ssh"
    if launcher == "ssh" and not (args.hosts or args.hostfile):
        return "--launcher ssh needs --hosts or --hostfile"
    if (args.cert is None) != (args.key is None):
        return "--cert and --key go together"
    if args.ca and not args.cert:
        return "--ca needs --cert and --key"
    if not args.dead_after > 0:
        return "--dead-after must be a positive number of seconds"
    return None


def _hosts(args: argparse.Namespace) -> list[str]:
    if args.hosts:
        return list(args.hosts)
    if args.hostfile:
        try:
            with open(args.hostfile) as fh:
                return [ln.split("#", 1)[0].strip() for ln in fh
                        if ln.split("#", 1)[0].strip()]
        except OSError as exc:
            raise LogmeshError(f"cannot read --hostfile {args.hostfile}: "
                               f"{exc.strerror or exc}") from None
    return []


def _default_join_file(args: argparse.Namespace) -> str:
    """Where ``--launcher none`` writes the join document when no ``--join-file`` is given:
    the log root (private to the user, 0700), one file per driver process."""
    root = args.log_dir or default_log_root()
    private_root(root)
    return os.path.join(root, f"join-{os.getpid()}.json")


def _announce_listening(join_file: str | None, launcher: str) -> Callable[[JoinInfo], None]:
    def announce(join: JoinInfo) -> None:
        if launcher != "none":
            return
        last = join.nnodes - 1
        sys.stderr.write(f"logmesh: waiting for {join.nnodes} agent(s) at {join.host}:"
                         f"{join.port}; on each host run: logmesh agent --join {join_file} "
                         f"--node-rank I  (I = 0{'..' + str(last) if last else ''}; the join "
                         "file holds the run's token: keep it private)\n")
        sys.stderr.flush()
    return announce


@asynccontextmanager
async def open_cli_host_mesh(
    args: argparse.Namespace, cmd: list[str], level: int | str | None,
    say: Callable[[str], Awaitable[None]], drop_policy: str = "drop",
) -> AsyncIterator[HostMesh]:
    """The mesh of ``logmesh run --nnodes ...``; the driver's notices go to ``say`` (through a
    queue: they never block the event loop).  Raises :class:`~trio_logmesh.LogmeshError` for
    what keeps the run from starting (with ``status`` 127/126 when the program cannot run)."""
    launcher = args.launcher or "none"
    endpoint = args.rdzv_endpoint or ("127.0.0.1:0" if launcher == "local" else "0.0.0.0:0")
    notices_send, notices_recv = trio.open_memory_channel[str](256)

    def notice(line: str) -> None:
        try:
            notices_send.send_nowait(f"logmesh: {line}")
        except trio.WouldBlock:
            pass

    async def print_notices() -> None:
        async for line in notices_recv:
            await say(line)

    join_file = args.join_file
    if launcher == "none" and join_file is None:
        join_file = _default_join_file(args)
    kwargs: dict[str, Any] = {}
    if args.agent_cmd:
        kwargs["agent_cmd"] = shlex.split(args.agent_cmd)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(print_notices)
            try:
                async with open_host_mesh(
                    cmd, args.nnodes, args.nproc, launcher=launcher, hosts=_hosts(args),
                    rdzv_endpoint=endpoint, join_file=join_file, log_root=args.log_dir,
                    keep_runs=args.keep_runs, dead_after=args.dead_after,
                    join_timeout=args.join_timeout, cert=args.cert, key=args.key, ca=args.ca,
                    drop_policy=drop_policy, log_level=level, grace=args.grace,
                    on_listening=_announce_listening(join_file, launcher), say=notice,
                    **kwargs,
                ) as mesh:
                    yield mesh
            except OSError as exc:
                if exc.filename is not None:  # a launcher's program (ssh, srun) cannot run
                    raise LogmeshError(f"cannot run {exc.filename}: "
                                       f"{exc.strerror or exc}") from None
                raise LogmeshError(f"cannot listen on {endpoint}: {exc.strerror or exc}") from None
            except ValueError as exc:
                raise LogmeshError(str(exc)) from None
            finally:
                notices_send.close()
                with trio.move_on_after(1.0):  # the last notices, before the summary
                    while notices_recv.statistics().current_buffer_used:
                        await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # One failure (ours or the body's) comes out as itself, not in a nursery's group.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def banner(mesh: Any) -> str:
    """The run's first line: ranks (and hosts) and where their files are."""
    if isinstance(mesh, HostMesh):
        return (f"logmesh: {mesh.nnodes} host(s) x {mesh.procs_per_host} rank(s), logs in "
                f"{mesh.run_dir}")
    return f"logmesh: {mesh.size} rank(s), logs in {mesh.run_dir}"


async def wait_ranks(mesh: Any, stop: Callable[[int, str], None]) -> None:
    """``mesh.wait()``; when a host is lost, stop the others (``stop(sig, reason)``) and wait
    for their ranks' exits (about their grace)."""
    try:
        await mesh.wait()
    except HostLost as exc:
        stop(signal.SIGTERM, f"host(s) {', '.join(sorted(exc.missing_hosts))} lost")
        await mesh.wait_survivors()


def host_label(mesh: Any, rank: int) -> str:
    """The host ``rank`` ran on, in a run over many hosts ("" otherwise)."""
    return mesh.host_of(rank).label if isinstance(mesh, HostMesh) else ""


def lost_lines(mesh: Any) -> list[str]:
    """The summary's lines about lost hosts."""
    if not isinstance(mesh, HostMesh):
        return []
    return [f"logmesh: {h.describe_ranks()} was lost: {h.lost}" for h in mesh.hosts if h.lost]


def lost_ranks(mesh: Any) -> set[int]:
    """The ranks of lost hosts."""
    if not isinstance(mesh, HostMesh):
        return set()
    return {r for h in mesh.hosts if h.lost for r in h.ranks}


def lost_status(mesh: Any) -> int | None:
    """The exit status of a run that lost a host (1), or None."""
    return 1 if isinstance(mesh, HostMesh) and mesh.lost_hosts else None


__all__ = ["add_multihost_arguments", "banner", "check_multihost_args", "host_label",
           "is_multihost", "lost_lines", "lost_status", "open_cli_host_mesh", "wait_ranks"]
