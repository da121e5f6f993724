"""Chaos: children print, crash, stop and get killed at random; one invariant must hold.

Every line written before a successful ``flush()`` is in the files exactly once, and in the
live view exactly once or counted as dropped.
"""

from __future__ import annotations

import os
import random
import re
import signal

import trio

import trio_logmesh as lm

from .conftest import CHILD_ENV, PY, Collected

# Whole lines written with one os.write each: a line is never torn by a stop, so the files
# and the live view can be compared line for line.  Some ranks crash by themselves.
CHILD = r"""
import os, random, sys, time
r = int(os.environ["RANK"])
rng = random.Random(int(sys.argv[1]) * 100 + r)
i = 0
while True:
    burst = rng.choice([1, 1, 5, 50])
    for _ in range(burst):
        os.write(1 if rng.random() < 0.8 else 2, f"rank {r} line {i}\n".encode())
        i += 1
    if rng.random() < 0.003:
        raise RuntimeError(f"rank {r} crashed at line {i}")
    time.sleep(rng.choice([0, 0.001, 0.005]))
"""

LINE = re.compile(r"rank (\d+) line (\d+)")


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # it crashed by itself and was reaped meanwhile
        pass


async def test_chaos_invariant_holds(tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    sink = Collected()
    async with lm.open_proc_mesh(
        [PY, "-c", CHILD, str(seed)], procs=8, env=CHILD_ENV, log_dir=tmp_path,
        announce=False, grace=1.0, buffer_bytes=256 * 1024,
    ) as mesh:
        async with trio.open_nursery() as nursery:
            client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
            stopped: set[int] = set()
            with trio.move_on_after(4):
                while True:
                    await trio.sleep(rng.uniform(0.01, 0.2))
                    r = rng.randrange(8)
                    if mesh.returncodes[r] is not None:
                        continue
                    action = rng.choice(["stop", "cont", "kill", "flush"])
                    if action == "stop":
                        _kill(mesh.pids[r], signal.SIGSTOP)
                        stopped.add(r)
                    elif action == "cont" and stopped:
                        s = stopped.pop()
                        _kill(mesh.pids[s], signal.SIGCONT)
                    elif action == "kill":
                        _kill(mesh.pids[r], signal.SIGKILL)
                        stopped.discard(r)  # a stopped process dies of SIGKILL too
                    else:
                        try:
                            await client.flush(timeout=1.0)
                        except lm.FlushTimeout as exc:
                            # Only a rank we stopped can fail to answer, and the host says
                            # why; every other rank's output up to the barrier arrived.
                            assert exc.missing_ranks, seed
                            assert set(exc.missing_ranks) <= stopped, (seed, exc)
                            for m in exc.missing_ranks:
                                assert exc.reasons[m].startswith("is stopped"), (seed, exc)
            for r in stopped:
                _kill(mesh.pids[r], signal.SIGCONT)
            mesh.send_signal(signal.SIGKILL)
            with trio.fail_after(30):
                await mesh.wait()
                await client.flush()  # must succeed: everyone is dead, pipes drained
            await client.aclose()
    dropped: dict[int, int] = {}
    for text in sink.notices():
        m = re.fullmatch(r"([\d,]+) lines dropped for rank (\d+)", text)
        if m:
            dropped[int(m.group(2))] = dropped.get(int(m.group(2)), 0) + int(
                m.group(1).replace(",", ""))
    for r in range(8):
        out_path, err_path = mesh.log_files(r)
        in_files = []
        for path in (out_path, err_path):
            for ln in open(path).read().splitlines():
                if LINE.fullmatch(ln):
                    in_files.append(ln)
        numbers = sorted(int(LINE.fullmatch(ln).group(2)) for ln in in_files)  # type: ignore[union-attr]
        assert numbers == list(range(len(numbers))), f"seed {seed}: files of rank {r}"
        shown = [ln for ln in sink.lines(rank=r) if LINE.fullmatch(ln)]
        assert len(shown) == len(set(shown)), f"seed {seed}: rank {r} shown twice"
        assert set(shown) <= set(in_files), f"seed {seed}"
        assert len(shown) + dropped.get(r, 0) == len(in_files), (
            f"seed {seed}: rank {r}: {len(shown)} shown + {dropped.get(r, 0)} dropped "
            f"!= {len(in_files)} written"
        )
