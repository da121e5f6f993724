"""The line splitter: any bytes, any chunking -- the same lines, nothing lost or repeated."""

from __future__ import annotations

import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_logmesh.host._lines import LineSplitter, human_size, truncation_marker
from trio_logmesh.view._decode import clean_line


def run(data: bytes, cuts: list[int], splitter: LineSplitter, idle_every: int = 0):
    out: list[tuple[bytes, bool]] = []
    pos = i = 0
    now = 0.0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out.extend(splitter.feed(data[pos : pos + step], now))
        pos += step
        i += 1
        now += 0.1
        if idle_every and i % idle_every == 0:
            out.extend(splitter.take_partial())
    out.extend(splitter.take_partial())
    return out


no_cr = st.binary(max_size=2000).map(lambda b: b.replace(b"\r", b"."))


@given(no_cr, st.lists(st.integers(1, 300), min_size=1))
def test_any_chunking_gives_back_every_byte_in_order(data, cuts):
    out = run(data, cuts, LineSplitter(max_line=10**9))
    assert b"".join(d for d, _ in out) == data
    complete = b"".join(d for d, p in out if not p)
    assert complete.count(b"\n") == data.count(b"\n")
    assert all(d.endswith(b"\n") for d, p in out if not p)
    assert all(b"\n" not in d for d, p in out if p)


@given(no_cr, st.lists(st.integers(1, 300), min_size=1), st.integers(1, 5))
def test_partials_taken_at_idle_or_barrier_lose_nothing(data, cuts, idle_every):
    out = run(data, cuts, LineSplitter(max_line=10**9), idle_every)
    assert b"".join(d for d, _ in out) == data


@settings(max_examples=200)
@given(
    st.lists(st.text(alphabet="ab \r", max_size=40), max_size=30),
    st.lists(st.integers(1, 50), min_size=1),
)
def test_progress_lines_end_in_their_final_state(lines, cuts):
    data = "".join(ln + "\n" for ln in lines).encode()
    out = run(data, cuts, LineSplitter(max_line=10**9))
    complete = b"".join(d for d, p in out if not p).decode()
    shown = [clean_line(ln) for ln in complete.split("\n")[:-1]]
    assert shown == [clean_line(ln) for ln in lines]
    # progress updates in between are states of the line, never text from another line
    for d, partial in out:
        if partial:
            assert b"\n" not in d and b"\r" not in d


def test_progress_updates_are_throttled():
    s = LineSplitter(progress_interval=0.25)
    out = []
    for i in range(100):  # a bar redrawn every 10 ms for a second
        out.extend(s.feed(f"\r{i}%".encode(), i * 0.01))
    out.extend(s.feed(b"\r100%\n", 1.0))
    partials = [d for d, p in out if p]
    assert partials == [b"0%", b"25%", b"50%", b"75%"]
    final, partial = out[-1]
    assert not partial and clean_line(final.decode()[:-1]) == "100%"
    assert len(final) < 20  # only the latest state was kept, not 100 redraws


def test_crlf_line_ends():
    s = LineSplitter()
    out = s.feed(b"one\r\ntwo\r", 0) + s.feed(b"\nthree\r\n", 1)
    text = b"".join(d for d, _ in out).decode()
    assert [clean_line(x) for x in text.split("\n")[:-1]] == ["one", "two", "three"]


def test_huge_line_is_cut_with_a_visible_marker_and_bounded_memory():
    s = LineSplitter(max_line=1000)
    out = s.feed(b"x" * 600, 0)
    chunk = b"y" * 65536
    tracemalloc.start()
    try:
        for _ in range(1000):  # 64 MB more of the same line, in 64 KiB chunks
            out += s.feed(chunk, 0)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 16 * 1024  # what the splitter keeps of the line stays at max_line
    assert peak < 200 * 1024  # never more than a chunk or two in flight
    out += s.feed(b"z\nnext\n", 0)
    assert len(out) == 2
    line, partial = out[0]
    assert not partial
    assert line == b"x" * 600 + b"y" * 400 + truncation_marker(65536 * 1000 - 400 + 1) + b"\n"
    assert b"[truncated 62.5 MiB]" in line
    assert out[1] == (b"next\n", False)


def test_human_size():
    assert human_size(10) == "10 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(67_000_000) == "63.9 MiB"


def test_a_bar_ending_in_cr_shows_its_latest_state_when_idle():
    s = LineSplitter()
    assert s.feed(b"10%\r", 0) == []
    assert s.take_partial() == [(b"10%", 2)]  # a bar state, whole
    s = LineSplitter()
    s.feed(b"a\r10%\r", 0)
    assert s.feed(b"20%\r", 0.01) == []  # throttled
    assert s.take_partial() == [(b"20%", 2)]  # the latest state, not nothing


def test_a_bar_state_is_handed_on_once() -> None:
    s = LineSplitter()
    assert s.feed(b"\rprogress 1/8", 0) == [(b"progress 1/8", 2)]
    assert not s.pending and s.take_partial() == []  # shown already: not again when idle
    assert s.feed(b"\rprogress 2/8", 0.1) == []  # throttled
    assert s.pending and s.take_partial() == [(b"progress 2/8", 2)]
    assert s.take_partial() == []
    # The newline ends the line in its final state; nothing is left over.
    assert s.feed(b"\n", 0.2) == [(b"\rprogress 2/8\n", 0)]
    assert not s.pending and s.take_partial() == []


@given(st.lists(st.integers(0, 400), min_size=1, max_size=30), st.integers(80, 200))
def test_long_lines_arriving_whole_are_cut_exactly_like_one_by_one(lengths, max_line):
    from trio_logmesh.host._lines import cut_long_lines

    lines = [bytes([97 + i % 26]) * n for i, n in enumerate(lengths)]
    run = b"".join(ln + b"\n" for ln in lines)
    want = b"".join(
        (ln[:max_line] + truncation_marker(len(ln) - max_line) if len(ln) > max_line else ln)
        + b"\n" for ln in lines
    )
    assert cut_long_lines(run, max_line) == want
    # and through the splitter, whatever the chunking of the reads
    s = LineSplitter(max_line=max_line)
    got = b"".join(d for d, _ in s.feed(run, 0))
    assert got == want
