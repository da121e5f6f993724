"""What a rank is started with: its command's kind, its environment, its files' paths.

Pure helpers of the BootstrapProcManager (``_mesh``), apart so each can be read and tested
alone.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import py_compile
import tempfile
import time
from collections.abc import Mapping

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


def default_log_root() -> str:
    """Where run directories go when no ``log_dir`` is given (``$LOGMESH_LOG_DIR`` or tmp)."""
    return os.environ.get("LOGMESH_LOG_DIR") or os.path.join(tempfile.gettempdir(), "logmesh")


def make_run_dir(log_dir: str | os.PathLike[str] | None) -> str:
    """The run directory: ``log_dir`` (created if missing), or a new one under the root."""
    if log_dir is not None:
        path = os.fspath(log_dir)
        os.makedirs(path, exist_ok=True)
        return path
    root = default_log_root()
    os.makedirs(root, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return tempfile.mkdtemp(prefix=f"{stamp}-", dir=root)


def log_paths(run_dir: str, rank: int, size: int) -> tuple[str, str]:
    """The stdout and stderr file paths of ``rank`` in a mesh of ``size``."""
    width = len(str(max(0, size - 1)))
    base = os.path.join(run_dir, f"rank-{rank:0{width}d}")
    return base + ".stdout.log", base + ".stderr.log"


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
) -> dict[str, str]:
    """The environment of ``rank``: the driver's, ``base`` applied (``None`` removes a
    variable), the rank variables, and for an agent its token, interval, level and path."""
    env = dict(os.environ)
    for key, value in (base or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    env.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(size),
        BOOTSTRAP_LOG_CHANNEL=channel,
        LOGMESH_RUN_DIR=run_dir,
    )
    for key in ("LOGMESH_AGENT", "LOGMESH_TOKEN", "LOGMESH_LEVEL", "LOGMESH_FLUSH_INTERVAL"):
        env.pop(key, None)
    if agent:
        env["LOGMESH_AGENT"] = "1"
        env["LOGMESH_TOKEN"] = token.hex()
        env["LOGMESH_FLUSH_INTERVAL"] = repr(flush_interval)
        if level is not None:
            env["LOGMESH_LEVEL"] = str(level)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = CHILD_DIR + (os.pathsep + old if old else "")
    return env
