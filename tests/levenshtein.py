"""Monarch-style similarity grouping: the reference our template grouping is compared with.

Monarch's log client buckets lines by normalized edit distance; this reimplementation is what
``tests/test_aggregate.py`` pins our grouping's differences against.
"""

from __future__ import annotations


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


class LevenshteinGrouper:
    """Similarity bucketing as Monarch's log client does it, for comparison only.

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
