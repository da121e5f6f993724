"""Print what ours, Monarch's and Ray's folding make of a corpus scenario (for the README).

    python3 tests/corpus/compare.py [startup|training|evaluation|failures|progress ...]

The lines are fed as the ranks would print them, interleaved in chunks (a fixed seed); ours
with a 3 s window, Monarch's grouping over the whole run (one window), Ray's with its 5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.test_align import corpus_run, texts  # noqa: E402
from trio_logmesh.bench._peers import MonarchGrouper, RayDeduplicator  # noqa: E402


def peers(name: str) -> tuple[list[str], list[str], list[str]]:
    """(ours, Monarch's, Ray's) output for scenario ``name``."""
    printed, out = corpus_run(name)
    ours = texts(out)
    monarch = MonarchGrouper()
    ray = RayDeduplicator()
    ray_out: list[str] = []
    # The same interleaving, one line at a time, 10 ms apart (all within Ray's 5 s).
    order = [(r, line) for r, lines in enumerate(printed) for line in lines]
    order.sort(key=lambda x: (printed[x[0]].index(x[1]), x[0]))
    for i, (r, line) in enumerate(order):
        monarch.add(line)
        ray_out += [f"(pid={1000 + r}) {t}" if "repeated" not in t else t
                    for t in ray.add(line, i * 0.01)]
    ray_out += ray.flush()
    return ours, monarch.flush(), ray_out


def main() -> None:
    """Print the three views of each scenario named on the command line."""
    for name in sys.argv[1:] or ["startup"]:
        ours, monarch, ray = peers(name)
        for title, lines in [("trio_logmesh", ours), ("Monarch", monarch), ("Ray", ray)]:
            print(f"--- {name}: {title}")
            print("\n".join(lines))


if __name__ == "__main__":
    main()
