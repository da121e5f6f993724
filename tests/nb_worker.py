"""A rank for the notebook tests: prints what the notebook commands, tagged by cell.

Run as ``python nb_worker.py DIR``.  The notebook writes commands ``DIR/cmd.N`` (JSON, written
whole by a rename) and waits for ``DIR/done.N.RANK``.  Every line says who printed it in which
cell (``r1 c7 n0``), so the test can check each line against the cell whose output holds it.
A command:

* ``cell``: the tag; ``ranks``: who obeys (the others skip it);
* ``lines``/``err_lines``: that many lines on stdout / stderr, ``gap`` seconds apart;
* ``partial``: end with a line without its newline (``... partial``); the next command's
  first stdout line completes it;
* ``steps``: that many ``step I loss X`` lines (for aggregation);
* ``after``: print ``lines`` lines this many seconds *after* saying done (between cells);
* ``exit``: exit with this code once done.

stdout is block-buffered (the test removes PYTHONUNBUFFERED): what is printed stays in the
rank's buffer until a barrier or the agent's periodic flush takes it out.
"""

from __future__ import annotations

import json
import os
import sys
import time


def main() -> None:
    rank = int(os.environ["RANK"])
    where = sys.argv[1]
    n = 0
    while True:
        path = os.path.join(where, f"cmd.{n}")
        try:
            with open(path) as fh:
                cmd = json.load(fh)
        except FileNotFoundError:
            time.sleep(0.005)
            continue
        if rank in cmd["ranks"]:
            obey(rank, cmd, os.path.join(where, f"done.{n}.{rank}"))
        n += 1


def obey(rank: int, cmd: dict, done: str) -> None:
    tag = f"r{rank} c{cmd['cell']}"
    gap = cmd.get("gap", 0)
    if cmd.get("after"):
        open(done, "w").close()
        time.sleep(cmd["after"])
    for i in range(cmd.get("lines", 0)):
        print(f"{tag} n{i}")
        if gap:
            time.sleep(gap)
    for i in range(cmd.get("err_lines", 0)):
        print(f"{tag} e{i}", file=sys.stderr)
    for i in range(cmd.get("steps", 0)):
        print(f"step {i} loss {1.0 / (i + rank + 1):.4f}")
    if cmd.get("partial"):
        print(f"{tag} partial", end="")
    if not cmd.get("after"):
        open(done, "w").close()
    if "exit" in cmd:
        sys.exit(cmd["exit"])


if __name__ == "__main__":
    main()
