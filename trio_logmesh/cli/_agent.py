"""``logmesh agent``: the host agent of a run over many hosts, one per host.

It reads the join document from a file (``--join PATH``), from stdin (``--join -``, as the ssh
launcher sends it; the end of stdin then means the driver is gone) or from ``LOGMESH_JOIN``
(the document itself, or a path: as srun passes it).  The token is never on a command line.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

import trio

from ..host._hostagent import run_host_agent
from ..protocol._join import JoinError, JoinInfo

EXIT_USAGE = 2

AGENT_EPILOG = """\
The agent dials the driver named in the join document (TLS, the driver's certificate pinned),
joins with the run's token as node I, and runs that node's ranks when the driver says so.
Its ranks read nothing from, and write nothing to, the agent's own stdio: it reads their pipes
itself and sends every byte over its one link; files stay on this host.

node rank: --node-rank, else SLURM_NODEID (under srun), else NODE_RANK.

exit status: 0 when the driver ended the run; 1 when the agent was refused (a wrong token, a
certificate that does not match, a node rank already taken) or its ranks could not start; 2
for a bad command line or join document; 3 when the driver is gone (not heard from for its
dead_after) -- its ranks are stopped first.
"""


def add_agent_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``logmesh agent`` to the subcommands."""
    agent = sub.add_parser(
        "agent", help="run one host's ranks for a driver elsewhere (see logmesh run --nnodes)",
        description="Join a run over many hosts as one host's agent.",
        usage="logmesh agent [--join PATH|-] [--node-rank I] [--bind ADDR]",
        epilog=AGENT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    agent.add_argument("--join", metavar="PATH|-",
                       help="the join document the driver wrote (--join-file), or - for "
                            "stdin; default: $LOGMESH_JOIN (the document, or its path)")
    agent.add_argument("--node-rank", type=int, metavar="I",
                       help="this host's node rank (default: $SLURM_NODEID, else $NODE_RANK)")
    agent.add_argument("--bind", metavar="ADDR",
                       help="dial the driver from this local address (also node 0's "
                            "MASTER_ADDR)")


class AgentUsage(Exception):
    """A bad command line or join document: one line, exit status 2."""


def read_join(source: str | None) -> JoinInfo:
    """The join document from ``source`` (a path, ``-`` for one line of stdin, None for
    ``$LOGMESH_JOIN``).  Raises :class:`AgentUsage` saying what is wrong."""
    if source == "-":
        text = sys.stdin.buffer.readline().decode("utf-8", "replace")
        where = "stdin"
    elif source is not None:
        text = _read_file(source)
        where = source
    else:
        env = os.environ.get("LOGMESH_JOIN", "")
        if not env:
            raise AgentUsage("no join document: give --join PATH or - (stdin), or set "
                             "LOGMESH_JOIN")
        if env.lstrip().startswith("{"):
            text, where = env, "LOGMESH_JOIN"
        else:
            text, where = _read_file(env), env
    try:
        return JoinInfo.loads(text)
    except JoinError as exc:
        raise AgentUsage(f"{where}: {exc}") from None


def _read_file(path: str) -> str:
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise AgentUsage(f"cannot read the join file {path}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        sys.stderr.write(f"logmesh agent: warning: {path} is readable by others (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}); it holds the run's token\n")
    return text


def node_rank_of(args: argparse.Namespace) -> int:
    """The node rank: ``--node-rank``, else ``SLURM_NODEID``, else ``NODE_RANK``."""
    if args.node_rank is not None:
        value: str = str(args.node_rank)
    else:
        value = os.environ.get("SLURM_NODEID") or os.environ.get("NODE_RANK") or ""
        if not value:
            raise AgentUsage("no node rank: give --node-rank I (or run under srun)")
    if not value.isdigit():
        raise AgentUsage(f"the node rank must be a number >= 0, not {value!r}")
    return int(value)


def agent_command(args: argparse.Namespace) -> int:
    """Run ``logmesh agent``; return the exit status."""
    try:
        join = read_join(args.join)
        node = node_rank_of(args)
        if node >= join.nnodes:
            raise AgentUsage(f"node rank {node} is not below the run's {join.nnodes} nodes")
    except AgentUsage as exc:
        sys.stderr.write(f"logmesh agent: {exc}\n")
        return EXIT_USAGE
    # The document holds the run's token: the ranks (the user's program) do not inherit it.
    os.environ.pop("LOGMESH_JOIN", None)
    return trio.run(lambda: run_host_agent(join, node, bind=args.bind,
                                           stdin_is_link=args.join == "-"))
