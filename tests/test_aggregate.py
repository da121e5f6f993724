"""The repeats fold (``fold="repeats"``): windows, exact spreads, and a per-line model."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_logmesh.bench._peers import levenshtein
from trio_logmesh.view._aggregate import MAX_KINDS, Aggregator, fold_ranks
from trio_logmesh.view._records import GroupLine, LogLines, Output, Stream, format_output
from trio_logmesh.view._shapes import ANSI as _ANSI
from trio_logmesh.view._shapes import parse as _parse
from trio_logmesh.view._shapes import template_of


def batch(
    rank: int,
    *lines: str,
    stream: Stream = "stdout",
    time: float = 0.0,
    partial: bool = False,
) -> LogLines:
    return LogLines.of(rank, stream, lines, f"host{rank // 8}", 1000 + rank, time, partial)


def texts(outputs: Sequence[Output]) -> list[str]:
    return [format_output(o) for o in outputs]


def live_lines(outputs: Sequence[Output]) -> list[str]:
    return [ln for o in outputs if isinstance(o, LogLines) for ln in o.lines]


@pytest.mark.parametrize(
    ("ranks", "folded"),
    [
        ([0, 1, 2, 3, 4, 5, 6, 9], "0-6,9"),
        ([9, 3, 4, 3, 0], "0,3-4,9"),
        ([5], "5"),
        ([], ""),
        ([1, 3, 5], "1,3,5"),
        (range(64), "0-63"),
    ],
)
def test_fold_ranks(ranks: list[int], folded: str) -> None:
    assert fold_ranks(ranks) == folded


# -- the window --------------------------------------------------------------------------


def test_first_line_at_once_repeats_summarized_at_deadline() -> None:
    agg = Aggregator(3.0)
    first = batch(0, "step 1 loss 0.4290", time=1000.0)
    assert agg.add(first, now=10.0) == [first]
    assert agg.next_deadline() == 13.0
    assert agg.add(batch(1, "step 5 loss 0.4100", time=1001.0), now=11.0) == []
    assert agg.add(batch(2, "step 9 loss 0.4250", time=1002.5), now=12.0) == []
    assert agg.expire(12.999) == []
    assert agg.expire(13.0) == [
        GroupLine(
            stream="stdout",
            text="step 5..9 loss 0.4100..0.4250",
            count=2,
            ranks=(1, 2),
            ranks_text="1-2",
            first_time=1001.0,
            last_time=1002.5,
        )
    ]
    assert agg.next_deadline() is None
    assert agg.expire(100.0) == []


def test_group_of_one_line_prints_as_that_line() -> None:
    agg = Aggregator(3.0)
    agg.add(batch(0, "\x1b[31mE 1\x1b[0m"), now=0.0)
    agg.add(batch(5, "\x1b[31mE 2\x1b[0m", time=7.0), now=1.0)
    assert agg.expire(3.0) == [
        LogLines.of(5, "stdout", ("\x1b[31mE 2\x1b[0m",), "host0", 1005, 7.0)
    ]


def test_window_opens_with_first_line_after_idle() -> None:
    agg = Aggregator(2.0)
    assert agg.next_deadline() is None
    agg.add(batch(0, "tick 1"), now=5.0)
    assert agg.add(batch(1, "tick 2"), now=6.0) == []
    assert texts(agg.expire(7.0)) == ["[1] tick 2"]
    # Idle from 7 to 50: the next line opens a new window, and its kind is new again.
    assert texts(agg.add(batch(2, "tick 3"), now=50.0)) == ["[2] tick 3"]
    assert agg.next_deadline() == 52.0


def test_add_past_deadline_closes_the_old_window_first() -> None:
    agg = Aggregator(2.0)
    agg.add(batch(0, "tick 1"), now=0.0)
    agg.add(batch(1, "tick 2"), now=1.0)
    out = agg.add(batch(2, "tick 3"), now=2.5)
    assert texts(out) == ["[1] tick 2", "[2] tick 3"]
    assert agg.next_deadline() == 4.5


def test_header_span_is_wall_clock_of_first_and_last_batch() -> None:
    agg = Aggregator(3.0)
    agg.add(batch(0, "x 1", time=500.0), now=0.0)
    agg.add(batch(3, "x 2", "x 3", time=503.25), now=0.1)
    agg.add(batch(1, "x 4", time=501.5), now=0.2)  # arrived later, printed earlier
    agg.add(batch(2, "x 5", time=502.0), now=2.9)
    (group,) = agg.drain(now=2.9)
    assert isinstance(group, GroupLine)
    assert (group.count, group.ranks, group.ranks_text) == (4, (1, 2, 3), "1-3")
    assert (group.first_time, group.last_time) == (501.5, 503.25)
    assert format_output(group) == "[4x ranks 1-3] x 2..5"


def test_set_window_shorter_reschedules_and_past_deadline_emits_at_once() -> None:
    agg = Aggregator(10.0)
    agg.add(batch(0, "a 1"), now=100.0)
    agg.add(batch(1, "a 2"), now=101.0)
    assert agg.set_window(3.0, now=102.0) == []
    assert agg.next_deadline() == 103.0
    assert agg.window == 3.0
    assert agg.set_window(30.0, now=102.5) == []
    assert agg.next_deadline() == 130.0
    assert texts(agg.set_window(1.0, now=102.5)) == ["[1] a 2"]
    assert agg.next_deadline() is None
    assert agg.set_window(5.0, now=103.0) == []
    assert agg.next_deadline() is None


def test_drain_returns_everything_pending_and_closes_the_window() -> None:
    agg = Aggregator(3.0)
    assert agg.drain(now=0.0) == []
    agg.add(batch(0, "a 1", "b 1"), now=0.0)
    agg.add(batch(1, "b 2", "a 2", "a 3"), now=0.5)
    assert texts(agg.drain(now=0.6)) == ["[2x ranks 1] a 2..3", "[1] b 2"]
    assert agg.next_deadline() is None
    assert texts(agg.add(batch(2, "a 4"), now=0.7)) == ["[2] a 4"]


@pytest.mark.parametrize("window", [0, -1.0, float("inf"), float("nan")])
def test_window_must_be_positive_and_finite(window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        Aggregator(window)
    agg = Aggregator(1.0)
    with pytest.raises(ValueError, match="window"):
        agg.set_window(window, now=0.0)


def test_live_lines_of_a_batch_keep_its_metadata_and_order() -> None:
    agg = Aggregator(3.0)
    b = batch(4, "a 1", "a 2", "b 1", "c 1", "a 3", "d 1", time=9.5, partial=True)
    out = agg.add(b, now=0.0)
    # New kinds print at once; consecutive ones share one LogLines; the last line is partial.
    assert out == [
        LogLines.of(4, "stdout", ("a 1",), "host0", 1004, 9.5, False),
        LogLines.of(4, "stdout", ("b 1", "c 1"), "host0", 1004, 9.5, False),
        LogLines.of(4, "stdout", ("d 1",), "host0", 1004, 9.5, True),
    ]


def test_partial_line_and_its_rest_are_never_held() -> None:
    agg = Aggregator(3.0)
    agg.add(batch(0, "Epoch 1: 10%", "50%"), now=0.0)
    out = agg.add(batch(0, "Epoch 1: 20%", "Epoch 1: 3", partial=True), now=0.1)
    assert live_lines(out) == ["Epoch 1: 3"]
    assert out[-1].partial  # type: ignore[union-attr]
    # "0%" ends the partial line: printed live although its kind ("<num>%") was seen.
    out = agg.add(batch(0, "0%", "Epoch 1: 40%", "60%"), now=0.2)
    assert live_lines(out) == ["0%"]
    assert texts(agg.drain(now=0.3)) == ["[2x ranks 0] Epoch 1: 20..40%", "[0] 60%"]


def test_stdout_and_stderr_never_mix() -> None:
    agg = Aggregator(3.0)
    agg.add(batch(0, "warn 1"), now=0.0)
    out = agg.add(batch(1, "warn 2", stream="stderr"), now=0.1)
    assert texts(out) == ["[1] warn 2"]  # new kind on stderr although seen on stdout
    agg.add(batch(2, "warn 3"), now=0.2)
    agg.add(batch(3, "warn 4", stream="stderr"), now=0.3)
    agg.add(batch(4, "warn 5", stream="stderr"), now=0.4)
    out = agg.drain(now=0.5)
    assert [(o.stream, format_output(o)) for o in out] == [
        ("stdout", "[2] warn 3"),
        ("stderr", "[ranks 3-4] warn 4..5"),
    ]


def test_default_mode_collapses_a_ranks_own_repeats() -> None:
    agg = Aggregator(3.0)
    assert live_lines(agg.add(batch(0, "x 1", "x 2", "x 3"), now=0.0)) == ["x 1"]
    assert texts(agg.drain(now=0.1)) == ["[2x ranks 0] x 2..3"]


# -- spreads -----------------------------------------------------------------------------


def summary_of(*lines: str) -> str:
    """What the window shows for ``lines`` from ranks 0, 1, ...: the held ones' group line."""
    agg = Aggregator(3.0)
    for rank, line in enumerate(lines):
        agg.add(batch(rank, line), now=0.0)
    (out,) = agg.drain(now=0.0)
    return format_output(out)


@pytest.mark.parametrize(
    ("lines", "shown"),
    [
        # The first line of a kind prints live; the spread covers the held ones after it.
        (["loss 0.5", "loss 0.4290", "loss 0.4100", "loss 0.43"], "loss 0.4100..0.43"),
        (["v 7", "v 7", "v 7"], "v 7"),
        (["v 1.0", "v 1.00", "v 1"], "v 1.00"),
        (["v -3", "v -10", "v 2"], "v -10..2"),
        (["lr 3e-4", "lr 1e-3", "lr 2e-5"], "lr 2e-5..1e-3"),
        (["n 99", "n 100", "n 1000000000000000000001"], "n 100..1000000000000000000001"),
        (["p 0x1", "p 0x2", "p 0x3"], "p {0x2|0x3}"),
        (["p 0x1", "p 0x2", "p 0x3", "p 0x2", "p 0x4"], "p {0x2|0x3|0x4}"),
        (["p 0x1", "p 0xa", "p 0xb", "p 0xc", "p 0xd", "p 0xe"], "p {0xa|0xb|0xc|+2 more}"),
        (
            ["t 10:00:00", "t 10:00:01", "t 10:00:01", "t 10:00:02", "t 09:59:59", "t 10:00:03"],
            "t 09:59:59..10:00:03",
        ),
        (["torch 2.3.1", "torch 2.1.0", "torch 2.10.2"], "torch {2.1.0|2.10.2}"),
    ],
)
def test_group_text_shows_the_spread_of_each_field(lines: list[str], shown: str) -> None:
    assert summary_of(*lines).split("] ", 1)[1] == shown


def test_a_large_group_shows_exact_values_and_count() -> None:
    agg = Aggregator(3.0)
    total = 40_000
    values = [(i * 7919) % total for i in range(total)]
    for start in range(0, total, 250):
        chunk = [f"step {v:05d} of run" for v in values[start : start + 250]]
        agg.add(batch(start // 250 % 64, *chunk), now=0.0)
    (out,) = agg.drain(now=0.0)
    assert isinstance(out, GroupLine)
    assert out.count == total - 1
    assert out.ranks == tuple(range(64)) and out.ranks_text == "0-63"
    held = values[1:]  # the first line printed live
    assert out.text == f"step {min(held):05d}..{max(held):05d} of run"


def test_kinds_beyond_the_bound_print_live() -> None:
    agg = Aggregator(3.0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        f"kind {letters[i % 26]}{letters[i // 26 % 26]}{letters[i // 676]}"
        for i in range(MAX_KINDS + 3)
    ]
    for w in words:  # every kind is new: printed live
        assert live_lines(agg.add(batch(0, w), now=0.0)) == [w]
    # A repeat of each: the first MAX_KINDS kinds are tracked, so their repeats are held; the
    # kinds beyond the bound were not, so theirs print live again.
    assert live_lines(agg.add(batch(1, *words), now=0.0)) == words[MAX_KINDS:]
    assert texts(agg.drain(now=0.0)) == [f"[1] {w}" for w in words[:MAX_KINDS]]
    # The bound is per window: in the next one a kind is tracked again.
    assert live_lines(agg.add(batch(2, words[-1]), now=0.0)) == [words[-1]]
    assert agg.add(batch(3, words[-1]), now=0.0) == []
    assert texts(agg.drain(now=0.0)) == [f"[3] {words[-1]}"]


def test_a_newline_inside_a_given_line_makes_two_lines_each_counted_once() -> None:
    # A chunk is bytes joined by "\n": a "line" holding "\n" is two lines, each classified,
    # printed or counted on its own, exactly once.
    first, second = batch(0, "a 1", "b\n1", "a 2"), batch(1, "b\n2", "a 3")
    assert first.lines == ("a 1", "b", "1", "a 2") and second.lines == ("b", "2", "a 3")
    agg = Aggregator(3.0)
    assert live_lines(agg.add(first, now=0.0)) == ["a 1", "b", "1"]
    assert agg.add(second, now=0.0) == []
    assert texts(agg.drain(now=0.0)) == ["[ranks 0-1] a 2..3", "[1] b", "[1] 2"]


def test_repeated_blocks_are_counted_exactly() -> None:
    # "3 step lines, then a timing line", repeated: one batch measured as repeated blocks.
    block = ["step 1 loss 0.5", "step 2 loss 0.6", "step 3 loss 0.7", "time 1.5s"]
    agg = Aggregator(3.0)
    agg.add(batch(0, "step 9 loss 0.1", "time 9.9s"), now=0.0)
    lines = block * 40 + ["step 4 loss 0.8"]
    assert agg.add(batch(1, *lines), now=0.0) == []
    assert texts(agg.drain(now=0.0)) == [
        "[121x ranks 1] step 1..4 loss 0.5..0.8",
        "[40x ranks 1] time 1.5s",
    ]


# -- against a per-line model ------------------------------------------------------------


@attrs.define
class _RefGroup:
    live_rank: int
    held: list[tuple[LogLines, int]] = attrs.field(factory=list)


def _ref_spread(kind: str, pairs: list[tuple[str, int]]) -> str:
    """The documented rendering of one field, written plainly (see ``_spread``)."""
    values = [v for v, _ in pairs]
    ranks = {r for _, r in pairs}
    if all(v == values[0] for v in values):
        return values[0]
    if kind == "num":
        if len(ranks) > 1 and all(v == str(r) for v, r in pairs):
            return "{rank}"
        lo = min(map(float, values))
        hi = max(map(float, values))
        first_lo = next(v for v in values if float(v) == lo)
        first_hi = next(v for v in values if float(v) == hi)
        return first_lo if lo == hi else f"{first_lo}..{first_hi}"
    if kind == "time":
        key = lambda v: (len(v), v)  # noqa: E731
        return f"{min(values, key=key)}..{max(values, key=key)}"
    if kind == "bar":
        return min(values, key=lambda v: int(v.strip().split("%")[0]))
    if len(ranks) > 1:
        forms = None
        for v, r in pairs:
            mine = [(v[:m.start()], v[m.end():])
                    for m in re.finditer(rf"(?<!\d){r}(?!\d)", v)]
            forms = mine if forms is None else [f for f in forms if f in mine]
        if forms:
            return forms[0][0] + "{rank}" + forms[0][1]
    distinct = list(dict.fromkeys(values))
    if len(distinct) <= 4:
        return "{" + "|".join(distinct) + "}"
    return "{" + "|".join(distinct[:3]) + f"|+{len(distinct) - 3} more}}"


class ReferenceAggregator:
    """The documented semantics, one line at a time, with exact spreads (for small inputs)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.deadline: float | None = None
        self.open_time = 0.0
        self.groups: dict[tuple[str, str], _RefGroup] = {}
        self.continued: set[tuple[int, str]] = set()

    def close(self) -> list[Output]:
        out: list[Output] = []
        for (stream, _), g in self.groups.items():
            if len(g.held) == 1:
                b, i = g.held[0]
                out.append(LogLines.of(b.rank, b.stream, (b.lines[i],), b.hostname, b.pid, b.time))
            elif g.held:
                out.append(self.group_line(stream, g))  # type: ignore[arg-type]
        self.groups = {}
        self.deadline = None
        return out

    @staticmethod
    def group_line(stream: Stream, g: _RefGroup) -> GroupLine:
        fields: list[list[tuple[str, int]]] = []
        parts: list[str] = []
        kinds: list[str] = []
        for b, i in g.held:
            clean = _ANSI.sub("", b.lines[i])
            template, spans = _parse(clean)
            if not fields:
                fields = [[] for _ in spans]
                kinds = list(template.types)
                parts = list(template.parts)
            for f, (start, end) in zip(fields, spans, strict=True):
                f.append((clean[start:end], b.rank))
        shown = [_ref_spread(kind, values) for kind, values in zip(kinds, fields, strict=True)]
        text = parts[0] + "".join(s + p for s, p in zip(shown, parts[1:], strict=True))
        ranks = tuple(sorted({b.rank for b, _ in g.held}))
        times = [b.time for b, _ in g.held]
        return GroupLine(
            stream, text, len(g.held), ranks, fold_ranks(ranks), min(times), max(times)
        )

    def expire(self, now: float) -> list[Output]:
        return self.close() if self.deadline is not None and now >= self.deadline else []

    def set_window(self, window: float, now: float) -> list[Output]:
        self.window = window
        if self.deadline is not None:
            self.deadline = self.open_time + window
        return self.expire(now)

    def drain(self, now: float) -> list[Output]:
        return self.close()

    def add(self, b: LogLines, now: float) -> list[Output]:
        out = self.expire(now)
        n = len(b.lines)
        live = []
        key = (b.rank, b.stream)
        for i, line in enumerate(b.lines):
            if (i == 0 and key in self.continued) or (i == n - 1 and b.partial):
                live.append(i)
                continue
            if self.deadline is None:
                self.open_time, self.deadline = now, now + self.window
            kind = (b.stream, template_of(line))
            g = self.groups.get(kind)
            if g is None:
                if len(self.groups) >= MAX_KINDS:
                    live.append(i)
                    continue
                self.groups[kind] = _RefGroup(b.rank)
                live.append(i)
            else:
                g.held.append((b, i))
        if n:
            if b.partial:
                self.continued.add(key)
            else:
                self.continued.discard(key)
        runs: list[list[int]] = []
        for i in live:
            if runs and runs[-1][-1] == i - 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for r in runs:
            out.append(
                LogLines.of(
                    b.rank,
                    b.stream,
                    b.lines[r[0] : r[-1] + 1],
                    b.hostname,
                    b.pid,
                    b.time,
                    b.partial and r[-1] == n - 1,
                )
            )
        return out


_word = st.sampled_from(["step", "loss", "ok", "x", "", " ", "warn:", "[", "]", "0x"])
_num = st.one_of(
    st.integers(0, 9).map(str),  # same width: shapes repeat, blocks are found
    st.integers(-200, 100_000).map(str),
    st.floats(0, 10, allow_nan=False).map(lambda f: f"{f:.3f}"),
    st.sampled_from(["3e-4", "0x7f3a", "0xbeef", "12:00:01", "2024-01-02"]),
)
_line = st.lists(st.one_of(_word, _num), max_size=5).map(" ".join)
_styled = st.one_of(_line, _line.map(lambda s: f"\x1b[3{len(s) % 8}m{s}\x1b[0m"))


def _runs(min_size: int) -> st.SearchStrategy[list[str]]:
    """Runs and repeated blocks of lines, as real output has them."""
    return st.lists(
        st.tuples(st.lists(_styled, min_size=1, max_size=3), st.integers(1, 6)),
        min_size=min_size,
        max_size=5,
    ).map(lambda parts: [ln for block, times in parts for _ in range(times) for ln in block])


_lines = _runs(0)
_batch = st.builds(
    LogLines.of,  # a chunk holds at least one line
    rank=st.integers(0, 3),
    stream=st.sampled_from(["stdout", "stderr"]),
    lines=_runs(1).map(tuple),
    hostname=st.just("h"),
    pid=st.just(7),
    time=st.floats(0, 100, allow_nan=False),
    partial=st.booleans(),
)
_action = st.one_of(
    st.tuples(st.just("add"), _batch, st.floats(0, 2)),
    st.tuples(st.just("add"), _batch, st.floats(0, 2)),
    st.tuples(st.just("add"), _batch, st.floats(0, 2)),
    st.tuples(st.just("expire"), st.none(), st.floats(0, 4)),
    st.tuples(st.just("set_window"), st.floats(0.5, 5), st.floats(0, 1)),
    st.tuples(st.just("drain"), st.none(), st.floats(0, 1)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_lines, min_size=1, max_size=8), st.booleans())
def test_segments_give_every_line_its_own_shape(batches: list[list[str]], each: bool) -> None:
    # The fast path cuts a batch into runs and repeated blocks, with run-length guesses carried
    # over from earlier batches.  Every line must still be the kind template_of gives it alone,
    # and its fields be read where its own shape has them: the live lines and the summaries
    # (counts, ranks, spreads) are what the per-line model predicts.  One long window, or a
    # window drained after every batch (more lines are then first of their kind, printed live).
    agg = Aggregator(1e9)
    model = ReferenceAggregator(1e9)
    got: list[Output] = []
    want: list[Output] = []
    for n, lines in enumerate(batches):
        if not lines:
            continue
        b = LogLines.of(n % 2, "stdout", lines, time=float(n))
        got += agg.add(b, now=0.0)
        want += model.add(b, now=0.0)
        if each:
            got += agg.drain(now=0.0)
            want += model.drain(now=0.0)
    got += agg.drain(now=0.0)
    want += model.drain(now=0.0)
    assert got == want


def _run(agg: Aggregator | ReferenceAggregator, actions: list) -> list[object]:
    """Apply ``actions``; return every action's outputs and the deadline after it."""
    now = 0.0
    results: list[object] = []
    for name, arg, dt in actions:
        now += dt
        if name == "add":
            results.append(agg.add(arg, now))
        elif name == "expire":
            results.append(agg.expire(now))
        elif name == "set_window":
            results.append(agg.set_window(arg, now))
        else:
            results.append(agg.drain(now))
        deadline = agg.next_deadline() if isinstance(agg, Aggregator) else agg.deadline
        results.append(deadline)
    results.append(agg.drain(now))
    return results


@settings(max_examples=300, deadline=None)
@given(actions=st.lists(_action, max_size=25))
def test_engine_matches_the_per_line_model(actions: list) -> None:
    got = _run(Aggregator(3.0), actions)
    want = _run(ReferenceAggregator(3.0), actions)
    assert got == want


@settings(max_examples=100, deadline=None)
@given(
    actions=st.lists(_action, max_size=40),
    repeat=st.integers(1, 300),
)
def test_every_line_is_shown_once_or_counted_once(actions: list, repeat: int) -> None:
    # Inflate the batches so groups grow large, and tag every line with a unique number
    # (masked, so kinds stay the same) to see that no line is printed twice.
    uid = iter(range(10**9))
    inflated = []
    for name, arg, dt in actions:
        if name == "add":
            lines = [f"{ln} #{next(uid)}" for ln in arg.lines * repeat]
            arg = LogLines.of(
                arg.rank, arg.stream, lines, arg.hostname, arg.pid, arg.time, arg.partial
            )
        inflated.append((name, arg, dt))
    fed = sum(len(arg.lines) for name, arg, _ in inflated if name == "add")
    results = _run(Aggregator(3.0), inflated)
    outputs = [o for step in results if isinstance(step, list) for o in step]
    printed = [ln for o in outputs if isinstance(o, LogLines) for ln in o.lines]
    counted = sum(o.count for o in outputs if isinstance(o, GroupLine))
    assert len(set(printed)) == len(printed)
    assert len(printed) + counted == fed


# -- driven by trio's clock --------------------------------------------------------------


async def test_window_under_trio_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    agg = Aggregator(3.0)
    printed: list[tuple[float, str]] = []

    def emit(outs: list[Output]) -> None:
        printed.extend((trio.current_time(), format_output(o)) for o in outs)

    async def expirer() -> None:
        for _ in range(100):  # bounded: a broken expire() must fail the test, not hang it
            deadline = agg.next_deadline()
            if deadline is None:
                await trio.sleep(0.5)
            else:
                await trio.sleep_until(deadline)
                emit(agg.expire(trio.current_time()))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(expirer)
        for i in range(8):
            emit(agg.add(batch(i % 4, f"step {i}"), trio.current_time()))
            await trio.sleep(1.0)
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    assert [(round(t - start, 6), text) for t, text in printed] == [
        (0.0, "[0] step 0"),
        (3.0, "[ranks 1-2] step {rank}"),  # rank 1 printed 1, rank 2 printed 2
        (3.0, "[3] step 3"),
        (6.0, "[ranks 0-1] step 4..5"),
        (6.0, "[2] step 6"),
        (9.0, "[3] step 7"),
    ]


def _dp_levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@given(st.text("abc0 ", max_size=30), st.text("abcd1 ", max_size=30))
def test_bit_parallel_levenshtein_matches_the_textbook_one(a: str, b: str) -> None:
    assert levenshtein(a, b) == _dp_levenshtein(a, b)


def test_progress_bars_fold_to_the_least_advanced_state():
    agg = Aggregator(3.0)
    states = [(0, " 10%|█         | 3/30"), (1, " 20%|██        | 6/30"),
              (2, " 57%|█████▋    | 17/30"), (3, "100%|##########| 30/30")]
    out = []
    for i, (rank, bar) in enumerate(states):
        out += agg.add(LogLines.of(rank, "stderr", (f"epoch 0 rank {rank}: {bar}",), time=i / 2),
                       i / 2)
    out += agg.expire(10.0)
    assert [type(o).__name__ for o in out] == ["LogLines", "GroupLine"]
    group = out[1]
    assert group.count == 3 and group.ranks_text == "1-3"
    # Never a bar fuller than a rank's own: rank 1's is the least advanced.
    assert group.text == "epoch 0 rank {rank}:  20%|██        | 6..30/30"


def _tb(rank: int) -> list[str]:
    return ["Traceback (most recent call last):",
            f'  File "/job/train.py", line {16 + rank}, in <module>',
            "    load()",
            f"ValueError: bad value {rank}"]


def test_tracebacks_stay_whole_in_the_repeats_fold() -> None:
    # Each rank's traceback differs: each is shown whole, as its rank's own lines, never
    # grouped frame by frame ("line 16..18"); a traceback split across chunks stays whole.
    agg = Aggregator(2.0)
    out: list[Output] = []
    for r in range(3):
        out += agg.add(LogLines.of(r, "stderr", ["starting", *_tb(r)[:2]]), 0.1 * r)
    for r in range(3):
        out += agg.add(LogLines.of(r, "stderr", _tb(r)[2:]), 0.5 + 0.1 * r)
    out += agg.drain(1.0)
    blocks = [o for o in out if isinstance(o, LogLines) and o.line_count > 1]
    assert sorted((b.rank, list(b.lines)) for b in blocks) == [(r, _tb(r)) for r in range(3)]
    assert not any(isinstance(o, GroupLine) and ("File" in o.text or "Error" in o.text)
                   for o in out)
    shown = [line for o in out for line in o.text.split("\n")]
    assert shown.count("starting") + sum(o.count - 1 for o in out
                                         if isinstance(o, GroupLine)) == 3


def test_an_open_traceback_is_shown_when_its_rank_goes_quiet_or_exits() -> None:
    agg = Aggregator(30.0)
    out = agg.add(LogLines.of(0, "stderr", _tb(0)[:2]), 0.0)
    assert out == [] and agg.next_deadline() == pytest.approx(0.5)
    out = agg.expire(0.6)
    assert [list(o.lines) for o in out] == [_tb(0)[:2]]
    agg.add(LogLines.of(1, "stderr", _tb(1)[:3]), 1.0)
    out = agg.rank_ended(1, 1.1)
    assert [list(o.lines) for o in out] == [_tb(1)[:3]]
