"""What the notebook tests share: the cells' helper code, a kernel driver, the cross-check.

The cross-check reads a saved notebook's outputs the way a user would -- stream text and
displays -- and holds them against the per-rank files: every line of a rank must be in the
cell during which it was printed (its ``cN`` tag, see ``nb_worker``), and the cells' lines of
each rank, joined in cell order, must be exactly the rank's file: none missing, none twice,
none out of order.
"""

from __future__ import annotations

import collections
import os
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from .conftest import alive

WORKER = str(Path(__file__).with_name("nb_worker.py"))

#: The notebook's helper code: ``Ranks(dir)`` sends commands to ``nb_worker`` ranks.
HELPERS = r'''
import asyncio, json, os, signal, sys, time

class Ranks:
    """Commands for nb_worker ranks reading DIR; say() returns once they obeyed."""

    def __init__(self, where, size):
        self.where, self.size, self.n = where, size, 0

    def send(self, cell, ranks=None, **cmd):
        ranks = list(range(self.size)) if ranks is None else list(ranks)
        n, self.n = self.n, self.n + 1
        tmp = os.path.join(self.where, f".cmd.{n}")
        with open(tmp, "w") as fh:
            json.dump(dict(cell=cell, ranks=ranks, **cmd), fh)
        os.rename(tmp, os.path.join(self.where, f"cmd.{n}"))
        return [os.path.join(self.where, f"done.{n}.{r}") for r in ranks]

    def wait(self, dones, timeout=20):
        deadline = time.monotonic() + timeout
        while not all(map(os.path.exists, dones)):
            assert time.monotonic() < deadline, "the ranks did not obey"
            time.sleep(0.005)

    def say(self, cell, ranks=None, **cmd):
        self.wait(self.send(cell, ranks, **cmd))

    async def asay(self, cell, ranks=None, **cmd):
        dones = self.send(cell, ranks, **cmd)
        deadline = time.monotonic() + 20
        while not all(map(os.path.exists, dones)):
            assert time.monotonic() < deadline, "the ranks did not obey"
            await asyncio.sleep(0.005)

def wait_stopped(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                return
        assert time.monotonic() < deadline, "the rank did not stop"
        time.sleep(0.005)
'''


def child_env() -> dict[str, str | None]:
    """The ranks' environment changes: block-buffered stdout, as real users' ranks have."""
    return {"PYTHONUNBUFFERED": None}


# -- reading a notebook's outputs ------------------------------------------------------------
RANK_LINE = re.compile(r"^\[(?:(?P<name>\w+) )?(?P<rank>\d+)\] (?P<text>.*)$")
TAG = re.compile(r"^r(?P<rank>\d+) c(?P<cell>\d+) ")


@attrs.define
class CellOutput:
    """One cell's output as a user sees it."""

    tag: int | None
    #: (mesh name or "", rank, stream, text) of every rank line, in order per stream.
    lines: list[tuple[str, int, str, str]] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)
    other: list[str] = attrs.field(factory=list)
    displays: list[dict[str, Any]] = attrs.field(factory=list)
    results: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    tracebacks: list[str] = attrs.field(factory=list)
    seconds: float | None = None


def cell_tag(source: str) -> int | None:
    m = re.match(r"# cell (\d+)", source)
    return int(m.group(1)) if m else None


def read_outputs(cells: Iterable[Any]) -> list[CellOutput]:
    """Each code cell's output (``nbformat`` cells, as saved)."""
    out = []
    for cell in cells:
        if cell.cell_type != "code":
            continue
        co = CellOutput(cell_tag(cell.source))
        timing = cell.metadata.get("execution", {})
        if "iopub.status.busy" in timing and "iopub.status.idle" in timing:
            co.seconds = _seconds(timing["iopub.status.idle"]) - _seconds(
                timing["iopub.status.busy"])
        for o in cell.outputs:
            if o.output_type == "stream":
                for line in o.text.splitlines():
                    m = RANK_LINE.match(line)
                    if m:
                        co.lines.append((m["name"] or "", int(m["rank"]), o.name, m["text"]))
                    elif line.startswith("[logmesh] "):
                        co.notes.append(line[len("[logmesh] "):])
                    else:
                        co.other.append(line)
            elif o.output_type == "display_data":
                co.displays.append(dict(o.data))
            elif o.output_type == "execute_result":
                co.results.append(o.data.get("text/plain", ""))
            elif o.output_type == "error":
                co.errors.append(f"{o.ename}: {o.evalue}")
                co.tracebacks.extend(re.sub(r"\x1b\[[0-9;]*m", "", t) for t in o.traceback)
        out.append(co)
    return out


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# -- the cross-check -------------------------------------------------------------------------
@attrs.define
class CrossCheck:
    """What the cross-check of one mesh found."""

    lines_checked: int = 0
    cells: int = 0
    wrong_cell: list[str] = attrs.field(factory=list)
    missing: list[str] = attrs.field(factory=list)
    twice: list[str] = attrs.field(factory=list)
    out_of_order: list[str] = attrs.field(factory=list)
    #: Per cell (tag): the mesh's lines it shows, and how many of them are in the wrong cell.
    per_cell: dict[int | None, list[int]] = attrs.field(factory=dict)

    @property
    def violations(self) -> int:
        return len(self.wrong_cell) + len(self.missing) + len(self.twice) + len(
            self.out_of_order)

    def per_cell_summary(self) -> str:
        return ", ".join(f"cell {tag}: {n} ({bad} wrong)"
                         for tag, (n, bad) in self.per_cell.items())

    def summary(self) -> str:
        return (f"{self.lines_checked} lines in {self.cells} cells checked against the per-rank "
                f"files: {self.violations} violations ({len(self.wrong_cell)} in the wrong "
                f"cell, {len(self.missing)} missing, {len(self.twice)} twice, "
                f"{len(self.out_of_order)} out of order)")


def cross_check(outputs: list[CellOutput], run_dir: str, size: int,
                name: str = "") -> CrossCheck:
    """Hold the cells' lines of mesh ``name`` against its files in ``run_dir``.

    A line printed without its newline (``... partial``, the worker's marker) is continued by
    that rank's next piece on the stream, as in the file.
    """
    check = CrossCheck()
    pieces: dict[tuple[int, str], list[tuple[int | None, str]]] = collections.defaultdict(list)
    for co in outputs:
        seen = False
        for mesh, rank, stream, text in co.lines:
            if mesh != name:
                continue
            seen = True
            pieces[(rank, stream)].append((co.tag, text))
            counts = check.per_cell.setdefault(co.tag, [0, 0])
            counts[0] += 1
            m = TAG.match(text)
            if m and int(m["rank"]) != rank:
                check.wrong_cell.append(f"cell {co.tag}: rank {rank} showed {text!r}")
                counts[1] += 1
            elif m and int(m["cell"]) != co.tag:
                check.wrong_cell.append(f"cell {co.tag}: {text!r}")
                counts[1] += 1
        check.cells += seen
    width = len(str(size - 1))
    for rank in range(size):
        for stream in ("stdout", "stderr"):
            path = os.path.join(run_dir, f"rank-{rank:0{width}d}.{stream}.log")
            with open(path, encoding="utf-8", errors="replace") as fh:
                data = fh.read()
            shown = ""
            for _, text in pieces[(rank, stream)]:
                shown += text if text.endswith(" partial") else text + "\n"
            want = data.split("\n")
            got = shown.split("\n")
            check.lines_checked += len([w for w in want if w])
            wc, gc = collections.Counter(want), collections.Counter(got)
            for line, n in (wc - gc).items():
                check.missing.extend([f"rank {rank} {stream}: {line!r}"] * n)
            for line, n in (gc - wc).items():
                check.twice.extend([f"rank {rank} {stream}: {line!r}"] * n)
            if wc == gc and want != got:
                check.out_of_order.append(f"rank {rank} {stream}")
    return check


# -- driving a kernel with jupyter_client ---------------------------------------------------
@attrs.define
class Reply:
    """What one execution produced: the reply, and each IOPub output with its arrival time."""

    status: str
    started: float
    ended: float
    outputs: list[tuple[float, str, Any]] = attrs.field(factory=list)

    def text(self, name: str | None = None) -> str:
        return "".join(c["text"] for _, kind, c in self.outputs
                       if kind == "stream" and (name is None or c["name"] == name))

    def lines(self) -> list[str]:
        return self.text().splitlines()


def execute(kc: Any, code: str, timeout: float = 60,
            on_output: Any = None) -> Reply:
    """Run ``code`` in the kernel of client ``kc``; collect its outputs until it is idle."""
    started = time.monotonic()
    msg_id = kc.execute(code)
    outputs: list[tuple[float, str, Any]] = []
    deadline = started + timeout
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, deadline - time.monotonic()))
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind = msg["msg_type"]
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            break
        if kind in ("stream", "display_data", "update_display_data", "execute_result", "error"):
            outputs.append((time.monotonic(), kind, msg["content"]))
            if on_output is not None:
                on_output(kind, msg["content"])
    reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=max(0.01, deadline - time.monotonic()))
    return Reply(reply["content"]["status"], started, time.monotonic(), outputs)


def wait_gone(pids: Iterable[int], timeout: float = 15) -> list[int]:
    """Wait until none of ``pids`` runs; return those still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.05)
    return left


PY = sys.executable
