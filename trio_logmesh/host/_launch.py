"""What a rank is started with: its command's kind, its environment, its files' paths.

Pure helpers of the BootstrapProcManager (``_mesh``), apart so each can be read and tested
alone.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import py_compile
import re
import secrets
import shutil
import socket
import string
import tempfile
import time
from collections.abc import Mapping

import attrs

#: The directory put first on a Python child's ``PYTHONPATH``: its ``sitecustomize`` starts the
#: agent before the user's code.
CHILD_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "child")
PROTOCOL_DIR = os.path.join(os.path.dirname(CHILD_DIR), "protocol")



@functools.cache
def compile_child_modules() -> None:
    """Write the bytecode of the modules every Python child loads, once, so children load it
    instead of compiling at every start (with ``PYTHONDONTWRITEBYTECODE`` they never would).
    A read-only install simply keeps compiling; nothing depends on this."""
    paths = [os.path.join(CHILD_DIR, n) for n in ("sitecustomize.py", "_logmesh_agent.py")]
    paths += [os.path.join(PROTOCOL_DIR, n) for n in ("_wire.py", "_control.py")]
    for path in paths:
        try:
            cached = importlib.util.cache_from_source(path)
            if not os.path.exists(cached) or os.path.getmtime(cached) < os.path.getmtime(path):
                py_compile.compile(path, cfile=cached, doraise=True)
        except (OSError, py_compile.PyCompileError):
            pass


#: A run directory's name: when it started (to the nanosecond within its second, so names
#: sort as the runs started), and a random part.
_RUN_NAME = re.compile(r"^\d{8}-\d{6}-\d{9}-[A-Za-z0-9_]{8}$")


def default_log_root() -> str:
    """Where run directories go by default: ``$LOGMESH_LOG_DIR``, else a directory private to
    this user in the temp dir (``/tmp/logmesh-<uid>``: on a shared machine another user's runs
    are neither readable nor in the way)."""
    return os.environ.get("LOGMESH_LOG_DIR") or os.path.join(
        tempfile.gettempdir(), f"logmesh-{os.getuid()}"
    )


def _private_root(root: str) -> None:
    os.makedirs(root, mode=0o700, exist_ok=True)
    st = os.stat(root)
    if st.st_uid != os.getuid():
        raise PermissionError(13, f"{root} belongs to another user; set LOGMESH_LOG_DIR", root)
    if st.st_mode & 0o077:
        os.chmod(root, 0o700)


def new_run_name() -> str:
    """A run's name: when it started (to the nanosecond) and a random part.  Run directories
    and a multi-host run's session are named so."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9))
    tail = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return f"{stamp}-{now % 10**9:09d}-{tail}"


def make_run_dir(log_root: str | os.PathLike[str] | None, keep_runs: int,
                 name: str | None = None) -> str:
    """A new run directory under ``log_root`` (default: :func:`default_log_root`), named by
    its start time (or ``name``: the run's session, the same on every host of a run; the
    directory may exist then, made by another host on shared storage); older run directories
    there beyond the newest ``keep_runs`` (0: keep all) are removed, and ``<root>/latest``
    points at the new one.

    Raises ``OSError`` when the root cannot be made or written.
    """
    if log_root is None:
        root = default_log_root()
        if "LOGMESH_LOG_DIR" not in os.environ:
            _private_root(root)
    else:
        root = os.fspath(log_root)
    os.makedirs(root, exist_ok=True)
    if keep_runs > 0:
        runs = sorted(n for n in os.listdir(root)
                      if _RUN_NAME.match(n) and os.path.isdir(os.path.join(root, n)))
        for old in runs[: max(0, len(runs) - (keep_runs - 1))]:
            if old != name:  # another host of this run made it already
                shutil.rmtree(os.path.join(root, old), ignore_errors=True)
    if name is not None:
        if not _RUN_NAME.match(name):
            raise ValueError(f"a run's name must look like {new_run_name()!r}, not {name!r}")
        path = os.path.join(root, name)
        os.makedirs(path, mode=0o700, exist_ok=True)
    else:
        now = time.time_ns()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9))
        path = tempfile.mkdtemp(prefix=f"{stamp}-{now % 10**9:09d}-", dir=root)
    latest = os.path.join(root, "latest")
    try:  # replace the link atomically: a reader never finds it missing
        tmp = f"{latest}.{os.getpid()}"
        os.symlink(os.path.basename(path), tmp)
        os.replace(tmp, latest)
    except OSError:
        pass
    return path


_SOCKET_DIR = re.compile(r"^logmesh-sock-(\d+)-")


def make_socket_dir() -> str:
    """A fresh private (0700) directory for a mesh's control socket, named after this process.

    Directories of processes that no longer exist -- a driver killed with SIGKILL cannot clean
    up -- are removed first (only this user's).
    """
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        names = []
    for name in names:
        m = _SOCKET_DIR.match(name)
        if m is None:
            continue
        path = os.path.join(tmp, name)
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue
    return tempfile.mkdtemp(prefix=f"logmesh-sock-{os.getpid()}-")


def use_run_dir(log_dir: str | os.PathLike[str]) -> str:
    """``log_dir`` as the run directory itself (created if missing; files in it are appended)."""
    path = os.fspath(log_dir)
    os.makedirs(path, exist_ok=True)
    return path


def log_paths(run_dir: str, rank: int, size: int) -> tuple[str, str]:
    """The stdout and stderr file paths of ``rank`` in a run of ``size`` ranks (global rank
    and world size in a run over many hosts, so files on shared storage never collide)."""
    width = len(str(max(0, size - 1)))
    base = os.path.join(run_dir, f"rank-{rank:0{width}d}")
    return base + ".stdout.log", base + ".stderr.log"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the way torchrun picks ``MASTER_PORT``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tail_lines(path: str, n: int = 3) -> list[str]:
    """The last ``n`` non-blank lines of a file (read from its last 8 KiB); [] if unreadable."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            data = fh.read()
    except OSError:
        return []
    lines = [ln for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-n:]


@attrs.frozen
class World:
    """Where one host's ranks stand in a run over ``nnodes`` hosts (torchrun's terms).

    Rank ``i`` of this host is global rank ``node_rank * procs + i``.  ``master_addr`` and
    ``master_port`` are node 0's (``None``: this host and a free port here, as for one host);
    ``run_id`` is the run's id on every host (``None``: the run directory's name).
    """

    node_rank: int = 0
    nnodes: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    run_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not below nnodes {self.nnodes}")


def torch_env(rank: int, procs: int, run_id: str, master_port: int,
              world: World = World(), master_addr: str = "127.0.0.1") -> dict[str, str]:
    """The variables torchrun gives local worker ``rank`` of ``procs`` on node
    ``world.node_rank`` (``NODE_RANK`` too, which torchrun calls ``GROUP_RANK``)."""
    first = world.node_rank * procs
    size = world.nnodes * procs
    return {
        "RANK": str(first + rank), "WORLD_SIZE": str(size),
        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(procs),
        "GROUP_RANK": str(world.node_rank), "GROUP_WORLD_SIZE": str(world.nnodes),
        "NODE_RANK": str(world.node_rank),
        "ROLE_RANK": str(first + rank), "ROLE_WORLD_SIZE": str(size), "ROLE_NAME": "default",
        "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port),
        "TORCHELASTIC_RUN_ID": run_id, "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": "0",
    }


#: Variables a user may set for the whole job: theirs win over ours.
USER_SETTABLE = frozenset({"MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"})


def child_env(
    base: Mapping[str, str | None] | None,
    *,
    rank: int,
    size: int,
    channel: str,
    run_dir: str,
    agent: bool,
    token: bytes,
    flush_interval: float,
    level: int | None,
    master_port: int,
    world: World = World(),
) -> dict[str, str]:
    """The environment of ``rank``: the driver's, ``base`` applied (``None`` removes a
    variable), torchrun's variables (``MASTER_ADDR``/``MASTER_PORT`` only where the user did
    not set them), and for the agent its token, interval, level and path.  ``size`` is the
    number of ranks on this host; ``world`` places them in a run over many hosts."""
    env = dict(os.environ)
    for key, value in (base or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    ours = torch_env(rank, size, world.run_id or os.path.basename(run_dir),
                     world.master_port or master_port, world, world.master_addr or "127.0.0.1")
    for key, value in ours.items():
        if key not in USER_SETTABLE or key not in env:
            env[key] = value
    env.update(BOOTSTRAP_LOG_CHANNEL=channel, LOGMESH_RUN_DIR=run_dir)
    for key in ("LOGMESH_AGENT", "LOGMESH_TOKEN", "LOGMESH_LEVEL", "LOGMESH_FLUSH_INTERVAL",
                "LOGMESH_RANK", "LOGMESH_JOIN"):
        env.pop(key, None)
    if agent:
        env["LOGMESH_AGENT"] = "1"
        env["LOGMESH_RANK"] = str(rank)
        env["LOGMESH_TOKEN"] = token.hex()
        env["LOGMESH_FLUSH_INTERVAL"] = repr(flush_interval)
        if level is not None:
            env["LOGMESH_LEVEL"] = str(level)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = CHILD_DIR + (os.pathsep + old if old else "")
    return env
