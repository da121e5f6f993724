"""The protocol layer without processes: the wire codec under any chunking, limits, garbage;
the control channel's conversation and its refusals; and what a child loads."""

from __future__ import annotations

import hmac
import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import trio_logmesh
from trio_logmesh.protocol import _control as c
from trio_logmesh.protocol import _frames as f
from trio_logmesh.protocol import _wire as w

TOKEN = bytes(range(1, 17))
CHILD_DIR = os.path.join(os.path.dirname(os.path.abspath(trio_logmesh.__file__)), "child")

u8 = st.integers(0, 2**8 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)

#: ``(kind, fields, tail)`` of any frame the wire carries, control and data.
wire_frames = st.one_of(
    st.tuples(st.just(w.HELLO), st.tuples(st.binary(min_size=16, max_size=16), i64, i64),
              st.just(b"")),
    st.tuples(st.just(w.REJECT), st.just(()), st.just(b"")),
    st.tuples(st.just(w.FORCE_SYNC_FLUSH), st.tuples(i64), st.just(b"")),
    st.tuples(st.just(w.FLUSHED), st.tuples(i64), st.just(b"")),
    st.tuples(st.just(w.SET_LEVEL), st.tuples(i32), st.just(b"")),
    st.tuples(st.just(w.LOG), st.tuples(u32, u64, u8, u8, u64), st.binary(max_size=300)),
    st.tuples(st.just(w.MARK), st.tuples(u32, u64, i64), st.just(b"")),
    st.tuples(st.just(w.EXIT), st.tuples(u32, u64, i32), st.just(b"")),
)

data_frames = st.one_of(
    st.builds(f.Log, u64, st.integers(0, 1), st.binary(max_size=300), u64, st.booleans(),
              st.booleans()),
    st.builds(f.Mark, u64, i64),
    st.builds(f.Exit, u64, i32),
)


def _feed_in_chunks(reader: w.FrameReader, data: bytes, cuts: list[int], as_bytearray: bool):
    """Feed ``data`` to ``reader`` cut at ``cuts``; the frames it returns, in order."""
    bounds = [0, *sorted(set(cuts)), len(data)]
    out: list[tuple[int, bytes]] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        chunk = data[lo:hi]
        out.extend(reader.feed(bytearray(chunk) if as_bytearray else chunk))
    return out


# -- the wire codec ---------------------------------------------------------------------------
@given(st.lists(wire_frames, max_size=20), st.data())
def test_every_frame_type_round_trips_under_any_chunking(frames, data):
    encoded = [w.encode(kind, *fields, tail=tail) for kind, fields, tail in frames]
    for (kind, _fields, tail), blob in zip(frames, encoded, strict=True):
        assert blob[0] == kind
        assert w.HEADER.unpack_from(blob) == (kind, len(blob) - w.HEADER_SIZE)
        assert len(blob) == w.HEADER_SIZE + w.LAYOUTS[kind].size + len(tail)
    stream = b"".join(encoded)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    reader = w.FrameReader()
    got = _feed_in_chunks(reader, stream, cuts, data.draw(st.booleans()))
    assert [k for k, _ in got] == [k for k, _, _ in frames]
    decoded = [w.decode(k, p) for k, p in got]
    expected = [(*fields, tail) if kind in w.TAILED else fields for kind, fields, tail in frames]
    assert decoded == expected
    assert reader.pending == 0


@given(st.lists(st.tuples(u32, st.lists(data_frames, max_size=5)), max_size=8), st.data())
def test_data_frames_round_trip_under_any_chunking(batches, data):
    stream = b"".join(f.encode_frames(rank, frames) for rank, frames in batches)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30))
    reader = w.FrameReader()
    got = [f.decode_frame(k, p) for k, p in _feed_in_chunks(reader, stream, cuts, False)]
    assert got == [(rank, frame) for rank, frames in batches for frame in frames]
    assert reader.pending == 0


def test_data_frame_flags_and_dropped_reach_the_wire():
    blob = f.encode_frames(7, [f.Log(5, 1, b"ab\ncd", 3, partial=True, progress=True)])
    ((kind, payload),) = w.FrameReader().feed(blob)
    assert kind == w.LOG
    assert w.decode(kind, payload) == (7, 5, 1, w.FLAG_PARTIAL | w.FLAG_PROGRESS, 3, b"ab\ncd")
    assert f.encode_frames(7, []) == b""


def test_frame_size_counts_data_plus_overhead():
    assert f.frame_size(f.Log(1, 0, b"x" * 10)) == 10 + f.FRAME_OVERHEAD
    assert f.frame_size(f.Mark(1, 2)) == f.FRAME_OVERHEAD
    assert f.frame_size(f.Exit(1, 0)) == f.FRAME_OVERHEAD


def test_reader_keeps_a_partial_frame_pending_until_it_completes():
    blob = w.encode(w.FLUSHED, 9) + w.encode(w.SET_LEVEL, 20)
    reader = w.FrameReader()
    assert reader.feed(blob[:3]) == []
    assert reader.pending == 3
    assert reader.feed(blob[3:15]) == [(w.FLUSHED, (9).to_bytes(8, "little", signed=True))]
    assert reader.pending == 15 - 13
    assert reader.feed(blob[15:]) == [(w.SET_LEVEL, (20).to_bytes(4, "little", signed=True))]
    assert reader.pending == 0


def test_oversized_frame_is_refused_from_its_header_alone():
    reader = w.FrameReader(max_frame=1024)
    with pytest.raises(w.FrameError, match="exceeds"):
        reader.feed(w.HEADER.pack(w.LOG, 1025))
    # Exactly the limit is fine: the reader waits for the payload.
    reader = w.FrameReader(max_frame=1024)
    assert reader.feed(w.HEADER.pack(w.LOG, 1024)) == []
    assert reader.pending == w.HEADER_SIZE


def test_huge_announced_frame_is_refused_without_waiting_for_or_allocating_it():
    # 4 GiB announced: refused at the header (with its bytes split over two reads), with
    # no payload received -- nothing of that size is ever buffered.
    reader = w.FrameReader()
    header = w.HEADER.pack(w.LOG, 2**32 - 1)
    assert reader.feed(header[:2]) == []
    with pytest.raises(w.FrameError, match="exceeds"):
        reader.feed(header[2:])
    assert w.MAX_FRAME < 2**32 - 1


def test_oversized_frame_after_valid_ones_in_the_same_chunk_is_refused():
    reader = w.FrameReader(max_frame=64)
    with pytest.raises(w.FrameError):
        reader.feed(w.encode(w.FLUSHED, 1) + w.HEADER.pack(w.LOG, 65))


@given(st.integers(0, 255), st.binary(max_size=64))
def test_garbage_payloads_raise_frame_error_only(kind, payload):
    try:
        fields = w.decode(kind, payload)
    except w.FrameError:
        layout = w.LAYOUTS.get(kind)
        assert (
            layout is None
            or (kind in w.TAILED and len(payload) < layout.size)
            or (kind not in w.TAILED and len(payload) != layout.size)
        )
    else:
        assert isinstance(fields, tuple)
        assert kind in w.LAYOUTS
    try:
        rank, frame = f.decode_frame(kind, payload)
    except w.FrameError:
        pass
    else:
        assert kind in (w.LOG, w.MARK, w.EXIT)
        assert isinstance(frame, f.Log | f.Mark | f.Exit)


@given(st.binary(max_size=200))
def test_garbage_streams_raise_frame_error_only(blob):
    reader = w.FrameReader(max_frame=64)
    try:
        frames = reader.feed(blob)
    except w.FrameError:
        return
    assert sum(w.HEADER_SIZE + len(p) for _, p in frames) + reader.pending == len(blob)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (99, b""),  # unknown type
        (0, b""),
        (w.FLUSHED, b"\0" * 7),  # short
        (w.FLUSHED, b"\0" * 9),  # long
        (w.REJECT, b"\0"),
        (w.HELLO, b"\0" * (w.LAYOUTS[w.HELLO].size - 1)),
        (w.LOG, b"\0" * (w.LAYOUTS[w.LOG].size - 1)),  # a LOG without its fixed fields
        (w.EXIT, b"\0" * (w.LAYOUTS[w.EXIT].size + 1)),
    ],
)
def test_decode_refuses_unknown_types_and_wrong_sizes(kind, payload):
    with pytest.raises(w.FrameError):
        w.decode(kind, payload)


def test_decode_frame_refuses_control_frames_and_bad_streams():
    with pytest.raises(w.FrameError, match="not a data frame"):
        f.decode_frame(w.HELLO, w.encode(w.HELLO, TOKEN, 0, 1)[w.HEADER_SIZE:])
    bad_stream = w.encode(w.LOG, 0, 1, 2, 0, 0, tail=b"x\n")[w.HEADER_SIZE:]
    with pytest.raises(w.FrameError, match="stream"):
        f.decode_frame(w.LOG, bad_stream)


# -- the control channel ----------------------------------------------------------------------
def test_a_whole_conversation_between_host_and_agent():
    host = c.ControlConnection(c.HOST, TOKEN)
    agent = c.ControlConnection(c.AGENT, TOKEN)
    assert not host.ready and not agent.ready
    assert host.outstanding == []

    hello = agent.hello(3, 4242)
    assert agent.ready and (agent.rank, agent.pid) == (3, 4242)
    # The hello arrives a byte at a time: one event, on its last byte.
    for byte in hello[:-1]:
        assert host.receive(bytes([byte])) == []
        assert not host.ready
    assert host.receive(hello[-1:]) == [(w.HELLO, 3)]
    assert host.ready and (host.rank, host.pid) == (3, 4242)

    assert agent.receive(host.set_level(10)) == [(w.SET_LEVEL, 10)]

    # Two overlapping barriers, sent in one write, answered out of order.
    asks = host.force_sync_flush(1) + host.force_sync_flush(2)
    assert host.outstanding == [1, 2]
    assert agent.receive(asks) == [(w.FORCE_SYNC_FLUSH, 1), (w.FORCE_SYNC_FLUSH, 2)]
    assert host.receive(agent.flushed(2)) == [(w.FLUSHED, 2)]
    assert host.outstanding == [1]
    assert host.receive(agent.flushed(1)) == [(w.FLUSHED, 1)]
    assert host.outstanding == []

    # A third one, its answer split across two reads with a level change on the way.
    assert agent.receive(host.force_sync_flush(3) + host.set_level(40)) == [
        (w.FORCE_SYNC_FLUSH, 3),
        (w.SET_LEVEL, 40),
    ]
    answer = agent.flushed(3)
    assert host.receive(answer[:4]) == []
    assert host.outstanding == [3]
    assert host.receive(answer[4:]) == [(w.FLUSHED, 3)]
    assert host.outstanding == []

    # An answer to a barrier already answered is a protocol error.
    with pytest.raises(c.ProtocolError):
        host.receive(agent.flushed(3))

    assert agent.receive(host.reject()) == [(w.REJECT, 0)]


def test_the_same_version_asked_twice_is_answered_twice():
    host, agent = c.ControlConnection(c.HOST, TOKEN), c.ControlConnection(c.AGENT, TOKEN)
    host.receive(agent.hello(0, 1))
    host.force_sync_flush(5)
    host.force_sync_flush(5)
    assert host.receive(agent.flushed(5) + agent.flushed(5)) == [(w.FLUSHED, 5), (w.FLUSHED, 5)]
    assert host.outstanding == []


@pytest.mark.parametrize(
    "token",
    [bytes(16), TOKEN[:-1] + b"\xff", b"\xff" + TOKEN[1:]],
    ids=["zeros", "last-byte", "first-byte"],
)
def test_a_hello_with_a_bad_token_is_refused(token):
    host = c.ControlConnection(c.HOST, TOKEN)
    with pytest.raises(c.ProtocolError, match="token"):
        host.receive(c.ControlConnection(c.AGENT, token).hello(0, 100))
    assert not host.ready


def test_the_token_is_compared_in_constant_time(monkeypatch):
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    monkeypatch.setattr(c, "compare_digest", spy)
    host = c.ControlConnection(c.HOST, TOKEN)
    assert host.receive(c.ControlConnection(c.AGENT, TOKEN).hello(1, 2)) == [(w.HELLO, 1)]
    assert sorted(calls[0]) == [TOKEN, TOKEN] and len(calls) == 1


@pytest.mark.parametrize(("rank", "pid"), [(-1, 10), (0, 0), (2, -5)])
def test_a_hello_with_a_bad_rank_or_pid_is_refused(rank, pid):
    host = c.ControlConnection(c.HOST, TOKEN)
    with pytest.raises(c.ProtocolError):
        host.receive(w.encode(w.HELLO, TOKEN, rank, pid))
    assert not host.ready


@pytest.mark.parametrize(
    "first",
    [
        w.encode(w.FLUSHED, 1),
        w.encode(w.SET_LEVEL, 10),
        w.encode(w.FORCE_SYNC_FLUSH, 1),
        w.encode(w.REJECT),
        w.encode(w.MARK, 0, 1, 1),
    ],
    ids=["flushed", "set-level", "force-sync-flush", "reject", "mark"],
)
def test_the_first_frame_must_be_a_hello(first):
    host = c.ControlConnection(c.HOST, TOKEN)
    host.force_sync_flush(1)  # even an answer to a version asked does not replace the hello
    with pytest.raises(c.ProtocolError):
        host.receive(first)
    assert not host.ready


def test_an_unsolicited_flushed_is_refused():
    host, agent = c.ControlConnection(c.HOST, TOKEN), c.ControlConnection(c.AGENT, TOKEN)
    host.receive(agent.hello(0, 1))
    host.force_sync_flush(1)
    with pytest.raises(c.ProtocolError, match="not asked"):
        host.receive(agent.flushed(7))
    assert host.outstanding == [1]


@pytest.mark.parametrize(
    "frame",
    [
        w.encode(w.HELLO, TOKEN, 0, 1),  # a second hello
        w.encode(w.FORCE_SYNC_FLUSH, 1),
        w.encode(w.SET_LEVEL, 10),
        w.encode(w.REJECT),
        w.encode(w.LOG, 0, 1, 0, 0, 0, tail=b"x\n"),
        w.encode(w.MARK, 0, 1, 1),
        w.HEADER.pack(77, 0),  # unknown type
        w.HEADER.pack(w.FLUSHED, 3) + b"abc",  # wrong size
    ],
    ids=["hello", "force-sync-flush", "set-level", "reject", "log", "mark", "unknown",
         "short-flushed"],
)
def test_the_host_refuses_frames_an_agent_does_not_send(frame):
    host, agent = c.ControlConnection(c.HOST, TOKEN), c.ControlConnection(c.AGENT, TOKEN)
    host.receive(agent.hello(0, 1))
    host.force_sync_flush(1)
    with pytest.raises(c.ProtocolError):
        host.receive(frame)


@pytest.mark.parametrize(
    "frame",
    [
        w.encode(w.HELLO, TOKEN, 0, 1),
        w.encode(w.FLUSHED, 1),
        w.encode(w.LOG, 0, 1, 0, 0, 0, tail=b"x\n"),
        w.encode(w.EXIT, 0, 1, 0),
        w.HEADER.pack(77, 0),
        w.HEADER.pack(w.SET_LEVEL, 2) + b"ab",
    ],
    ids=["hello", "flushed", "log", "exit", "unknown", "short-set-level"],
)
def test_the_agent_refuses_frames_a_host_does_not_send(frame):
    agent = c.ControlConnection(c.AGENT, TOKEN)
    agent.hello(0, 1)
    with pytest.raises(c.ProtocolError):
        agent.receive(frame)


def test_an_oversized_control_frame_is_a_protocol_error():
    for role in (c.HOST, c.AGENT):
        conn = c.ControlConnection(role, TOKEN)
        assert conn.receive(w.HEADER.pack(w.HELLO, c.MAX_CONTROL_FRAME)) == []
        conn = c.ControlConnection(role, TOKEN)
        with pytest.raises(c.ProtocolError):
            conn.receive(w.HEADER.pack(w.HELLO, c.MAX_CONTROL_FRAME + 1))


@given(st.sampled_from([c.HOST, c.AGENT]), st.binary(max_size=100))
def test_garbage_on_the_control_channel_raises_protocol_error_only(role, blob):
    conn = c.ControlConnection(role, TOKEN)
    try:
        events = conn.receive(blob)
    except c.ProtocolError:
        return
    for kind, value in events:
        assert isinstance(value, int)
        if role == c.HOST:
            assert kind == w.HELLO  # nothing was asked, so only a (valid) hello gets through
        else:
            assert kind in (w.FORCE_SYNC_FLUSH, w.SET_LEVEL, w.REJECT)


def test_each_side_sends_only_its_own_frames():
    host, agent = c.ControlConnection(c.HOST, TOKEN), c.ControlConnection(c.AGENT, TOKEN)
    with pytest.raises(c.ProtocolError):
        host.hello(0, 1)
    with pytest.raises(c.ProtocolError):
        host.flushed(1)
    with pytest.raises(c.ProtocolError):
        agent.force_sync_flush(1)
    with pytest.raises(c.ProtocolError):
        agent.set_level(10)
    with pytest.raises(c.ProtocolError):
        agent.reject()
    assert not host.ready and not agent.ready
    assert host.outstanding == [] and agent.outstanding == []


@pytest.mark.parametrize(
    ("role", "token"),
    [("client", TOKEN), ("HOST", TOKEN), (c.HOST, TOKEN[:-1]), (c.AGENT, TOKEN + b"x"),
     (c.AGENT, b"")],
)
def test_the_constructor_checks_role_and_token(role, token):
    with pytest.raises(ValueError):
        c.ControlConnection(role, token)


# -- what a child loads -----------------------------------------------------------------------
def test_a_child_loads_the_agent_with_the_standard_library_only(tmp_path):
    # As sitecustomize does in a child: the child directory on PYTHONPATH, `import
    # _logmesh_agent` (which loads the protocol modules by path); start() is not called.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOGMESH_", "BOOTSTRAP_"))}
    env["PYTHONPATH"] = CHILD_DIR
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    code = (
        "import json, sys\n"
        "import _logmesh_agent\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        check=False, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    modules = set(json.loads(proc.stdout))
    assert {"_logmesh_agent", "_logmesh_wire", "_logmesh_control"} <= modules

    def loaded(name: str) -> list[str]:
        return sorted(m for m in modules if m == name or m.startswith(name + "."))

    for forbidden in ("trio", "attrs", "attr", "trio_logmesh", "hashlib", "_hashlib"):
        assert loaded(forbidden) == [], forbidden
