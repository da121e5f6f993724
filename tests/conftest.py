"""Shared helpers: block-buffered children, a collecting sink, waiting for files."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable

import pytest
import trio

import trio_logmesh as lm

#: Children are block-buffered on a pipe, as real users' are (this machine sets
#: PYTHONUNBUFFERED=1 for everything; remove it).
CHILD_ENV: dict[str, str | None] = {"PYTHONUNBUFFERED": None}
PY = sys.executable


class Collected:
    """A sink that keeps everything, plus helpers to read it back."""

    def __init__(self) -> None:
        self.items: list[lm.Output] = []

    async def emit(self, items: Iterable[lm.Output]) -> None:
        self.items.extend(items)

    def lines(self, rank: int | None = None, stream: str | None = None) -> list[str]:
        out: list[str] = []
        for item in self.items:
            if isinstance(item, lm.LogLines):
                if (rank is None or item.rank == rank) and (stream is None or item.stream == stream):
                    out.extend(item.lines)
        return out

    def notices(self) -> list[str]:
        return [i.text for i in self.items if isinstance(i, lm.Notice)]


@pytest.fixture
def sink() -> Collected:
    return Collected()


@pytest.fixture
def log_dir(tmp_path):
    return tmp_path / "logs"


async def wait_for_files(paths: Iterable[os.PathLike | str], timeout: float = 30.0) -> None:
    """Poll (real time) until every path exists: children signal progress with files."""
    deadline = time.monotonic() + timeout
    paths = list(paths)
    while not all(os.path.exists(p) for p in paths):
        if time.monotonic() > deadline:
            missing = [str(p) for p in paths if not os.path.exists(p)]
            raise AssertionError(f"children did not create {missing}")
        await trio.sleep(0.01)


async def wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait (real time) until ``pid`` is really stopped: SIGSTOP takes effect asynchronously,
    and a thread of the child may still answer a request in between."""
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("T", "t"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"process {pid} did not stop (state {state})")
        await trio.sleep(0.005)
