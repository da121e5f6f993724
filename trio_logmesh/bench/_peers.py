"""How other tools fold the same lines, for comparison only: Monarch's and Ray's.

* :class:`MonarchGrouper`: Monarch's log client buckets the lines of a window by normalized
  edit distance (below 0.15 joins the first group whose *first* line is that close) and shows
  each group as its first line and ``[N similar log lines]``.
* :class:`RayDeduplicator`: Ray's ``log_to_driver`` deduplication as its documentation
  describes it: the first line of a pattern (words with digits ignored) prints at once; its
  repeats within 5 s are counted and printed as one line, ``[repeated Nx across cluster]``.

Reimplemented from their documentation and observed output (no code of theirs), so that
``logmesh bench grouping`` and the README can put the three side by side on one corpus.
"""

from __future__ import annotations

import re


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between ``a`` and ``b``.

    Bit-parallel (Myers 1999, in Hyyrö's formulation for global distance): O(len(a)) big-int
    operations per character of ``b`` instead of a Python loop per DP cell, so the baseline is
    as fast as pure Python allows.
    """
    if not a:
        return len(b)
    if not b:
        return len(a)
    peq: dict[str, int] = {}
    for i, ch in enumerate(a):
        peq[ch] = peq.get(ch, 0) | (1 << i)
    m = len(a)
    full = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = full, 0, m
    for ch in b:
        eq = peq.get(ch, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & full
        mv = ph & xv & full
    return score


class MonarchGrouper:
    """Similarity bucketing as Monarch's log client does it.

    A line joins the first group whose *first* line is within normalized edit distance
    (``levenshtein(a, b) / max(len(a), len(b))``) strictly below ``threshold`` (0.15); else it
    starts a group.  :meth:`flush` shows each group as its first line followed by
    ``[N similar log lines]``, N being the number of lines in the group.
    """

    def __init__(self, threshold: float = 0.15) -> None:
        """Group with normalized distance ``< threshold``."""
        self.threshold = threshold
        self._groups: list[list[str | int]] = []  # [first line, count]

    @staticmethod
    def distance(a: str, b: str) -> float:
        """Normalized edit distance in [0, 1]."""
        longest = max(len(a), len(b))
        return levenshtein(a, b) / longest if longest else 0.0

    def add(self, line: str) -> None:
        """Put ``line`` in the first group it is similar to, or in a new group."""
        for group in self._groups:
            first = group[0]
            assert isinstance(first, str)
            if self.distance(line, first) < self.threshold:
                group[1] = int(group[1]) + 1
                return
        self._groups.append([line, 1])

    def groups(self) -> list[tuple[str, int]]:
        """The current groups as ``(first line, count)``, oldest first."""
        return [(str(first), int(count)) for first, count in self._groups]

    def flush(self) -> list[str]:
        """Render and forget the current groups."""
        out = [f"{first} [{count} similar log lines]" for first, count in self.groups()]
        self._groups = []
        return out


_DIGITS = re.compile(r"\d")


class RayDeduplicator:
    """Ray's log deduplication, as documented (see the module docstring)."""

    def __init__(self, window: float = 5.0) -> None:
        """Deduplicate over ``window`` seconds (Ray's default: 5)."""
        self.window = window
        self._seen: dict[str, list] = {}  # pattern -> [first time, count, latest line]

    @staticmethod
    def pattern(line: str) -> str:
        """The dedup key: the line without its words holding a digit."""
        return " ".join(w for w in line.split() if not _DIGITS.search(w))

    def add(self, line: str, now: float) -> list[str]:
        """Feed one line; return what prints now."""
        out = self.expire(now)
        key = self.pattern(line)
        state = self._seen.get(key)
        if state is None:
            self._seen[key] = [now, 0, line]
            out.append(line)
        else:
            state[1] += 1
            state[2] = line
        return out

    def expire(self, now: float) -> list[str]:
        """The counted repeats whose 5 s have passed."""
        out = []
        for key, (t, count, line) in list(self._seen.items()):
            if now - t >= self.window:
                if count:
                    out.append(f"{line} [repeated {count}x across cluster]")
                del self._seen[key]
        return out

    def flush(self) -> list[str]:
        """Everything counted, now."""
        return self.expire(float("inf"))
