"""The frame codec and the outbox, without processes: any chunking, limits, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_logmesh import _frames as f
from trio_logmesh import _wire as w
from trio_logmesh._forwarder import drop_logs
from trio_logmesh._outbox import RankOutbox

messages = st.one_of(
    st.builds(f.Log, st.integers(0, 2**63), st.integers(0, 1), st.binary(max_size=300),
              st.integers(0, 2**63), st.booleans()),
    st.builds(f.Mark, st.integers(0, 2**63), st.integers(-(2**62), 2**62)),
    st.builds(f.Exit, st.integers(0, 2**63), st.integers(-64, 255)),
    st.builds(f.Heartbeat),
    st.builds(f.Hello, st.sampled_from([w.ROLE_HOST, w.ROLE_CLIENT]),
              st.binary(min_size=16, max_size=16), st.integers(0, 10**6), st.integers(0, 2**63)),
    st.builds(f.Welcome, st.integers(0, 10**6), st.integers(0, 2**31), st.sampled_from([1, 2]),
              st.text(max_size=30)),
    st.builds(f.SetMode, st.booleans()),
    st.builds(f.ForceSyncFlush, st.integers(-(2**62), 2**62)),
    st.builds(f.SetLevel, st.integers(0, 50)),
    st.builds(f.FlushPipes, st.integers(-(2**62), 2**62)),
    st.builds(f.Resume, st.integers(0, 2**63)),
    st.builds(f.Replay, st.integers(0, 2**63)),
    st.builds(f.Reject),
)


@given(st.lists(messages, max_size=20), st.lists(st.integers(1, 50), min_size=1))
def test_any_chunking_decodes_the_same_messages(msgs, cuts):
    data = b"".join(f.encode(m) for m in msgs)
    reader = w.FrameReader()
    out = []
    pos = 0
    i = 0
    while pos < len(data):
        step = cuts[i % len(cuts)]
        out.extend(f.decode(k, p) for k, p in reader.feed(data[pos : pos + step]))
        pos += step
        i += 1
    assert out == msgs
    assert reader.pending == 0


def test_oversized_frame_is_refused_before_allocating():
    reader = w.FrameReader(max_frame=1024)
    with pytest.raises(w.FrameError, match="exceeds"):
        reader.feed(w.HEADER.pack(w.LOG, 1025))


@given(st.integers(0, 255), st.binary(max_size=64))
def test_garbage_payloads_raise_frame_error_only(kind, payload):
    try:
        f.decode(kind, payload)
    except w.FrameError:
        pass


@given(st.lists(messages, max_size=20))
def test_drop_logs_removes_exactly_the_log_frames(msgs):
    data = b"".join(f.encode(m) for m in msgs)
    kept = [m for m in msgs if not isinstance(m, f.Log)]
    reader = w.FrameReader()
    assert [f.decode(k, p) for k, p in reader.feed(drop_logs(data))] == kept


def _log(stream: int = 0, data: bytes = b"x\n"):
    def encode(seq: int) -> bytes:
        return f.encode(f.Log(seq, stream, data))

    return encode


def _seqs(data: bytes) -> list[tuple[int, int]]:
    return [(k, w.U64.unpack_from(p)[0]) for k, p in w.FrameReader().feed(data)]


async def test_outbox_rewind_replays_after_the_given_seq():
    box = RankOutbox()
    for _ in range(5):
        box.append(w.LOG, _log())
    assert [s for _, s in _seqs(await box.take())] == [1, 2, 3, 4, 5]
    box.rewind(3)
    got = _seqs(await box.take())
    assert got == [(w.REPLAY, 4), (w.LOG, 4), (w.LOG, 5)]


async def test_outbox_drops_old_logs_but_keeps_barrier_marks():
    box = RankOutbox(limit_bytes=64 * 1024)
    big = b"y" * 1000 + b"\n"
    box.append(w.LOG, _log(data=big))
    box.append(w.MARK, lambda seq: f.encode(f.Mark(seq, 9)))
    for _ in range(200):
        box.append(w.LOG, _log(data=big))
    got = _seqs(await box.take())
    assert got[0] == (w.MARK, 2)  # kept although its place in the ring was evicted
    seqs = [s for _, s in got]
    assert seqs == sorted(seqs) and seqs[1] > 3
