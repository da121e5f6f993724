"""The aggregation engine: templates, windows, spreads, and how it differs from Monarch's."""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_logmesh.view._aggregate import (
    _ANSI,
    _MASK,
    _TO_ZERO,
    MAX_KINDS,
    SAMPLE_LINES,
    Aggregator,
    _lift,
    _parse,
    fold_ranks,
    template_of,
)
from trio_logmesh.view._records import GroupLine, LogLines, Output, Stream, format_output

from .levenshtein import LevenshteinGrouper, levenshtein


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


# -- template_of -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "template"),
    [
        ("step 12 loss 0.5321 lr 3e-4", "step <num> loss <num> lr <num>"),
        ("loss=-0.5 a-1 1.5e+10", "loss=<num> a-<num> <num>"),
        ("Loading shard 3/16", "Loading shard <num>/<num>"),
        ("rank3 cuda:0 conv2d", "rank<num> cuda:<num> conv<num>d"),
        ("at 0x7f3a2c10 and 0X1F", "at <hex> and <hex>"),
        ("3x3 conv", "<hex> conv"),
        ("sha e3b0c44298fc1c14 word deadbeef", "sha <hex> word deadbeef"),
        ("12345678 is a number", "<num> is a number"),
        ("id 1b4e28ba-2fa1-11d2-883f-0016d3cca427 done", "id <uuid> done"),
        ("2024-11-23T15:31:58.123Z start", "<time> start"),
        ("2024-11-23 15:31:58,001 INFO x", "<time> INFO x"),
        ("I1123 15:31:58.123456 x.cpp:12]", "I<num> <time> x.cpp:<num>]"),
        ("took 0:00:05 or 12:34", "took <time> or <num>:<num>"),
        ("\x1b[1;32mok\x1b[0m 5", "ok <num>"),
        ("\x1b]0;title\x07plain", "plain"),
        ("no fields here", "no fields here"),
        ("", ""),
    ],
)
def test_template_of_masks_variable_fields(line: str, template: str) -> None:
    assert template_of(line) == template


_token = st.sampled_from(
    ["0", "7", "19", "2024", "-", ":", ".", ",", " ", "x", "X", "a", "f", "e", "T", "Z", "+"]
    + ["2024-01-02", "12:34:56", "0x7f", "deadbeef", "1b4e28ba-2fa1-11d2-883f-0016d3cca427"]
)


@given(st.one_of(st.text(), st.lists(_token, max_size=30).map("".join)))
def test_template_keeps_no_digit_and_ignores_digit_values(line: str) -> None:
    t = template_of(line)
    assert not re.search(r"[0-9]", t)
    # Masking the shape (digits -> 0) gives what masking the line itself gives, so one cached
    # shape stands for every line with digits in the same places.
    assert _parse(_ANSI.sub("", line))[0].text == t
    assert template_of(re.sub(r"[0-9]", "7", line)) == t


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
        ("stderr", "[2x ranks 3-4] warn 4..5"),
    ]


def test_across_ranks_only_never_collapses_a_ranks_own_repeats() -> None:
    agg = Aggregator(3.0, across_ranks_only=True)
    assert agg.across_ranks_only
    assert live_lines(agg.add(batch(0, "x 1", "x 2", "x 3"), now=0.0)) == ["x 1", "x 2", "x 3"]
    assert live_lines(agg.add(batch(1, "x 4", "x 5"), now=0.1)) == ["x 5"]
    assert live_lines(agg.add(batch(2, "y 1", "x 6", "x 7"), now=0.2)) == ["y 1", "x 7"]
    assert live_lines(agg.add(batch(1, "x 8"), now=0.3)) == ["x 8"]
    assert texts(agg.drain(now=0.4)) == ["[2x ranks 1-2] x 4..6"]


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
        (["p 0x1", "p 0x2", "p 0x3"], "p 0x2|0x3"),
        (["p 0x1", "p 0x2", "p 0x3", "p 0x2", "p 0x4"], "p 0x2|0x3|0x4"),
        (["p 0x1", "p 0xa", "p 0xb", "p 0xc", "p 0xd"], "p 0xa…"),
        (
            ["t 10:00:00", "t 10:00:01", "t 10:00:01", "t 10:00:02", "t 09:59:59", "t 10:00:03"],
            "t 10:00:01…",
        ),
        (
            [
                "id 1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                "id 00000000-0000-0000-0000-000000000000",
                "id ffffffff-ffff-ffff-ffff-ffffffffffff",
            ],
            "id 00000000-0000-0000-0000-000000000000|ffffffff-ffff-ffff-ffff-ffffffffffff",
        ),
    ],
)
def test_group_text_shows_the_spread_of_each_field(lines: list[str], shown: str) -> None:
    assert summary_of(*lines).split("] ", 1)[1] == shown


def test_large_group_keeps_bounded_sample_but_exact_count() -> None:
    agg = Aggregator(3.0)
    total = 40_000
    values = [(i * 7919) % total for i in range(total)]
    for start in range(0, total, 250):
        chunk = [f"step {v:05d} of run" for v in values[start : start + 250]]
        agg.add(batch(start // 250 % 64, *chunk), now=0.0)
    (out,) = agg.drain(now=0.0)
    assert isinstance(out, GroupLine)
    # Counts and ranks stay exact however many lines the group holds.
    assert out.count == total - 1
    assert out.ranks == tuple(range(64)) and out.ranks_text == "0-63"
    # The spread says it comes from every k-th line, with k making that SAMPLE_LINES to
    # 2 * SAMPLE_LINES - 1 lines: the sample is bounded (that it is exactly every k-th held
    # line is test_sample_is_every_stride_th_held_line's business).
    m = re.fullmatch(r"step (\d{5})\.\.(\d{5}) of run \[spread of 1 in (\d+) lines\]", out.text)
    assert m, out.text
    lo, hi, stride = int(m[1]), int(m[2]), int(m[3])
    assert stride == sample_stride(total - 1) == 128
    assert SAMPLE_LINES <= -(-(total - 1) // stride) < 2 * SAMPLE_LINES
    assert 0 <= lo < 200 and total - 200 < hi < total  # a systematic sample reaches the ends


def sample_stride(held: int) -> int:
    """The documented k for a group of ``held`` lines: 1 while ``held < 2 * SAMPLE_LINES``, else
    the power of two leaving ``SAMPLE_LINES`` to ``2 * SAMPLE_LINES - 1`` lines of every k-th."""
    k = 1
    while -(-held // k) >= 2 * SAMPLE_LINES:
        k *= 2
    return k


PROBES = 16


@settings(max_examples=50, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 700), min_size=1, max_size=30),
    other_every=st.integers(2, 60),
    data=st.data(),
)
def test_sample_is_every_stride_th_held_line(
    sizes: list[int], other_every: int, data: st.DataObject
) -> None:
    # The spreads must come from held lines 0, k, 2k, ... (k = sample_stride(held)) and no
    # others; other kinds interleave so the held lines come in many segments.  Held line i
    # reads "v <i> r <i mod k> p <probe fields>", and the group line shows:
    # * "v 0..<last multiple of k>": the sample starts at the first and reaches the last pick;
    # * "r 000": every sampled line is a pick (any other one would show "000..<i mod k>");
    # * probe field j is 5 except 0 on one pick and 9 on another: "0..9" shows both were
    #   sampled (the probes are drawn among all picks and those next to batch boundaries).
    held = sum(sizes)
    k = sample_stride(held)
    picks = range(0, held, k)
    probed: dict[int, dict[int, str]] = {}
    if held > 1:
        starts = [sum(sizes[:n]) for n in range(1, len(sizes))]
        # The last pick before each cut between batches and the first one after it.
        near_cuts = sorted(
            {p for s in starts for p in ((s - 1) // k * k, -(-s // k) * k) if p < held}
        )
        where = st.sampled_from(picks)
        if near_cuts:
            where = st.one_of(where, st.sampled_from(near_cuts))
        for j in range(PROBES):
            low, high = data.draw(st.lists(where, min_size=2, max_size=2, unique=True))
            probed.setdefault(low, {})[j] = "0"
            probed.setdefault(high, {})[j] = "9"
    plain = " ".join("5" * PROBES)

    def held_line(i: int) -> str:
        probes = plain
        if i in probed:
            probes = " ".join(probed[i].get(j, "5") for j in range(PROBES))
        return f"v {i} r {i % k:03d} p {probes}"

    agg = Aggregator(3.0)
    first = f"v -1 r 000 p {plain}"
    assert live_lines(agg.add(batch(0, first, "other 0"), now=0.0)) == [first, "other 0"]
    i = 0
    for size in sizes:
        lines = []
        for j in range(size):
            lines.append(held_line(i))
            i += 1
            if j % other_every == other_every - 1:
                lines.append(f"other {j}")
        agg.add(batch(1, *lines), now=0.0)
    outs = [o for o in agg.drain(now=0.0) if "other" not in format_output(o)]
    if held == 1:
        assert outs == [batch(1, held_line(0))]
        return
    (out,) = outs
    assert isinstance(out, GroupLine)
    assert out.count == held and out.ranks == (1,)
    suffix = f" [spread of 1 in {k} lines]" if k > 1 else ""
    assert out.text == f"v 0..{picks[-1]} r 000 p {' '.join(['0..9'] * PROBES)}{suffix}"


def test_spread_is_exact_below_the_sample_bound() -> None:
    agg = Aggregator(3.0)
    n = 2 * SAMPLE_LINES - 1
    agg.add(batch(0, "v 5000"), now=0.0)
    for i in range(n):
        agg.add(batch(1, f"v {1000 + (i * 37) % n}"), now=0.0)
    (out,) = agg.drain(now=0.0)
    assert format_output(out) == f"[{n}x ranks 1] v 1000..{1000 + n - 1}"


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
    assert texts(agg.drain(now=0.0)) == ["[2x ranks 0-1] a 2..3", "[1] b", "[1] 2"]


def test_repeated_blocks_are_counted_and_sampled_exactly() -> None:
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


class ReferenceAggregator:
    """The documented semantics, one line at a time, with exact spreads (for small inputs)."""

    def __init__(self, window: float, across_ranks_only: bool = False) -> None:
        self.window = window
        self.across = across_ranks_only
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
        fields: list[list[str]] = []
        parts: list[str] = []
        kinds: list[str] = []
        # Past the bound the spreads come from every k-th held line (the documented sample).
        k = sample_stride(len(g.held))
        for b, i in g.held[::k]:
            clean = _ANSI.sub("", b.lines[i])
            ms = list(_MASK.finditer(clean.translate(_TO_ZERO)))
            if not fields:
                fields = [[] for _ in ms]
                kinds = [m.lastgroup or "" for m in ms]
                ends = [0] + [m.end() for m in ms]
                starts = [m.start() for m in ms] + [len(clean)]
                parts = [clean[e:s] for e, s in zip(ends, starts, strict=True)]
            for f, m in zip(fields, ms, strict=True):
                f.append(clean[m.start() : m.end()])
        shown = []
        for kind, values in zip(kinds, fields, strict=True):
            if kind == "num":
                lo = min(values, key=float)
                hi = max(values, key=float)
                shown.append(values[0] if float(lo) == float(hi) else f"{lo}..{hi}")
            elif kind == "bar":
                shown.append(values[-1])
            else:
                distinct = list(dict.fromkeys(values))
                shown.append("|".join(distinct) if len(distinct) <= 3 else distinct[0] + "…")
        text = parts[0] + "".join(s + p for s, p in zip(shown, parts[1:], strict=True))
        if k > 1:
            text += f" [spread of 1 in {k} lines]"
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
            elif self.across and (b.rank == g.live_rank or b.rank in {hb.rank for hb, _ in g.held}):
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


@given(
    unit=st.text("ab\n", min_size=1, max_size=4),
    copies=st.integers(0, 300),
    tail=st.text("abc\n", max_size=6),
    limit=st.sampled_from([4, 64, 1 << 13]),
)
def test_lift_counts_the_copies_exactly(unit: str, copies: int, tail: str, limit: int) -> None:
    s = "xy" + unit * copies + tail
    want = copies
    while s.startswith(unit, 2 + want * len(unit)):
        want += 1  # the tail may continue the run
    assert _lift(s, 2, [unit], len(s), limit) == (want, 2 + want * len(unit))


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
@given(actions=st.lists(_action, max_size=25), across=st.booleans())
def test_engine_matches_the_per_line_model(actions: list, across: bool) -> None:
    got = _run(Aggregator(3.0, across_ranks_only=across), actions)
    want = _run(ReferenceAggregator(3.0, across_ranks_only=across), actions)
    assert got == want


@settings(max_examples=100, deadline=None)
@given(
    actions=st.lists(_action, max_size=40),
    across=st.booleans(),
    repeat=st.integers(1, 300),
)
def test_every_line_is_shown_once_or_counted_once(actions: list, across: bool, repeat: int) -> None:
    # Inflate the batches so groups pass the sample bound, and tag every line with a unique
    # number (masked, so kinds stay the same) to see that no line is printed twice.
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
    results = _run(Aggregator(3.0, across_ranks_only=across), inflated)
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
        (3.0, "[2x ranks 1-2] step 1..2"),
        (3.0, "[3] step 3"),
        (6.0, "[2x ranks 0-1] step 4..5"),
        (6.0, "[2] step 6"),
        (9.0, "[3] step 7"),
    ]


# -- against Monarch's metric ------------------------------------------------------------


def ours(lines: Sequence[tuple[int, str]]) -> list[str]:
    agg = Aggregator(3.0)
    out: list[Output] = []
    for i, (rank, text) in enumerate(lines):
        out += agg.add(batch(rank, text, time=100.0 + i), now=0.0)
    out += agg.drain(now=0.0)
    return texts(out)


def monarch(lines: Sequence[tuple[int, str]]) -> list[str]:
    grouper = LevenshteinGrouper(0.15)
    for _, text in lines:
        grouper.add(text)
    return grouper.flush()


W = "/opt/venv/lib/python3.11/site-packages/torch/nn/modules/module.py:{}: {}Warning: x is old"
G = (
    "[rank{}]:[I1123 15:31:58.{} ProcessGroupNCCL.cpp:1306] [PG 0 Rank {}] "
    "ProcessGroupNCCL initialization options: size: 64"
)

TABLE: list[tuple[str, list[tuple[int, str]], list[str], list[str]]] = [
    (
        # Short lines: one differing character is already 17% of the line for Monarch.
        "short tagged lines",
        [(0, "[0] ok"), (1, "[1] ok"), (2, "[2] ok")],
        ["[0] [0] ok", "[2x ranks 1-2] [1..2] ok"],
        [
            "[0] ok [1 similar log lines]",
            "[1] ok [1 similar log lines]",
            "[2] ok [1 similar log lines]",
        ],
    ),
    (
        "identical lines",
        [(0, "ok"), (1, "ok"), (2, "ok"), (3, "ok")],
        ["[0] ok", "[3x ranks 1-3] ok"],
        ["ok [4 similar log lines]"],
    ),
    (
        # Short training lines: Monarch splits what is one kind.
        "short training losses",
        [(0, "step 1 loss 0.53"), (1, "step 2 loss 0.61"), (2, "step 3 loss 0.47")],
        ["[0] step 1 loss 0.53", "[2x ranks 1-2] step 2..3 loss 0.47..0.61"],
        [
            "step 1 loss 0.53 [1 similar log lines]",
            "step 2 loss 0.61 [1 similar log lines]",
            "step 3 loss 0.47 [1 similar log lines]",
        ],
    ),
    (
        # Longer training lines: Monarch merges them but shows only the first values.
        "training losses",
        [
            (r, f"step 12 loss {v} lr 3e-4")
            for r, v in enumerate(["0.5321", "0.5298", "0.4100", "0.6012"])
        ],
        ["[0] step 12 loss 0.5321 lr 3e-4", "[3x ranks 1-3] step 12 loss 0.4100..0.6012 lr 3e-4"],
        ["step 12 loss 0.5321 lr 3e-4 [4 similar log lines]"],
    ),
    (
        "loading shards",
        [(0, "Loading shard 1/4"), (1, "Loading shard 1/4"), (2, "Loading shard 2/4")],
        ["[0] Loading shard 1/4", "[2x ranks 1-2] Loading shard 1..2/4"],
        ["Loading shard 1/4 [3 similar log lines]"],
    ),
    (
        # A FutureWarning is not a UserWarning; Monarch hides it in the UserWarning group.
        "python warnings",
        [
            (0, W.format(1501, "User")),
            (1, W.format(1501, "User")),
            (2, W.format(1511, "User")),
            (3, W.format(1501, "Future")),
        ],
        [
            f"[0] {W.format(1501, 'User')}",
            f"[3] {W.format(1501, 'Future')}",
            f"[2x ranks 1-2] {W.format('1501..1511', 'User')}",
        ],
        [f"{W.format(1501, 'User')} [4 similar log lines]"],
    ),
    (
        "traceback lines",
        [
            (0, "Traceback (most recent call last):"),
            (1, "Traceback (most recent call last):"),
            (0, '  File "/work/train.py", line 42, in <module>'),
            (1, '  File "/work/train.py", line 57, in <module>'),
            (2, '  File "/work/train.py", line 42, in <module>'),
        ],
        [
            "[0] Traceback (most recent call last):",
            '[0]   File "/work/train.py", line 42, in <module>',
            "[1] Traceback (most recent call last):",
            '[2x ranks 1-2]   File "/work/train.py", line 42..57, in <module>',
        ],
        [
            "Traceback (most recent call last): [2 similar log lines]",
            '  File "/work/train.py", line 42, in <module> [3 similar log lines]',
        ],
    ),
    (
        "NCCL channel lines",
        [
            (0, "NCCL INFO Channel 00/02 :    0   1   2   3"),
            (1, "NCCL INFO Channel 00/02 :    0   1   2   3"),
            (2, "NCCL INFO Channel 01/02 :    0   1   2   3"),
        ],
        [
            "[0] NCCL INFO Channel 00/02 :    0   1   2   3",
            "[2x ranks 1-2] NCCL INFO Channel 00..01/02 :    0   1   2   3",
        ],
        ["NCCL INFO Channel 00/02 :    0   1   2   3 [3 similar log lines]"],
    ),
    (
        "glog lines from ProcessGroupNCCL",
        [(r, G.format(r, us, r)) for r, us in enumerate(["123456", "124001", "125310", "125999"])],
        [
            f"[0] {G.format(0, '123456', 0)}",
            "[3x ranks 1-3] [rank1..3]:[I1123 15:31:58.124001|15:31:58.125310|15:31:58.125999 "
            "ProcessGroupNCCL.cpp:1306] [PG 0 Rank 1..3] ProcessGroupNCCL initialization options: "
            "size: 64",
        ],
        [f"{G.format(0, '123456', 0)} [4 similar log lines]"],
    ),
    (
        # Addresses: Monarch splits by how many hex digits happen to differ.
        "hex addresses",
        [
            (r, f"<Tensor at {a}>")
            for r, a in enumerate(["0x7f3a2c10", "0x7f3a2c58", "0x7f9b1e40", "0x7f3a2d00"])
        ],
        [
            "[0] <Tensor at 0x7f3a2c10>",
            "[3x ranks 1-3] <Tensor at 0x7f3a2c58|0x7f9b1e40|0x7f3a2d00>",
        ],
        [
            "<Tensor at 0x7f3a2c10> [3 similar log lines]",
            "<Tensor at 0x7f9b1e40> [1 similar log lines]",
        ],
    ),
]


@pytest.mark.parametrize(
    ("lines", "want_ours", "want_monarch"),
    [pytest.param(lines, o, m, id=name) for name, lines, o, m in TABLE],
)
def test_grouping_table_ours_against_monarch(
    lines: list[tuple[int, str]], want_ours: list[str], want_monarch: list[str]
) -> None:
    assert ours(lines) == want_ours
    assert monarch(lines) == want_monarch


def test_monarch_metric_differences_pinned() -> None:
    d = LevenshteinGrouper.distance
    assert d("[0] ok", "[1] ok") == pytest.approx(1 / 6)  # >= 0.15: never merged
    assert d("step 1 loss 0.53", "step 2 loss 0.61") == pytest.approx(3 / 16)
    assert d("Loading shard 1/4", "Loading shard 2/4") == pytest.approx(1 / 17)
    assert template_of("[0] ok") == template_of("[1] ok")
    assert template_of("step 1 loss 0.53") == template_of("step 2 loss 0.61")
    # Monarch compares with the first line of a group only: the order of lines decides.
    a, b, c = "iteration 1000 done.", "iteration 1099 done.", "iteration 1199 done."
    assert d(a, b) < 0.15 and d(b, c) < 0.15 and d(a, c) >= 0.15
    assert len(monarch([(0, a), (0, b), (0, c)])) == 2
    assert len(monarch([(0, b), (0, a), (0, c)])) == 1


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


def test_progress_bars_of_all_ranks_are_one_kind_showing_the_latest_state():
    agg = Aggregator(3.0)
    states = [(0, " 10%|█         | 3/30"), (1, " 20%|██        | 6/30"),
              (2, " 57%|█████▋    | 17/30"), (3, "100%|##########| 30/30")]
    out = []
    for i, (rank, bar) in enumerate(states):
        out += agg.add(LogLines.of(rank, "stderr", (f"epoch 0 rank {rank}:{bar}",), time=i / 2),
                       i / 2)
    out += agg.expire(10.0)
    assert [type(o).__name__ for o in out] == ["LogLines", "GroupLine"]
    group = out[1]
    assert group.count == 3 and group.ranks_text == "1-3"
    assert group.text == "epoch 0 rank 1..3:100%|##########| 6..30/30"
