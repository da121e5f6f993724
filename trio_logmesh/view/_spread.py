"""A folded line's fields: every value a group's lines held, shown without ever inventing one.

One :class:`FieldValues` per field of a template collects the field's values over the lines
a group stands for -- exactly, never sampled -- and :meth:`FieldValues.render` shows them:

* all equal: the value itself;
* a plain number (``num``) equal to each line's rank: ``{rank}``; else the exact minimum and
  maximum, as printed: ``0.41..0.43``;
* a time: the earliest and latest, as printed: ``15:31:58..15:32:01``;
* a token (``tok``: a version, an address, a device list, an id): ``prefix{rank}suffix`` when
  it is the rank inside the same text for every line (``cuda:{rank}``), else the distinct
  values, up to ``SHOWN`` of them in order of appearance, then how many more:
  ``{2.3.1|2.1.0|2.10.2}``, ``{a|b|c|+61 more}``;
* a progress bar: the least advanced one (never a bar drawn fuller than a rank's own).

So every value shown is one some line held; ``..`` only ever joins two plain numbers (or two
times) that were printed, and means "from, to".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

SHOWN: Final = 3
"""Distinct token values shown by name; more are counted."""
MAX_DISTINCT: Final = 1000
"""Distinct token values a field keeps count of; past that it says ``+997 or more``."""


def _bar_percent(value: str) -> int:
    return int(value.lstrip(" ").split("%", 1)[0])


def _time_key(value: str) -> tuple[int, str]:
    return (len(value), value)  # H:MM:SS before HH:MM:SS; ISO forms compare as text


class FieldValues:
    """The values one field took over a group's lines; see the module docstring."""

    __slots__ = ("kind", "first", "same", "count", "lo", "hi", "lo_s", "hi_s", "distinct",
                 "overflow", "rank_is_value", "rank_forms", "ranks")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.first: str | None = None
        self.same = True
        self.count = 0
        self.lo = self.hi = 0.0
        self.lo_s = self.hi_s = ""
        self.distinct: dict[str, None] = {}
        self.overflow = False
        #: Every value so far was its line's rank (``num``), or the rank inside the same
        #: text (``tok``: the candidate (prefix, suffix) pairs still possible).
        self.rank_is_value = True
        self.rank_forms: list[tuple[str, str]] | None = None
        self.ranks: set[int] = set()

    def add(self, value: str, rank: int) -> None:
        """One line's value (of rank ``rank``)."""
        self.add_run([value], rank)

    def add_run(self, values: Sequence[str], rank: int) -> None:
        """Values of lines of one rank that share one shape (``values`` not empty)."""
        if self.first is None:
            self.first = values[0]
        first = self.first
        if self.same and (values[0] != first or values.count(first) != len(values)):
            self.same = False
        self.count += len(values)
        self.ranks.add(rank)
        kind = self.kind
        if kind == "num":
            self._numbers(values, rank)
        elif kind == "tok":
            self._tokens(values, rank)
        elif kind == "time":
            lo, hi = min(values, key=_time_key), max(values, key=_time_key)
            if not self.lo_s or _time_key(lo) < _time_key(self.lo_s):
                self.lo_s = lo
            if not self.hi_s or _time_key(hi) > _time_key(self.hi_s):
                self.hi_s = hi
        else:  # bar: the least advanced
            least = min(values, key=_bar_percent)
            if not self.lo_s or _bar_percent(least) < _bar_percent(self.lo_s):
                self.lo_s = least

    def add_each(self, values: Sequence[str], ranks: Sequence[int]) -> None:
        """One value per line: ``values[i]`` held by a line of rank ``ranks[i]``."""
        first = values[0]
        if values.count(first) == len(values):  # the common case: one value for all
            self.add_run([first], ranks[0])
            if len(values) > 1:
                self.count += len(values) - 1
                self.ranks.update(ranks)
                if len(set(ranks)) > 1:
                    self.rank_is_value = False  # one value cannot be several ranks
            return
        if self.kind != "num":
            for value, rank in zip(values, ranks, strict=True):
                self.add_run([value], rank)
            return
        if self.first is None:
            self.first = first
        self.same = False
        self.count += len(values)
        self.ranks.update(ranks)
        if self.rank_is_value and list(values) != [str(r) for r in ranks]:
            self.rank_is_value = False
        floats = list(map(float, values))
        lo, hi = min(floats), max(floats)
        if not self.lo_s or lo < self.lo:
            self.lo, self.lo_s = lo, values[floats.index(lo)]
        if not self.hi_s or hi > self.hi:
            self.hi, self.hi_s = hi, values[floats.index(hi)]

    def _numbers(self, values: Sequence[str], rank: int) -> None:
        if self.rank_is_value and (values[0] != str(rank) or values.count(values[0]) != len(values)):
            self.rank_is_value = False
        if len(values) == 1:
            lo_s = hi_s = values[0]
        elif any("e" in v or "E" in v for v in values[:1]):
            lo_s, hi_s = min(values, key=float), max(values, key=float)
        else:
            # One shape: the same width and the same sign, so text order is number order
            # (reversed for negative numbers).
            lo_s, hi_s = min(values), max(values)
            if lo_s.startswith("-"):
                lo_s, hi_s = hi_s, lo_s
        lo, hi = float(lo_s), float(hi_s)
        if not self.lo_s or lo < self.lo:
            self.lo, self.lo_s = lo, lo_s
        if not self.hi_s or hi > self.hi:
            self.hi, self.hi_s = hi, hi_s

    def _tokens(self, values: Sequence[str], rank: int) -> None:
        distinct = self.distinct
        new = dict.fromkeys(values) if len(values) > 1 else {values[0]: None}
        if self.rank_is_value:
            r = str(rank)
            for v in new:
                forms = [(v[:i], v[i + len(r):]) for i in _occurrences(v, r)]
                if self.rank_forms is not None:
                    forms = [f for f in forms if f in self.rank_forms]
                self.rank_forms = forms
                if not forms:
                    self.rank_is_value = False
                    break
        for v in new:
            if v not in distinct:
                if len(distinct) >= MAX_DISTINCT:
                    self.overflow = True
                    break
                distinct[v] = None

    def render(self) -> str:
        """The field as shown in the group line."""
        first = self.first or ""
        if self.same:
            return first
        kind = self.kind
        if kind == "num":
            if self.rank_is_value and len(self.ranks) > 1:
                return "{rank}"
            return f"{self.lo_s}..{self.hi_s}" if self.lo != self.hi else self.lo_s
        if kind == "time":
            return f"{self.lo_s}..{self.hi_s}"
        if kind == "bar":
            return self.lo_s
        if self.rank_is_value and self.rank_forms and len(self.ranks) > 1:
            prefix, suffix = self.rank_forms[0]
            return prefix + "{rank}" + suffix
        shown = list(self.distinct)
        if len(shown) <= SHOWN + 1 and not self.overflow:
            return "{" + "|".join(shown) + "}"
        more = len(shown) - SHOWN
        tail = f"+{more} or more" if self.overflow else f"+{more} more"
        return "{" + "|".join(shown[:SHOWN]) + "|" + tail + "}"


def _occurrences(value: str, number: str) -> list[int]:
    """Where ``number`` stands in ``value`` as a whole number (no digit right before or after)."""
    out = []
    i = value.find(number)
    while i >= 0:
        end = i + len(number)
        if (i == 0 or not value[i - 1].isdigit()) and (end == len(value) or not value[end].isdigit()):
            out.append(i)
        i = value.find(number, i + 1)
    return out
