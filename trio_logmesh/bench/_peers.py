"""How other tools fold the same lines, for comparison only: Monarch's and Ray's.

* :class:`MonarchGrouper`: Monarch's log client buckets the lines of a window by normalized
  edit distance (below 0.15 joins the first group whose *first* line is that close) and shows
  each group as its first line and ``[N similar log lines]``.
* :class:`RayDeduplicator`: Ray's ``log_to_driver`` deduplication: the first line of a
  pattern (words with numbers ignored) prints at once; its repeats from other processes
  within 5 s are counted and printed as one line, ``[repeated Nx across cluster]``.

Written anew from their documentation and from reading their code (no code of theirs), so that
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


_NUMBERS = re.compile(r"\d+|0x[0-9a-fA-F]+")


class RayDeduplicator:
    """Ray's ``log_to_driver`` deduplication (``ray/_private/ray_logging``), per stream.

    * The key of a line is the line without its words holding a number; a line whose key is
      empty is never deduplicated.
    * A key seen for the first time prints at once and starts a 5 s window.
    * A repeat from the *same* source (process) as every earlier one prints at once; once a
      second source printed the key, repeats are counted and only the latest is kept.
    * When the window ends: two or more counted repeats print as the latest one followed by
      ``[repeated Nx across cluster]`` (and counting starts again); a single one prints as
      itself; none, nothing more.
    """

    def __init__(self, window: float = 5.0) -> None:
        """Deduplicate over ``window`` seconds (Ray's default: 5)."""
        self.window = window
        # key -> [window start, count, latest line, latest source, sources]
        self._recent: dict[str, list] = {}

    @staticmethod
    def pattern(line: str) -> str:
        """The dedup key: the line without its words holding a number."""
        return " ".join(w for w in line.split() if not _NUMBERS.search(w))

    def add(self, line: str, now: float, source: int = 0) -> list[tuple[int, str]]:
        """Feed one line of ``source``; return what prints now, as ``(source, text)``."""
        out: list[tuple[int, str]] = []
        key = self.pattern(line)
        state = self._recent.get(key) if key else None
        if not key:
            out.append((source, line))
        elif state is None:
            self._recent[key] = [now, 0, line, source, {source}]
            out.append((source, line))
        else:
            state[4].add(source)
            if len(state[4]) > 1:
                state[1] += 1
                state[2], state[3] = line, source
            else:
                out.append((source, line))
        out += self._expire(now)
        return out

    def _expire(self, now: float) -> list[tuple[int, str]]:
        out: list[tuple[int, str]] = []
        while self._recent:
            key, state = next(iter(self._recent.items()))
            if now - state[0] < self.window:
                break
            del self._recent[key]
            start, count, line, source, sources = state
            if count > 1:
                out.append((source, f"{line} [repeated {count}x across cluster]"))
                self._recent[key] = [now, 0, line, source, sources]
            elif count == 1:
                out.append((source, line))
        return out

    def flush(self) -> list[tuple[int, str]]:
        """Everything counted, now."""
        out: list[tuple[int, str]] = []
        for _, count, line, source, _ in self._recent.values():
            if count > 1:
                out.append((source, f"{line} [repeated {count}x across cluster]"))
            elif count == 1:
                out.append((source, line))
        self._recent.clear()
        return out
