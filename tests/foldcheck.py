"""Check a folded view against what the ranks printed: nothing invented, nothing lost.

:func:`check` walks the view's output in order and, for every rank a line or group claims,
takes that rank's next line(s) and checks that the shown text stands for them:

* a rank's own lines (``LogLines``) must be its next lines, verbatim;
* a group of several lines (a block) must be each rank's next lines, exactly;
* a one-line group must have the rank's next line's literal text, and each field either shows
  the rank's value verbatim (also as one of ``{a|b|c}``, or as ``{rank}``/``cuda:{rank}``
  naming it), or a numeric or time range ``lo..hi`` holding it, or a progress bar no fuller
  than the rank's; a value beyond the named ones of ``{a|b|c|+N more}`` is *elided* (counted,
  not shown) -- never wrong;
* at the end every rank's lines are used up: every line was shown or stood for.

It parses the group text with the rank's own line's template, written independently of the
engine: numbers, tokens and bars are found by their own simple patterns here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from trio_logmesh.view._records import GroupLine, LogLines, Notice, Output

_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?|[@-Z\\-_])")


@attrs.define
class Stats:
    lines: int = 0  # rank lines accounted for
    verbatim: int = 0  # field values shown as printed
    in_range: int = 0  # field values inside a shown range
    elided: int = 0  # field values folded into "+N more"
    violations: list[str] = attrs.field(factory=list)

    @property
    def values(self) -> int:
        return self.verbatim + self.in_range + self.elided


def check(outputs: Iterable[Output], printed: Sequence[Sequence[str]]) -> Stats:
    """Check ``outputs`` against ``printed[rank]`` (each rank's lines, in order)."""
    stats = Stats()
    at = [0] * len(printed)

    def take(rank: int, n: int) -> list[str] | None:
        lines = list(printed[rank][at[rank] : at[rank] + n])
        if len(lines) < n:
            stats.violations.append(f"rank {rank} is claimed for more lines than it printed")
            return None
        at[rank] += n
        return lines

    for item in outputs:
        if isinstance(item, Notice):
            continue
        if isinstance(item, LogLines):
            got = take(item.rank, item.line_count)
            if got is not None and list(item.lines) != got:
                stats.violations.append(f"rank {item.rank}: shown {item.lines!r}, printed {got!r}")
            stats.lines += len(got or ())
            continue
        assert isinstance(item, GroupLine)
        shown = item.text.split("\n")
        for rank in item.ranks:
            got = take(rank, len(shown))
            if got is None:
                continue
            stats.lines += len(got)
            clean = [_ANSI.sub("", g) for g in got]
            if len(shown) > 1:
                if clean != shown:
                    stats.violations.append(f"rank {rank}: block {shown!r} is not {clean!r}")
                continue
            _check_line(shown[0], clean[0], rank, stats)
    for rank, lines in enumerate(printed):
        if at[rank] != len(lines):
            stats.violations.append(f"rank {rank}: {len(lines) - at[rank]} line(s) never shown")
    return stats


# A field of the line, found independently of the engine: a progress bar, or a run of word
# characters holding a digit (split off trailing punctuation).
_FIELD = re.compile(r" *\d{1,3}%\|[^|]*\||[\w.:@+~,-]*\d[\w.:@+~,-]*")
_PLAIN = re.compile(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_UNIT = re.compile(r"(-?\d+(?:\.\d+)?)([A-Za-z]+)")
_BAR_GROUP = r"( *\d{1,3}%\|[^|]*\|)"
_VALUE_GROUP = r"(\{[^}]*\}|\S+?)"
_TIME = re.compile(r"\d{4}-\d\d-\d\d.*|\d{1,2}:\d\d:\d\d(?:[.,]\d+)?")


def _fields(line: str) -> tuple[list[str], list[str]]:
    """The line's literal parts and its field values (parts has one more entry)."""
    parts, values, pos = [], [], 0
    for m in _FIELD.finditer(line):
        start, end = m.span()
        while end > start and line[end - 1] in ".,:-" and not m.group().startswith(" "):
            end -= 1
        if not any(c.isdigit() for c in line[start:end]):
            continue
        parts.append(line[pos:start])
        values.append(line[start:end])
        pos = end
    parts.append(line[pos:])
    return parts, values


def _check_line(shown: str, line: str, rank: int, stats: Stats) -> None:
    parts, values = _fields(line)
    groups = [_BAR_GROUP if "%|" in v else _VALUE_GROUP for v in values]
    pattern = re.escape(parts[0]) + "".join(
        g + re.escape(p) for g, p in zip(groups, parts[1:], strict=True))
    m = re.fullmatch(pattern, shown)
    if m is None:
        stats.violations.append(f"rank {rank}: {shown!r} does not stand for {line!r}")
        return
    for value, rendered in zip(values, m.groups(), strict=True):
        verdict = _verdict(value, rendered, rank)
        if verdict == "verbatim":
            stats.verbatim += 1
        elif verdict == "range":
            stats.in_range += 1
        elif verdict == "elided":
            stats.elided += 1
        else:
            stats.violations.append(f"rank {rank}: value {value!r} shown as {rendered!r} in "
                                    f"{shown!r}")


def _verdict(value: str, rendered: str, rank: int) -> str:
    if rendered == value:
        return "verbatim"
    if "{rank}" in rendered:
        return "verbatim" if rendered.replace("{rank}", str(rank)) == value else "wrong"
    if rendered.startswith("{") and rendered.endswith("}"):
        named = rendered[1:-1].split("|")
        if value in named:
            return "verbatim"
        if named[-1].startswith("+"):
            return "elided"
        return "wrong"
    if "%|" in rendered:
        mine = int(value.strip().split("%")[0])
        return "range" if int(rendered.strip().split("%")[0]) <= mine else "wrong"
    unit = _UNIT.fullmatch(value)
    if unit is not None and rendered.endswith(unit[2]):  # 32GB shown in "30..40GB"
        value, rendered = unit[1], rendered[: len(rendered) - len(unit[2])]
        if rendered == value:
            return "verbatim"
    lo, sep, hi = rendered.partition("..")
    if sep:
        if _PLAIN.fullmatch(lo) and _PLAIN.fullmatch(hi) and _PLAIN.fullmatch(value):
            return "range" if float(lo) <= float(value) <= float(hi) else "wrong"
        if _TIME.fullmatch(lo) and _TIME.fullmatch(hi):
            key = lambda v: (len(v), v)  # noqa: E731
            return "range" if key(lo) <= key(value) <= key(hi) else "wrong"
    if _PLAIN.fullmatch(value) and _PLAIN.fullmatch(rendered) and float(value) == float(rendered):
        return "verbatim"  # the same number written differently (1.0 and 1.00)
    return "wrong"
