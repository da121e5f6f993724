"""Run the folding property check at scale and print the figures.

``python tests/foldscale.py [EXAMPLES]`` runs the property test's random jobs (hypothesis,
``EXAMPLES`` of them, default 5000, derandomized: the same jobs every run) and every corpus
scenario over 50 seeds and two windows, checks each folded view with :mod:`foldcheck`, and
prints lines checked, values recovered (verbatim, inside a shown range, elided into a count)
and violations.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.foldcheck import Stats, check  # noqa: E402
from tests.test_align import _job, corpus_run, feed  # noqa: E402
from trio_logmesh.view._align import Aligner  # noqa: E402


def _add(total: Stats, one: Stats) -> None:
    total.lines += one.lines
    total.verbatim += one.verbatim
    total.in_range += one.in_range
    total.elided += one.elided
    total.violations += one.violations


def main(examples: int) -> int:
    """Run both checks; print a table; return 1 if any violation was found."""
    rows = []
    prop, jobs = Stats(), [0]

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(_job(), st.sampled_from([0.5, 3.0]))
    def run(job, window: float) -> None:
        printed, items = job
        stats = check(feed(Aligner(window, range(len(printed))), items), printed)
        jobs[0] += 1
        if stats.lines != sum(map(len, printed)):
            stats.violations.append("lines missing")
        _add(prop, stats)

    run()
    rows.append((f"random jobs ({jobs[0]})", prop))
    for name in ["startup", "training", "evaluation", "failures", "progress"]:
        total = Stats()
        for seed in range(50):
            for window in (0.5, 3.0):
                printed, out = corpus_run(name, seed, window)
                _add(total, check(out, printed))
        rows.append((f"corpus {name} (100 runs)", total))
    print(f"{'check':<28}{'lines':>10}{'values':>10}{'verbatim':>10}{'in range':>10}"
          f"{'elided':>8}{'violations':>12}")
    for label, s in rows:
        print(f"{label:<28}{s.lines:>10}{s.values:>10}{s.verbatim:>10}{s.in_range:>10}"
              f"{s.elided:>8}{len(s.violations):>12}")
    bad = [v for _, s in rows for v in s.violations]
    for v in bad[:10]:
        print("violation:", v)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5000))
