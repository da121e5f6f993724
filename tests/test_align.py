"""The default fold: the ranks' output lined up, one line per step, nothing invented."""

from __future__ import annotations

import random
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_logmesh.view._align import CALM_LINES, FLOOD_LINES, Aligner
from trio_logmesh.view._blocks import BLOCK_IDLE
from trio_logmesh.view._records import GroupLine, LogLines, Notice, Output, Stream, format_output

from .foldcheck import check

CORPUS = Path(__file__).parent / "corpus"


def batch(rank: int, *lines: str, stream: Stream = "stdout", partial: bool = False,
          progress: bool = False) -> LogLines:
    return LogLines.of(rank, stream, lines, "h", 100 + rank, 0.0, partial, progress)


def texts(out: list[Output]) -> list[str]:
    return [format_output(o) for o in out]


def feed(agg: Aligner, items: list[tuple[float, LogLines]]) -> list[Output]:
    """Feed timed batches the way the client does: expire when due, then add; drain."""
    out: list[Output] = []
    now = 0.0
    for now, b in items:
        deadline = agg.next_deadline()
        while deadline is not None and deadline <= now:
            out += agg.expire(deadline)
            deadline = agg.next_deadline()
        out += agg.add(b, now)
    out += agg.drain(now)
    return out


def test_ranks_line_up_one_line_per_step() -> None:
    agg = Aligner(3.0, range(4))
    out: list[Output] = []
    for step in range(3):
        for r in range(4):
            out += agg.add(batch(r, f"step {step} loss 0.4{r} rank {r} on cuda:{r}"), 0.1 * step)
    assert texts(out) == [
        f"[ranks 0-3] step {s} loss 0.40..0.43 rank {{rank}} on cuda:{{rank}}" for s in range(3)
    ]
    assert all(isinstance(o, GroupLine) and o.count == 4 for o in out)


def test_identical_lines_show_once_with_their_ranks() -> None:
    agg = Aligner(3.0, range(3))
    out = agg.add(batch(0, "ready"), 0) + agg.add(batch(1, "ready"), 0) + agg.add(batch(2, "ready"), 0)
    assert texts(out) == ["[ranks 0-2] ready"]


def test_a_line_waits_at_most_the_window_for_its_peers() -> None:
    agg = Aligner(2.0, range(4))
    assert agg.add(batch(0, "saving checkpoint 10"), 1.0) == []  # waits for ranks 1-3
    assert agg.next_deadline() == 3.0
    assert agg.expire(2.9) == []
    assert texts(agg.expire(3.0)) == ["[0] saving checkpoint 10"]
    # Only rank 0 printed it in time: from now on it is not waited for.
    assert texts(agg.add(batch(0, "saving checkpoint 20"), 5.0)) == ["[0] saving checkpoint 20"]
    # A rank printing it again is expected again.
    assert agg.add(batch(1, "saving checkpoint 30"), 6.0) == []
    assert texts(agg.add(batch(0, "saving checkpoint 30"), 6.5)) == [
        "[ranks 0-1] saving checkpoint 30"]


def test_each_rank_keeps_its_own_order() -> None:
    agg = Aligner(2.0, range(2))
    out = feed(agg, [(0.0, batch(0, "a 1", "b 1")), (0.1, batch(1, "b 2", "a 2")),
                     (0.2, batch(0, "c")), (0.3, batch(1, "c"))])
    printed = [["a 1", "b 1", "c"], ["b 2", "a 2", "c"]]
    stats = check(out, printed)
    assert not stats.violations and stats.lines == 6
    # The cycle (a before b in rank 0, b before a in rank 1) breaks at the window, not later.
    assert texts(out)[-1] == "[ranks 0-1] c"


def test_a_slow_rank_is_not_waited_for_past_the_window() -> None:
    agg = Aligner(1.0, range(3))
    out = agg.add(batch(0, "step 1"), 0.0) + agg.add(batch(1, "step 1"), 0.1)
    assert out == []
    out = agg.expire(1.0)
    assert texts(out) == ["[ranks 0-1] step 1"]
    out = agg.add(batch(2, "step 1"), 5.0)  # late: its own line, after the window
    assert out == [] and agg.next_deadline() == 6.0
    assert texts(agg.expire(6.0)) == ["[2] step 1"]


def test_an_exited_rank_is_not_waited_for_and_its_notice_follows_its_lines() -> None:
    agg = Aligner(5.0, range(3))
    assert agg.add(batch(0, "epoch 1 done"), 0.0) == []
    assert agg.add(batch(2, "epoch 1 done"), 0.0) == []
    notice = Notice("stderr", "rank 2 exited with code 1", 2)
    assert agg.add(batch(2, "bye from 2"), 0.1) == []
    out = agg.rank_ended(1, 0.2)  # rank 1 will never print it
    assert texts(out) == ["[ranks 0,2] epoch 1 done"]
    # Rank 0 may still print its "bye": rank 2's waits (at most the window), and its exit
    # notice waits behind it.
    assert agg.rank_ended(2, 0.3, [notice]) == []
    out = agg.expire(5.1)
    assert texts(out) == ["[2] bye from 2", "[logmesh] rank 2 exited with code 1"]


TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "/job/train.py", line 12, in <module>',
    "    load()",
    '  File "/job/train.py", line 5, in load',
    '    raise KeyError("shard")',
    "KeyError: 'shard'",
]


def test_identical_tracebacks_show_once_and_different_ones_whole() -> None:
    agg = Aligner(2.0, range(4))
    other = [*TRACEBACK[:-1], "KeyError: 'label'"]
    items = [(0.0, batch(r, *TRACEBACK, stream="stderr")) for r in range(3)]
    items.append((0.1, batch(3, *other, stream="stderr")))
    out = feed(agg, items)
    assert len(out) == 2
    same, odd = out
    assert isinstance(same, GroupLine) and same.ranks_text == "0-2"
    assert same.text == "\n".join(TRACEBACK)
    assert format_output(same).split("\n")[1] == '[ranks 0-2]   File "/job/train.py", line 12, in <module>'
    assert isinstance(odd, LogLines) and list(odd.lines) == other
    assert not check(out, [TRACEBACK] * 3 + [other]).violations


def test_a_traceback_split_across_chunks_stays_whole() -> None:
    agg = Aligner(2.0, [0])
    out = agg.add(batch(0, *TRACEBACK[:3], stream="stderr"), 0.0)
    out += agg.add(batch(0, *TRACEBACK[3:], stream="stderr"), 0.1)
    assert out == []  # the exception line may still be followed by a chained traceback
    assert agg.next_deadline() == pytest.approx(0.1 + BLOCK_IDLE)
    out = agg.expire(0.1 + BLOCK_IDLE)
    assert [list(o.lines) for o in out if isinstance(o, LogLines)] == [TRACEBACK]


def test_chained_tracebacks_warnings_and_log_records_are_blocks() -> None:
    chained = [*TRACEBACK, "", "The above exception was the direct cause of the following exception:",
               "", *TRACEBACK[:-1], "RuntimeError: no data"]
    warning = ["/x/sched.py:143: UserWarning: step order", "  warnings.warn('step order')"]
    record = ["ERROR root: loader died", *TRACEBACK]
    agg = Aligner(2.0, [0])
    out = agg.add(batch(0, *chained, "next", *warning, *record, "done", stream="stderr"), 0.0)
    out += agg.drain(0.0)
    assert [o.line_count for o in out] == [len(chained), 1, 2, len(record), 1]


def test_a_stdout_line_before_a_block_on_stderr_keeps_its_place() -> None:
    agg = Aligner(2.0, [0])
    out = agg.add(batch(0, "ERROR root: crashed"), 0.0)  # may get continuation lines
    out += agg.add(batch(0, "Traceback (most recent call last):", stream="stderr"), 0.1)
    out += agg.drain(0.2)
    assert [o.stream for o in out] == ["stdout", "stderr"]


def test_stdout_and_stderr_arriving_in_either_order_still_line_up() -> None:
    # A block-buffered stdout reaches the view after stderr's log records: rank 1's INFO
    # record (stderr) arrives before its "step" lines (stdout).  That proves nothing about
    # its stdout, so its "step 9" is still waited for, and neither line waits for the other.
    agg = Aligner(2.0, range(2))
    out: list[Output] = []
    out += agg.add(batch(0, "step 9 loss 0.5", "step 10 loss 0.4"), 0.00)
    out += agg.add(batch(0, "INFO checkpoint at step 10", stream="stderr"), 0.01)
    out += agg.add(batch(1, "INFO checkpoint at step 10", stream="stderr"), 0.02)
    out += agg.add(batch(1, "step 9 loss 0.6", "step 10 loss 0.3"), 0.03)
    out += agg.expire(1.0)  # a log record may get continuation lines: 0.5 s; the window: 2 s
    assert texts(out) == ["[ranks 0-1] step 9 loss 0.5..0.6",
                          "[ranks 0-1] step 10 loss 0.3..0.4",
                          "[ranks 0-1] INFO checkpoint at step 10"]


def test_a_line_shown_without_a_rank_is_not_paired_with_its_next_line() -> None:
    # A flush (or the window) showed step 15 with ranks 0-1 only; ranks 2-3's step 15 comes
    # later: it goes with the other late ranks, and their step 16 with everyone's.
    agg = Aligner(2.0, range(4))
    out: list[Output] = []
    for r in range(4):
        out += agg.add(batch(r, "step 14 loss 0.9"), 0.0)
    out += agg.add(batch(0, "step 15 loss 0.5"), 0.0) + agg.add(batch(1, "step 15 loss 0.6"), 0.0)
    out += agg.drain(0.1)
    out += agg.add(batch(0, "step 16 loss 0.4"), 0.2) + agg.add(batch(1, "step 16 loss 0.3"), 0.2)
    for r in (2, 3):
        out += agg.add(batch(r, f"step 15 loss 0.{r}", f"step 16 loss 0.{r + 5}"), 0.3)
    assert texts(out) == ["[ranks 0-3] step 14 loss 0.9",
                          "[ranks 0-1] step 15 loss 0.5..0.6",
                          "[ranks 2-3] step 15 loss 0.2..0.3",
                          "[ranks 0-3] step 16 loss 0.3..0.8"]
    # The same for ranks that had not printed the kind at all when the flush came.
    agg = Aligner(2.0, range(3))
    out = agg.add(batch(1, "Loading shard 1/4"), 0.0) + agg.drain(0.1)
    out += agg.add(batch(1, "Loading shard 2/4"), 0.2)
    out += agg.add(batch(0, "Loading shard 1/4", "Loading shard 2/4"), 0.3)
    out += agg.add(batch(2, "Loading shard 1/4", "Loading shard 2/4"), 0.3)
    assert texts(out) == ["[1] Loading shard 1/4", "[ranks 0,2] Loading shard 1/4",
                          "[ranks 0-2] Loading shard 2/4"]
    # A rank far behind (past the window) shows its own lines, never folded into later steps.
    agg = Aligner(1.0, range(2))
    out = agg.add(batch(0, "step 0 x 0"), 0.0) + agg.add(batch(1, "step 0 x 0"), 0.0)
    out += agg.add(batch(0, "step 1 x 1", "step 2 x 2", "step 3 x 3"), 0.1)
    out += agg.expire(1.5)
    out += agg.add(batch(1, "step 1 x 9"), 1.6) + agg.expire(5.0)
    assert texts(out) == ["[ranks 0-1] step 0 x 0", "[0] step 1 x 1", "[0] step 2 x 2",
                          "[0] step 3 x 3", "[1] step 1 x 9"]


def test_lines_differing_only_in_trailing_spaces_fold() -> None:
    agg = Aligner(2.0, range(2))  # tqdm pads a bar's last state with spaces
    out = agg.add(batch(0, "epoch 0: 100%|██████████| 30/30 [00:01<00:00, 19.90it/s]  "), 0.0)
    out += agg.add(batch(1, "epoch 0: 100%|██████████| 30/30 [00:01<00:00, 19.87it/s]"), 0.1)
    assert texts(out) == [
        "[ranks 0-1] epoch 0: 100%|██████████| 30/30 [00:01<00:00, 19.87..19.90it/s]"]


def test_in_a_run_over_many_hosts_lines_say_which_host() -> None:
    agg = Aligner(2.0, range(4))
    host = {0: "a/0", 1: "a/0", 2: "b/1", 3: "b/1"}
    out: list[Output] = []
    for r in range(4):
        out += agg.add(attrs.evolve(batch(r, f"step 1 loss 0.{r}"), host=host[r]), 0.0)
    out += agg.add(attrs.evolve(batch(3, "only me"), host="b/1"), 0.1)
    out += agg.add(attrs.evolve(batch(2, "left 1"), host="b/1"), 0.1)
    out += agg.add(attrs.evolve(batch(3, "left 2"), host="b/1"), 0.1)
    out += agg.drain(0.2)
    assert [format_output(o) for o in out] == [
        "[ranks 0-3 on a/0,b/1] step 1 loss 0.0..0.3", "[b/1:3] only me",
        "[ranks 2-3 on b/1] left 1..2"]


def test_a_rank_that_skips_a_step_does_not_shift_the_others() -> None:
    agg = Aligner(2.0, range(4))
    out: list[Output] = []
    for step in range(8):
        for r in range(4):
            if not (r == 1 and step == 3):
                out += agg.add(batch(r, f"step {step} loss 0.{r}{step}"), 0.01 * step)
    out += agg.drain(1.0)
    assert texts(out) == [f"[ranks 0-3] step {s} loss 0.0{s}..0.3{s}" for s in range(3)] + [
        "[ranks 0,2-3] step 3 loss 0.03..0.33"] + [
        f"[ranks 0-3] step {s} loss 0.0{s}..0.3{s}" for s in range(4, 8)]


def test_counters_two_ranks_agree_on_are_not_mixed() -> None:
    # Ranks 1 and 3 print their first "checkpoint at step N" for step 20 (their step-10
    # one looked different); ranks 0 and 2's step-10 line is still waiting: not with it.
    agg = Aligner(2.0, range(4))
    out: list[Output] = []
    for r in (0, 2):
        out += agg.add(batch(r, "30% 9/30 ckpt at step 10", stream="stderr"), 0.0)
    for r in (1, 3):
        out += agg.add(batch(r, "ckpt at step 10", stream="stderr"), 0.0)
        out += agg.add(batch(r, "60% 18/30 ckpt at step 20", stream="stderr"), 0.5)
    for r in (0, 2):
        out += agg.add(batch(r, "60% 18/30 ckpt at step 20", stream="stderr"), 0.6)
    out += agg.drain(1.0)
    shown = texts(out)
    assert "[ranks 0,2] 30% 9/30 ckpt at step 10" in shown
    assert "[ranks 0-3] 60% 18/30 ckpt at step 20" in shown
    assert not any(".." in t for t in shown), shown


def test_progress_states_fold_by_each_ranks_latest_state() -> None:
    agg = Aligner(2.0, range(3))
    bars = {0: " 50%|█████     | 50/100", 1: " 28%|██▊       | 28/100", 2: " 90%|█████████ | 90/100"}
    out: list[Output] = []
    for r, bar in bars.items():
        out += agg.add(batch(r, f"epoch 0: {bar}", stream="stderr", progress=True), 0.1 * r)
    assert out == []
    out = agg.expire(agg.next_deadline())  # type: ignore[arg-type]
    assert texts(out) == ["[ranks 0-2] epoch 0:  28%|██▊       | 28..90/100"]  # never fuller
    # A rank's final line takes it off the board.
    assert agg.add(batch(2, "epoch 0: 100%|██████████| 100/100", stream="stderr"), 2.0) == []
    out = agg.add(batch(0, "epoch 0:  60%|██████    | 60/100", stream="stderr", progress=True), 2.1)
    out += agg.expire(agg.next_deadline())  # type: ignore[arg-type]
    assert texts(out) == ["[ranks 0-1] epoch 0:  28%|██▊       | 28..60/100"]


def test_a_bar_state_does_not_overtake_its_ranks_waiting_line() -> None:
    agg = Aligner(3.0, range(2))
    out = agg.add(batch(0, "epoch 0:  60%|██████    | 18/30 ckpt 20", stream="stderr"), 0.0)
    out += agg.add(batch(0, "epoch 0:  70%|███████   | 21/30", stream="stderr", progress=True),
                   0.1)
    out += agg.expire(1.5)  # the board is due; rank 0's line still waits for rank 1
    assert out == []
    out += agg.add(batch(1, "epoch 0:  60%|██████    | 18/30 ckpt 20", stream="stderr"), 1.6)
    out += agg.expire(agg.next_deadline())  # type: ignore[arg-type]
    assert texts(out) == ["[ranks 0-1] epoch 0:  60%|██████    | 18/30 ckpt 20",
                          "[0] epoch 0:  70%|███████   | 21/30"]


def test_a_bar_state_left_behind_is_not_shown() -> None:
    # tqdm's first state has another shape ("?it/s"); once every rank moved on, that board
    # holds nothing live and shows nothing.  A line that finishes a bar ends its state too.
    agg = Aligner(2.0, range(2))
    first = "epoch 0:   0%|          | 0/30 [00:00<?, ?it/s]"
    out: list[Output] = []
    for r in range(2):
        out += agg.add(batch(r, first, stream="stderr", progress=True), 0.0)
    for r in range(2):
        out += agg.add(batch(r, "epoch 0:  10%|█         | 3/30 [00:00<00:01, 29.8it/s]",
                             stream="stderr", progress=True), 0.3)
    out += agg.add(batch(1, "epoch 0:  10%|█         | 3/30 [00:00<00:01, 29.8it/s]INFO ok",
                         stream="stderr"), 0.4)
    while (deadline := agg.next_deadline()) is not None:
        out += agg.expire(deadline)
    assert texts(out) == ["[0] epoch 0:  10%|█         | 3/30 [00:00<00:01, 29.8it/s]",
                          "[1] epoch 0:  10%|█         | 3/30 [00:00<00:01, 29.8it/s]INFO ok"]


def test_partial_lines_show_as_themselves_in_order() -> None:
    agg = Aligner(2.0, range(2))
    out = agg.add(batch(0, "x 1", "Enter a value: ", partial=True), 0.0)
    assert out == []  # "x 1" waits for rank 1; the prompt waits behind it
    out = agg.add(batch(1, "x 2"), 0.1)
    assert texts(out) == ["[ranks 0-1] x 1..2", "[0] Enter a value: "]
    assert out[1].partial  # type: ignore[union-attr]
    out = agg.add(batch(0, "42", "x 3"), 0.2)
    assert texts(out) == ["[0] 42"]


def test_a_flood_is_shown_unfolded_until_it_calms_down() -> None:
    agg = Aligner(3.0, range(2))
    out = agg.add(batch(0, "hello"), 0.0)
    lines = [f"line {i}" for i in range(FLOOD_LINES + 1)]
    out += agg.add(batch(1, *lines), 0.5)
    notices = [o for o in out if isinstance(o, Notice)]
    assert len(notices) == 1 and "unfolded" in notices[0].text
    assert texts(out)[0] == "[0] hello"  # what was held comes first
    assert out[-1] is not None and isinstance(out[-1], LogLines) and out[-1].line_count == len(lines)
    assert agg.add(batch(0, "more"), 0.9)[0].rank == 0  # still unfolded  # type: ignore[union-attr]
    agg.add(batch(0, "quieter"), 2.5)  # the flood's own stretch was not calm
    out = agg.add(batch(0, "calm"), 4.0)  # the stretch since held fewer than CALM_LINES a second
    assert CALM_LINES < FLOOD_LINES
    assert any(isinstance(o, Notice) and "folding lines again" in o.text for o in out)


def test_many_small_chunks_fast_are_a_flood_too() -> None:
    agg = Aligner(3.0, range(2))
    out: list[Output] = []
    fed: list[list[str]] = [[], []]
    now = 0.0
    for i in range(FLOOD_LINES // 10 + 1):  # 10-line chunks, 20x faster than FLOOD_LINES/s
        now += 10 / (20 * FLOOD_LINES)
        lines = [f"x {i} {j}" for j in range(10)]
        fed[i % 2] += lines
        out += agg.add(batch(i % 2, *lines), now)
        if any(isinstance(o, Notice) for o in out):
            break
    assert any(isinstance(o, Notice) and "unfolded" in o.text for o in out)
    assert now <= 0.26  # judged within a quarter of a second
    stats = check(out + agg.drain(now), fed)  # what was folded before it, and all after
    assert not stats.violations and stats.lines == sum(map(len, fed))


async def test_windows_on_trio_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    agg = Aligner(3.0, range(2))
    printed: list[tuple[float, str]] = []
    start = trio.current_time()

    async def timer() -> None:
        while True:
            deadline = agg.next_deadline()
            await trio.sleep_until(deadline if deadline is not None else trio.current_time() + 1)
            printed.extend((trio.current_time() - start, format_output(o))
                           for o in agg.expire(trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timer)
        for step in range(3):
            printed.extend((trio.current_time() - start, format_output(o))
                           for o in agg.add(batch(0, f"step {step}"), trio.current_time()))
            await trio.sleep(0.5)
            if step != 1:  # rank 1 skips step 1's line
                printed.extend((trio.current_time() - start, format_output(o))
                               for o in agg.add(batch(1, f"step {step}"), trio.current_time()))
            await trio.sleep(1.5)
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert printed == [
        (0.5, "[ranks 0-1] step 0"),
        # Rank 1's "step 2" goes with rank 0's "step 2" (every rank agreed on the step so
        # far), and shows that rank 1 will not print "step 1": that is shown then, alone.
        (4.5, "[0] step 1"),
        (4.5, "[ranks 0-1] step 2"),
    ]


# -- everything printed is accounted for --------------------------------------------------

_value = st.one_of(st.integers(0, 120).map(str), st.floats(0, 5).map(lambda f: f"{f:.3f}"),
                   st.sampled_from(["2.3.1", "2.10.2", "10.0.0.1:29500", "cuda:0", "0,1"]))
_word = st.sampled_from(["step", "loss", "ok", "eval", "saving", "=", "acc:", "[x]"])
_line = st.lists(st.one_of(_word, _value), min_size=1, max_size=5).map(" ".join)


@st.composite
def _job(draw: st.DrawFn) -> tuple[list[list[str]], list[tuple[float, LogLines]]]:
    ranks = draw(st.integers(1, 6))
    script = draw(st.lists(_line, min_size=1, max_size=12))  # what every rank mostly prints
    printed = []
    for _ in range(ranks):
        mine = []
        for line in script:
            if draw(st.integers(0, 9)) == 0:
                continue  # a rank skips a line
            if draw(st.integers(0, 9)) == 0:
                mine.append(draw(_line))  # or prints something of its own
            mine.append(line if draw(st.booleans()) else draw(_line))
        if draw(st.integers(0, 5)) == 0:
            mine += TRACEBACK
        printed.append(mine)
    rng = random.Random(draw(st.integers(0, 2**32)))
    items = []
    at = [0] * ranks
    now = 0.0
    while any(at[r] < len(printed[r]) for r in range(ranks)):
        r = rng.choice([r for r in range(ranks) if at[r] < len(printed[r])])
        n = rng.randint(1, 4)
        lines = printed[r][at[r] : at[r] + n]
        at[r] += len(lines)
        now += rng.choice([0.0, 0.01, 0.3, 1.5, 4.0])
        items.append((now, LogLines.of(r, "stdout", lines, "h", 1, now)))
    return printed, items


@settings(max_examples=300, deadline=None)
@given(_job(), st.sampled_from([0.5, 3.0]))
def test_every_value_shown_was_printed_and_every_line_is_shown(job, window: float) -> None:
    printed, items = job
    out = feed(Aligner(window, range(len(printed))), items)
    stats = check(out, printed)
    assert not stats.violations, stats.violations
    assert stats.lines == sum(map(len, printed))


def _corpus(name: str) -> list[list[str]]:
    files = sorted((CORPUS / name).glob("rank-*.txt"), key=lambda p: int(p.stem.split("-")[1]))
    return [p.read_text(encoding="utf-8").splitlines() for p in files]


def corpus_run(name: str, seed: int = 0, window: float = 3.0) -> tuple[list[list[str]], list[Output]]:
    """Feed a corpus scenario as the ranks would print it: interleaved chunks of 1-6 lines."""
    printed = _corpus(name)
    rng = random.Random(seed)
    at = [0] * len(printed)
    items = []
    now = 0.0
    while any(at[r] < len(lines) for r, lines in enumerate(printed)):
        r = rng.choice([r for r, lines in enumerate(printed) if at[r] < len(lines)])
        lines = printed[r][at[r] : at[r] + rng.randint(1, 6)]
        at[r] += len(lines)
        now += rng.choice([0.0, 0.001, 0.01, 0.05])
        items.append((now, LogLines.of(r, "stdout", lines, "h", 1, now)))
    return printed, feed(Aligner(window, range(len(printed))), items)


@pytest.mark.parametrize("name", ["startup", "training", "evaluation", "failures", "progress"])
@pytest.mark.parametrize("seed", range(5))
def test_corpus_folds_without_inventing_or_losing_anything(name: str, seed: int) -> None:
    printed, out = corpus_run(name, seed)
    stats = check(out, printed)
    assert not stats.violations, stats.violations
    assert stats.lines == sum(map(len, printed))


def test_corpus_reads_as_a_person_expects() -> None:
    _, out = corpus_run("startup")
    shown = texts(out)
    assert "[ranks 0-7] torch {2.3.1|2.1.0|2.10.2}+cu121 python 3.11.7" in shown or \
        "[ranks 0-7] torch {2.3.1+cu121|2.1.0+cu121|2.10.2+cu121} python 3.11.7" in shown
    assert "[ranks 0-7] using device {cuda:0|cuda:1|cuda:2|cuda:3}" in shown
    assert any(s.startswith("[ranks 0-7] CUDA_VISIBLE_DEVICES={0,1,2,3|4,5,6,7}") for s in shown)
    _, out = corpus_run("training")
    steps = [s for s in texts(out) if " step " in s and "loss" in s and "{" not in s]
    assert steps[:3] == [s for s in steps[:3] if s.startswith("[ranks 0-7] step ")]
    _, out = corpus_run("failures")
    blocks = [o for o in out if (isinstance(o, LogLines) and o.line_count > 1)
              or (isinstance(o, GroupLine) and "\n" in o.text)]
    assert any(isinstance(o, GroupLine) and o.ranks_text == "0-3" for o in blocks)
    _, out = corpus_run("progress")
    (bar,) = [s for s in texts(out) if "%|" in s]
    assert bar.startswith("[ranks 0-3] epoch 0:  28%|██▊       | 28..100/100")
