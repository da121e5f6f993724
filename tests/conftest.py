"""Fixtures: a mesh with its client and a collecting sink, readiness signals from children.

Children signal progress on a FIFO the test reads (``ready``), and the collecting sink wakes
waiters on every emit (``sink.wait_for``): tests synchronize on events, never on sleeps.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio

import trio_logmesh as lm

#: Children are block-buffered on a pipe, as real users' are (this machine sets
#: PYTHONUNBUFFERED=1 for everything; remove it).
CHILD_ENV: dict[str, str | None] = {"PYTHONUNBUFFERED": None}
PY = sys.executable

#: What a Python child runs to tell the test it reached a point: ``ready("name")``.
READY_PY = (
    "def ready(name):\n"
    "    import os\n"
    "    with open(os.environ['READY'], 'w') as f:\n"
    "        f.write(name + '\\n')\n"
)


class Collected:
    """A sink that keeps everything; waiters wake on every emit."""

    def __init__(self) -> None:
        self.items: list[lm.Output] = []
        self._changed = trio.Event()

    async def emit(self, items: Iterable[lm.Output]) -> None:
        self.items.extend(items)
        self._changed.set()
        self._changed = trio.Event()

    def lines(self, rank: int | None = None, stream: str | None = None) -> list[str]:
        out: list[str] = []
        for item in self.items:
            if isinstance(item, lm.LogLines):
                if (rank is None or item.rank == rank) and (stream is None or item.stream == stream):
                    out.extend(item.lines)
        return out

    def notices(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, lm.Notice)]

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Wait until ``predicate()`` holds (checked after every emit)."""
        while not predicate():
            await self._changed.wait()


class Ready:
    """A FIFO children write names to (``READY_PY``'s ``ready``); the test awaits them."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[str] = []
        self._buf = b""

    async def __aenter__(self) -> Ready:
        os.mkfifo(self.path)
        self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # Our own writer keeps the FIFO from reading EOF between children.
        self._keep = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self._stream = trio.lowlevel.FdStream(self._fd)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.aclose()
        os.close(self._keep)

    @property
    def env(self) -> dict[str, str]:
        """What children need in their environment to signal."""
        return {"READY": self.path}

    async def wait(self, *names: str) -> None:
        """Wait until every one of ``names`` was signalled."""
        while not set(names) <= set(self.seen):
            await self._more()

    async def wait_prefixed(self, prefix: str, count: int) -> list[str]:
        """Wait until ``count`` signals starting with ``prefix`` came; return them."""
        while len(got := [s for s in self.seen if s.startswith(prefix)]) < count:
            await self._more()
        return got

    async def _more(self) -> None:
        self._buf += await self._stream.receive_some(4096)
        *done, self._buf = self._buf.split(b"\n")
        self.seen.extend(d.decode() for d in done)


@attrs.define
class Run:
    """A running mesh, its client (or None) and the client's sink."""

    mesh: lm.ProcMesh
    client: lm.LoggingMeshClient
    sink: Collected


@pytest.fixture
def sink() -> Collected:
    return Collected()


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "logs"


@pytest.fixture
async def ready(tmp_path) -> AsyncIterator[Ready]:
    async with Ready(str(tmp_path / "ready.fifo")) as r:
        yield r


@pytest.fixture
def run_mesh(log_dir) -> Callable[..., Any]:
    """``async with run_mesh(cmd, procs, window=..., ranks=..., **open_proc_mesh options) as
    run``: a mesh of block-buffered children, files under ``log_dir``, and a client collecting
    into ``run.sink`` (leaving flushes it, at most ``exit_timeout`` seconds)."""

    @asynccontextmanager
    async def run(
        cmd: list[str],
        procs: int = 1,
        *,
        window: float | None = None,
        ranks: Iterable[int] | None = None,
        sink: Collected | None = None,
        exit_timeout: float = 5.0,
        **options: Any,
    ) -> AsyncIterator[Run]:
        env = dict(CHILD_ENV)
        env.update(options.pop("env", {}))
        options.setdefault("log_dir", log_dir)
        options.setdefault("announce", False)
        sink = sink if sink is not None else Collected()
        async with lm.open_proc_mesh(cmd, procs, env=env, **options) as mesh:
            async with lm.open_logging_client(mesh, sink=sink, ranks=ranks,
                                              aggregate_window_sec=window,
                                              exit_timeout=exit_timeout) as client:
                yield Run(mesh, client, sink)

    return run


async def wait_stopped(pid: int) -> None:
    """Wait until our child ``pid`` is stopped (SIGSTOP takes effect asynchronously): the
    kernel tells us, through ``waitid`` in a thread, without consuming the status."""
    await trio.to_thread.run_sync(
        functools.partial(os.waitid, os.P_PID, pid, os.WSTOPPED | os.WNOWAIT),
        abandon_on_cancel=True,
    )


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
