"""RankOutbox without processes: order, cursor, confirmation, replay, both policies, on_ready."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_logmesh.host._outbox import RankOutbox
from trio_logmesh.protocol._frames import FRAME_OVERHEAD, Exit, Log, Mark, frame_size

ALL = 10**9  # take() everything

#: 36 bytes, two lines: a Log frame of it counts 100 bytes.
TWO_LINES = b"x" * 16 + b"\n" + b"y" * 18 + b"\n"
SIZE = len(TWO_LINES) + FRAME_OVERHEAD
assert SIZE == 100


def _seqs(frames) -> list[int]:
    return [fr.seq for fr in frames]


class Calls:
    """An on_ready callback that counts its calls and what the outbox looked like then."""

    def __init__(self) -> None:
        self.count = 0
        self.unsent_seen: list[bool] = []
        self.box: RankOutbox | None = None

    def __call__(self) -> None:
        self.count += 1
        assert self.box is not None
        self.unsent_seen.append(self.box.has_unsent)


def _box(**kw) -> tuple[RankOutbox, Calls]:
    calls = Calls()
    box = RankOutbox(on_ready=calls, **kw)
    calls.box = box
    return box, calls


# -- order, cursor, confirmation --------------------------------------------------------------
def test_frames_are_numbered_in_append_order_across_streams():
    box = RankOutbox()
    assert not box.has_unsent and box.held_bytes == 0
    box.append_log(0, b"a\n", False, False)
    box.append_log(1, b"err\n", False, False)
    box.append_mark(7)
    box.append_log(0, b"b\nparti", True, False)
    box.append_log(1, b"42%", True, True)
    box.append_exit(-9)
    assert box.has_unsent
    expected = [
        Log(1, 0, b"a\n"),
        Log(2, 1, b"err\n"),
        Mark(3, 7),
        Log(4, 0, b"b\nparti", 0, True, False),
        Log(5, 1, b"42%", 0, True, True),
        Exit(6, -9),
    ]
    assert box.held_bytes == sum(frame_size(fr) for fr in expected)
    assert box.take(ALL) == expected
    assert not box.has_unsent
    assert box.take(ALL) == []
    assert box.held_bytes == sum(frame_size(fr) for fr in expected)  # taken is not confirmed


def test_take_returns_about_max_bytes_and_moves_the_cursor():
    box = RankOutbox()
    for _ in range(6):
        box.append_log(0, TWO_LINES, False, False)
    # Frames are added while under max_bytes: at least one, at most one past the limit.
    assert _seqs(box.take(1)) == [1]
    assert _seqs(box.take(2 * SIZE)) == [2, 3]
    assert _seqs(box.take(SIZE + 1)) == [4, 5]
    assert box.has_unsent
    assert _seqs(box.take(ALL)) == [6]
    assert not box.has_unsent
    assert box.take(ALL) == []


def test_take_hands_out_new_frames_after_the_cursor_only():
    box = RankOutbox()
    box.append_log(0, b"a\n", False, False)
    assert _seqs(box.take(ALL)) == [1]
    box.append_mark(1)
    box.append_log(1, b"b\n", False, False)
    assert _seqs(box.take(ALL)) == [2, 3]


def test_take_with_no_room_loses_nothing():
    box = RankOutbox()
    for _ in range(3):
        box.append_log(0, TWO_LINES, False, False)
    first = box.take(0)
    assert _seqs(first) == [1]  # at least one frame, whatever the size asked
    assert _seqs(first + box.take(ALL)) == [1, 2, 3]


def test_confirm_frees_exactly_the_confirmed_frames():
    box = RankOutbox()
    box.append_log(0, TWO_LINES, False, False)
    box.append_mark(1)
    box.append_log(1, b"z\n", False, False)
    box.take(ALL)
    assert box.held_bytes == SIZE + FRAME_OVERHEAD + 2 + FRAME_OVERHEAD
    box.confirm(1)
    assert box.held_bytes == FRAME_OVERHEAD + 2 + FRAME_OVERHEAD
    box.confirm(1)  # again: nothing more
    assert box.held_bytes == FRAME_OVERHEAD + 2 + FRAME_OVERHEAD
    box.confirm(3)
    assert box.held_bytes == 0
    assert not box.has_unsent
    box.append_log(0, b"next\n", False, False)  # numbering goes on
    assert box.take(ALL) == [Log(4, 0, b"next\n")]


def test_rewind_replays_from_the_first_unconfirmed_frame():
    box = RankOutbox()
    for i in range(5):
        box.append_log(i % 2, b"%d\n" % i, False, False)
    first = box.take(ALL)
    assert _seqs(first) == [1, 2, 3, 4, 5]
    box.confirm(2)
    box.rewind()
    assert box.has_unsent
    assert box.take(ALL) == first[2:]
    # A view that took part of them and confirmed nothing more: the same frames again.
    box.rewind()
    assert _seqs(box.take(1)) == [3]
    box.rewind()
    assert box.take(ALL) == first[2:]
    box.confirm(5)
    box.rewind()
    assert not box.has_unsent
    assert box.take(ALL) == []


def test_rewind_gives_a_new_view_the_exit_even_when_it_was_confirmed():
    box, calls = _box()
    box.append_log(0, b"a\n", False, False)  # 1
    box.append_exit(2)  # 2
    box.append_mark(9)  # 3: a barrier after the end
    assert _seqs(box.take(ALL)) == [1, 2, 3]
    box.confirm(3)
    assert calls.count == 1
    box.rewind()
    assert calls.count == 2
    assert box.take(ALL) == [Exit(2, 2)]
    box.rewind()  # not confirmed by this view yet: once, not twice
    assert box.take(ALL) == [Exit(2, 2)]
    box.confirm(2)
    box.append_mark(10)  # 4: numbering goes on
    assert box.take(ALL) == [Mark(4, 10)]
    box.confirm(4)
    box.rewind()  # the next view again
    assert box.take(ALL) == [Exit(2, 2)]


def test_rewind_before_anything_was_taken_changes_nothing():
    box = RankOutbox()
    box.append_log(0, b"a\n", False, False)
    box.append_log(0, b"b\n", False, False)
    box.rewind()
    assert _seqs(box.take(ALL)) == [1, 2]


# -- the drop policy --------------------------------------------------------------------------
def test_drop_evicts_the_oldest_logs_and_counts_their_lines():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    for _ in range(5):
        box.append_log(0, TWO_LINES, False, False)
    assert box.held_bytes == 3 * SIZE
    assert box.take(ALL) == [
        Log(3, 0, TWO_LINES, 0),
        Log(4, 0, TWO_LINES, 2),  # its arrival evicted frame 1
        Log(5, 0, TWO_LINES, 4),  # and frame 2
    ]


def test_drop_keeps_marks_and_the_exit():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    box.append_log(0, TWO_LINES, False, False)  # 1: 100
    box.append_mark(1)  # 2: 164
    box.append_log(0, TWO_LINES, False, False)  # 3: 264
    box.append_log(0, TWO_LINES, False, False)  # 4: evicts 1 -> 264
    box.append_log(0, TWO_LINES, False, False)  # 5: evicts the mark -> 300
    box.append_exit(0)  # 6: never evicts
    assert box.take(ALL) == [
        Mark(2, 1),
        Log(3, 0, TWO_LINES, 0),
        Log(4, 0, TWO_LINES, 2),
        Log(5, 0, TWO_LINES, 2),  # the mark is no line
        Exit(6, 0),
    ]
    assert not box.has_unsent


def test_drop_delivers_an_evicted_mark_after_the_frames_taken_before_it():
    box = RankOutbox(limit_bytes=2 * SIZE, policy="drop")
    box.append_log(0, TWO_LINES, False, False)  # 1
    assert _seqs(box.take(ALL)) == [1]
    box.append_mark(5)  # 2
    for _ in range(3):
        box.append_log(1, TWO_LINES, False, False)  # 3, 4, 5: push out 1, 2, 3 in turn
    assert box.take(ALL) == [
        Mark(2, 5),
        Log(4, 1, TWO_LINES, 0),  # what 3 and 4 pushed out was frame 1 (taken) and the mark
        Log(5, 1, TWO_LINES, 2),
    ]
    # An evicted mark stays unconfirmed until confirmed: a new view gets it again.
    box.rewind()
    assert _seqs(box.take(ALL)) == [2, 4, 5]
    box.confirm(2)
    box.rewind()
    assert _seqs(box.take(ALL)) == [4, 5]


def test_drop_counts_lines_of_both_streams_together():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    box.append_log(0, TWO_LINES, False, False)  # 1 out
    box.append_log(1, b"e" * 35 + b"\n", False, False)  # 2 err, 1 line, 100 bytes
    box.append_log(0, TWO_LINES, False, False)  # 3 out
    box.append_log(1, TWO_LINES, False, False)  # 4 err: evicts 1 (out, 2 lines)
    box.append_log(0, TWO_LINES, False, False)  # 5 out: evicts 2 (err, 1 line)
    box.append_log(1, TWO_LINES, False, False)  # 6 err: evicts 3 (out, 2 lines)
    box.append_log(0, TWO_LINES, False, False)  # 7 out: evicts 4 (err, 2 lines)
    assert box.take(ALL) == [
        Log(5, 0, TWO_LINES, 3),
        Log(6, 1, TWO_LINES, 5),
        Log(7, 0, TWO_LINES, 7),
    ]


def test_drop_does_not_count_frames_already_taken():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    for _ in range(3):
        box.append_log(0, TWO_LINES, False, False)
    assert _seqs(box.take(1)) == [1]  # taken, not confirmed
    box.append_log(0, TWO_LINES, False, False)  # 4: evicts 1, which the view has
    box.append_log(0, TWO_LINES, False, False)  # 5: evicts 2, which it has not
    assert box.take(ALL) == [
        Log(3, 0, TWO_LINES, 0),
        Log(4, 0, TWO_LINES, 0),
        Log(5, 0, TWO_LINES, 2),
    ]


def test_drop_after_everything_was_taken_counts_nothing():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    for _ in range(3):
        box.append_log(0, TWO_LINES, False, False)
    box.take(ALL)
    for _ in range(3):
        box.append_log(0, TWO_LINES, False, False)
    assert box.take(ALL) == [Log(seq, 0, TWO_LINES, 0) for seq in (4, 5, 6)]
    assert box.held_bytes == 3 * SIZE


def test_drops_caused_by_the_other_stream_are_reported():
    box = RankOutbox(limit_bytes=3 * SIZE, policy="drop")
    box.append_log(0, TWO_LINES, False, False)  # 1
    box.append_log(0, TWO_LINES, False, False)  # 2
    box.append_log(1, TWO_LINES, False, False)  # 3
    box.append_log(1, TWO_LINES, False, False)  # 4: evicts 1 (stdout, 2 lines, never taken)
    box.append_exit(0)
    frames = box.take(ALL)
    assert _seqs(frames) == [2, 3, 4, 5]
    # Frame 1 (stdout) was pushed out by frame 4 (stderr), the rank's last: it says so.
    assert [fr.dropped for fr in frames if isinstance(fr, Log)] == [0, 0, 2]


def test_drop_counts_frames_a_rewind_gave_back():
    # After a rewind the new view has taken nothing: evicting an unconfirmed frame drops it.
    box = RankOutbox(limit_bytes=2 * SIZE, policy="drop")
    box.append_log(0, TWO_LINES, False, False)
    box.append_log(0, TWO_LINES, False, False)
    box.take(ALL)
    box.rewind()
    box.append_log(0, TWO_LINES, False, False)  # evicts 1
    assert box.take(ALL) == [Log(2, 0, TWO_LINES, 0), Log(3, 0, TWO_LINES, 2)]


def test_switching_to_drop_evicts_at_the_next_log():
    box = RankOutbox(limit_bytes=2 * SIZE, policy="block")
    for _ in range(4):
        box.append_log(0, TWO_LINES, False, False)
    assert box.held_bytes == 4 * SIZE  # block never drops
    box.set_policy("drop")
    box.append_log(0, TWO_LINES, False, False)  # 5: evicts 1, 2, 3
    assert box.held_bytes == 2 * SIZE
    assert box.take(ALL) == [Log(4, 0, TWO_LINES, 0), Log(5, 0, TWO_LINES, 6)]


logs = st.tuples(
    st.just("log"), st.integers(0, 1), st.integers(0, 3), st.integers(0, 40), st.booleans()
)
ops = st.lists(
    st.one_of(
        logs,
        st.tuples(st.just("mark"), st.integers(0, 1000)),
        st.tuples(st.just("take"), st.integers(1, 400)),
        st.tuples(st.just("confirm")),
    ),
    max_size=60,
)


@given(st.integers(2 * FRAME_OVERHEAD, 700), ops)
def test_drop_loses_no_mark_and_accounts_for_every_line(limit, script):
    """Any producer/consumer interleaving: each line is either taken or counted dropped."""
    box = RankOutbox(limit_bytes=limit, policy="drop")
    appended: list[Log | Mark | Exit] = []  # what went in, by seq - 1
    taken: list[Log | Mark | Exit] = []
    for op in script:
        if op[0] == "log":
            _, stream, nlines, pad, partial = op
            data = b"p" * pad + b"\n" * nlines
            box.append_log(stream, data, partial, False)
            appended.append(Log(len(appended) + 1, stream, data, 0, partial))
        elif op[0] == "mark":
            box.append_mark(op[1])
            appended.append(Mark(len(appended) + 1, op[1]))
        elif op[0] == "take":
            taken.extend(box.take(op[1]))
        elif taken:
            box.confirm(taken[-1].seq)
    # The end of a rank: its last Log frame carries every drop (evictions happen only as a
    # Log frame arrives, and it is never the one evicted).
    box.append_log(0, b"", False, False)
    appended.append(Log(len(appended) + 1, 0, b""))
    box.append_exit(3)
    appended.append(Exit(len(appended) + 1, 3))
    taken.extend(box.take(ALL))
    assert not box.has_unsent

    seqs = _seqs(taken)
    assert seqs == sorted(set(seqs))  # in order, each once
    for fr in taken:  # each is what was appended, with its count of dropped lines
        want = appended[fr.seq - 1]
        if isinstance(fr, Log):
            want = Log(want.seq, want.stream, want.data, fr.dropped, want.partial)
        assert fr == want
    assert [fr for fr in appended if not isinstance(fr, Log)] == [
        fr for fr in taken if not isinstance(fr, Log)
    ]
    got = set(seqs)
    lost = [fr for fr in appended if isinstance(fr, Log) and fr.seq not in got]
    delivered = [fr for fr in taken if isinstance(fr, Log)]
    counts = [fr.dropped for fr in delivered]
    assert counts == sorted(counts)
    for fr in delivered:  # never more than what was lost before it
        assert fr.dropped <= sum(x.data.count(b"\n") for x in lost if x.seq < fr.seq)
    assert delivered[-1].seq == appended[-2].seq  # the closing empty Log got through
    assert delivered[-1].dropped == sum(fr.data.count(b"\n") for fr in lost)
    box.confirm(seqs[-1])
    assert box.held_bytes == 0


@given(st.lists(st.one_of(st.integers(1, 300), st.none()), max_size=40), st.integers(1, 30))
def test_rewind_replays_exactly_the_unconfirmed_frames(script, n):
    """Without drops: after any takes and confirms, a rewind replays every unconfirmed frame."""
    box = RankOutbox(limit_bytes=10, policy="block")
    for i in range(n):
        if i % 3 == 2:
            box.append_mark(i)
        else:
            box.append_log(i % 2, b"%d\n" % i, False, False)
    taken: list[Log | Mark | Exit] = []
    confirmed = 0
    for step in script:
        if step is None:
            if taken:
                confirmed = taken[-1].seq
                box.confirm(confirmed)
        else:
            taken.extend(box.take(step))
    box.rewind()
    assert _seqs(box.take(ALL)) == list(range(confirmed + 1, n + 1))


# -- the block policy -------------------------------------------------------------------------
async def _start_waiter(nursery: trio.Nursery, box: RankOutbox, done: list[str], name: str):
    async def waiter() -> None:
        await box.wait_room()
        done.append(name)

    nursery.start_soon(waiter)


async def test_wait_room_returns_at_once_with_room_or_with_drop():
    box = RankOutbox(limit_bytes=2 * SIZE, policy="block")
    box.append_log(0, TWO_LINES, False, False)
    box.append_log(0, TWO_LINES, False, False)  # exactly the limit: still room
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await _start_waiter(nursery, box, done, "block")
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["block"]
        box.set_policy("drop")
        box.append_mark(1)  # over the limit, but the drop policy never blocks
        assert box.held_bytes > box.limit_bytes
        await _start_waiter(nursery, box, done, "drop")
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["block", "drop"]


async def test_block_waits_until_confirm_makes_room():
    box = RankOutbox(limit_bytes=2 * SIZE, policy="block")
    for _ in range(4):
        box.append_log(0, TWO_LINES, False, False)
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await _start_waiter(nursery, box, done, "stdout")
        await _start_waiter(nursery, box, done, "stderr")
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert _seqs(box.take(ALL)) == [1, 2, 3, 4]
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # taking is not confirming
        box.confirm(1)  # 3 * SIZE held: still over
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        box.confirm(2)  # 2 * SIZE: room
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(done) == ["stderr", "stdout"]
    assert box.held_bytes == 2 * SIZE


async def test_block_waiters_are_released_by_switching_to_drop():
    box = RankOutbox(limit_bytes=SIZE, policy="block")
    for _ in range(3):
        box.append_log(0, TWO_LINES, False, False)
    done: list[str] = []
    async with trio.open_nursery() as nursery:
        await _start_waiter(nursery, box, done, "reader")
        await trio.testing.wait_all_tasks_blocked()
        box.set_policy("block")  # no change: it waits on
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        box.set_policy("drop")
        await trio.testing.wait_all_tasks_blocked()
        assert done == ["reader"]
    assert box.policy == "drop"


async def test_block_never_drops():
    box = RankOutbox(limit_bytes=SIZE, policy="block")
    for _ in range(5):
        box.append_log(1, TWO_LINES, False, False)
    assert box.held_bytes == 5 * SIZE
    assert box.take(ALL) == [Log(seq, 1, TWO_LINES, 0) for seq in range(1, 6)]


# -- on_ready ---------------------------------------------------------------------------------
def test_on_ready_is_called_when_frames_follow_a_caught_up_cursor():
    box, calls = _box()
    box.append_log(0, b"a\n", False, False)  # 1: the cursor had caught up
    assert calls.count == 1
    box.append_log(1, b"b\n", False, False)  # 2: frames were waiting already
    box.append_mark(1)  # 3
    assert calls.count == 1
    assert _seqs(box.take(2)) == [1]  # not caught up
    box.append_log(0, b"c\n", False, False)  # 4
    assert calls.count == 1
    assert _seqs(box.take(ALL)) == [2, 3, 4]  # caught up
    assert calls.count == 1
    box.append_mark(2)  # 5
    assert calls.count == 2
    box.append_exit(0)  # 6
    assert calls.count == 2
    box.take(ALL)
    box.confirm(6)
    assert calls.count == 2
    assert calls.unsent_seen == [True, True]  # called once the frames can be taken


def test_on_ready_is_called_for_marks_and_exits_too():
    box, calls = _box()
    box.append_mark(1)
    assert calls.count == 1
    box.take(ALL)
    box.append_exit(0)
    assert calls.count == 2


def test_on_ready_is_called_after_a_rewind_with_something_to_replay():
    box, calls = _box()
    for _ in range(3):
        box.append_log(0, b"a\n", False, False)
    box.take(ALL)
    box.confirm(1)
    assert calls.count == 1
    box.rewind()  # 2 and 3 to replay
    assert calls.count == 2
    box.take(ALL)
    box.confirm(3)
    box.rewind()  # nothing to replay
    assert calls.count == 2
    assert calls.unsent_seen == [True, True]
    box.append_log(0, b"a\n", False, False)
    assert calls.count == 3


def test_on_ready_after_drops():
    box, calls = _box(limit_bytes=2 * SIZE, policy="drop")
    for _ in range(4):
        box.append_log(0, TWO_LINES, False, False)
    assert calls.count == 1  # evictions while the consumer was away call nothing
    assert box.take(ALL) == [Log(3, 0, TWO_LINES, 2), Log(4, 0, TWO_LINES, 4)]
    box.append_log(0, TWO_LINES, False, False)  # evicts 3, which was taken
    assert calls.count == 2
    assert box.take(ALL) == [Log(5, 0, TWO_LINES, 4)]


def test_no_on_ready_is_fine():
    box = RankOutbox()
    box.append_log(0, b"a\n", False, False)
    box.take(ALL)
    box.rewind()
    assert _seqs(box.take(ALL)) == [1]
