"""The host link without sockets: its conversation, its refusals, its codec under any
chunking; the join document; TLS identities; the join file's mode."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_logmesh.hostmesh._mesh import write_join_file
from trio_logmesh.hostmesh._tls import cert_fingerprint, make_self_signed
from trio_logmesh.protocol import _frames as f
from trio_logmesh.protocol import _wire as w
from trio_logmesh.protocol._join import JoinError, JoinInfo
from trio_logmesh.protocol._link import (
    AGENT,
    DRIVER,
    LINK_TOKEN_SIZE,
    MAX_UNJOINED_FRAME,
    LinkConnection,
    ProtocolError,
)

TOKEN = bytes(range(LINK_TOKEN_SIZE))
IDENTITY = make_self_signed(["127.0.0.1"])


def _pair() -> tuple[LinkConnection, LinkConnection]:
    return LinkConnection(AGENT, TOKEN), LinkConnection(DRIVER, TOKEN)


def _joined() -> tuple[LinkConnection, LinkConnection]:
    agent, driver = _pair()
    assert driver.receive(agent.join(2, {"hostname": "h2"})) == [(w.JOIN, 2, {"hostname": "h2"})]
    assert agent.receive(driver.accept({"nnodes": 4})) == [(w.ACCEPT, {"nnodes": 4})]
    return agent, driver


def test_a_join_with_the_token_is_accepted_and_then_everything_flows():
    agent, driver = _joined()
    assert driver.joined and agent.joined and driver.node_rank == 2
    to_agent = b"".join([
        driver.start({"cmd": ["x"]}), driver.stream(3, {8: 5, 9: 1}), driver.credit(1 << 20),
        driver.confirm(8, 5), driver.flush(9, 7), driver.streaming(8, False),
        driver.level(9, 10), driver.signal(15, [8]), driver.signal(2), driver.stop(15, 2.5),
        driver.heartbeat(), driver.end(),
    ])
    assert agent.receive(to_agent) == [
        (w.START, {"cmd": ["x"]}), (w.STREAM, 3, {8: 5, 9: 1}), (w.CREDIT, 1 << 20),
        (w.CONFIRM, 8, 5), (w.FLUSH, 9, 7), (w.STREAMING, 8, False), (w.LEVEL, 9, 10),
        (w.SIGNAL, 15, [8]), (w.SIGNAL, 2, []), (w.STOP, 15, 2.5), (w.HEARTBEAT,), (w.END,),
    ]
    data = f.encode_frames(8, [f.Log(1, 0, b"a\n"), f.Mark(2, 7), f.Exit(3, 0)])
    to_driver = b"".join([
        agent.started({"pids": [1, 2]}), agent.epoch(3), data, agent.exited(8, -9),
        agent.status(9, "is stopped"), agent.tail(8, "Traceback"), agent.heartbeat(),
        agent.bye("done"),
    ])
    events = driver.receive(to_driver)
    assert [e[0] for e in events] == [w.STARTED, w.EPOCH, w.LOG, w.MARK, w.EXIT, w.EXITED,
                                      w.STATUS, w.TAIL, w.HEARTBEAT, w.BYE]
    assert [f.decode_frame(k, p) for k, p in events[2:5]] == [
        (8, f.Log(1, 0, b"a\n")), (8, f.Mark(2, 7)), (8, f.Exit(3, 0))]
    assert events[5] == (w.EXITED, 8, -9) and events[6] == (w.STATUS, 9, "is stopped")
    assert events[-1] == (w.BYE, "done")


def test_a_wrong_token_is_refused_before_anything_else_is_read():
    agent = LinkConnection(AGENT, bytes(LINK_TOKEN_SIZE))
    driver = LinkConnection(DRIVER, TOKEN)
    with pytest.raises(ProtocolError, match="bad token"):
        driver.receive(agent.join(0, {}))
    assert not driver.joined


def test_nothing_but_a_join_is_taken_from_an_unjoined_agent():
    agent, driver = _pair()
    with pytest.raises(ProtocolError, match="expected a join"):
        driver.receive(agent.heartbeat())
    _, driver = _pair()
    with pytest.raises(ProtocolError, match="expected a join"):
        driver.receive(f.encode_frames(0, [f.Log(1, 0, b"x\n")]))


def test_an_unjoined_peer_cannot_make_the_driver_allocate_much():
    _, driver = _pair()
    header = w.HEADER.pack(w.JOIN, MAX_UNJOINED_FRAME + 1)
    with pytest.raises(ProtocolError, match="exceeds"):
        driver.receive(header)


def test_frames_of_the_wrong_side_are_refused():
    agent, driver = _joined()
    with pytest.raises(ProtocolError, match="may not come from the agent"):
        driver.receive(w.encode(w.CREDIT, 5))
    with pytest.raises(ProtocolError, match="may not come from the driver"):
        agent.receive(f.encode_frames(0, [f.Mark(1, 1)]))
    with pytest.raises(ProtocolError, match="only the driver"):
        agent.accept({})
    with pytest.raises(ProtocolError, match="only the agent"):
        driver.join(0, {})


def test_a_refusal_reaches_the_agent_with_its_reason():
    agent, driver = _pair()
    assert agent.receive(driver.refuse("node 1 already joined")) == [
        (w.REFUSE, "node 1 already joined")]
    assert not agent.joined


def test_another_link_version_is_refused():
    agent, driver = _pair()
    frame = w.encode(w.JOIN, TOKEN, 0, 99, tail=b"{}")
    with pytest.raises(ProtocolError, match="version 99"):
        driver.receive(frame)
    del agent


def test_bad_json_in_a_join_is_a_protocol_error():
    _, driver = _pair()
    with pytest.raises(ProtocolError, match="JSON"):
        driver.receive(w.encode(w.JOIN, TOKEN, 0, 1, tail=b"{nope"))


link_events = st.one_of(
    st.builds(lambda r, s: ("confirm", r, s), st.integers(0, 2**32 - 1), st.integers(0, 2**63)),
    st.builds(lambda r, v: ("flush", r, v), st.integers(0, 2**32 - 1), st.integers(0, 2**62)),
    st.builds(lambda n: ("credit", n), st.integers(0, 2**63)),
    st.builds(lambda e, pairs: ("stream", e, pairs), st.integers(0, 2**63),
              st.dictionaries(st.integers(0, 2**32 - 1), st.integers(0, 2**63), max_size=5)),
    st.builds(lambda s, rs: ("signal", s, rs), st.integers(1, 64),
              st.lists(st.integers(0, 2**32 - 1), max_size=5)),
    st.just(("heartbeat",)),
)


@given(st.lists(link_events, max_size=20), st.data())
def test_driver_frames_round_trip_under_any_chunking(events, data):
    agent, driver = _joined()
    blob = b"".join(getattr(driver, name)(*args) for name, *args in events)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=10)))
    got = []
    for lo, hi in zip([0, *cuts], [*cuts, len(blob)], strict=True):
        got.extend(agent.receive(blob[lo:hi]))
    kinds = {"confirm": w.CONFIRM, "flush": w.FLUSH, "credit": w.CREDIT, "stream": w.STREAM,
             "signal": w.SIGNAL, "heartbeat": w.HEARTBEAT}
    assert got == [(kinds[name], *args) for name, *args in events]


# -- the join document -----------------------------------------------------------------------
def _join(**changes) -> JoinInfo:
    base = dict(host="127.0.0.1", port=4242, token=TOKEN, nnodes=2, session="s",
                cert=IDENTITY.cert, fingerprint=IDENTITY.fingerprint)
    base.update(changes)
    return JoinInfo(**base)  # type: ignore[arg-type]


def test_the_join_document_round_trips():
    join = _join()
    assert JoinInfo.loads(join.dumps()) == join
    assert TOKEN.hex() not in repr(join)  # never in a log line by accident


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(token="00" * 31), "token must be"),
    (lambda d: d.update(logmesh_join=2), "version"),
    (lambda d: d.pop("host"), "bad join document"),
    (lambda d: d.update(port=0), "out of range"),
    (lambda d: d.update(cert="", ca=""), "neither a certificate"),
    (lambda d: d.update(cert=d["cert"].replace("MII", "MIJ", 1)), "altered"),
    (lambda d: d.update(cert="not a pem"), "not PEM"),
])
def test_a_broken_or_altered_join_document_says_what_is_wrong(change, message):
    doc = json.loads(_join().dumps())
    change(doc)
    with pytest.raises(JoinError, match=message):
        JoinInfo.loads(json.dumps(doc))
    with pytest.raises(JoinError, match="not a join document"):
        JoinInfo.loads("{}")


def test_the_join_file_is_private_from_its_first_byte(tmp_path):
    path = tmp_path / "run.join"
    write_join_file(path, _join())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert JoinInfo.loads(path.read_text()) == _join()
    assert os.listdir(tmp_path) == ["run.join"]  # no temporary file left


def test_a_self_signed_identity_is_pinned_by_its_fingerprint():
    other = make_self_signed(["127.0.0.1"])
    assert IDENTITY.fingerprint == cert_fingerprint(IDENTITY.cert)
    assert IDENTITY.fingerprint != other.fingerprint
    assert "PRIVATE KEY" in IDENTITY.key and "PRIVATE" not in repr(IDENTITY)


def test_socket_timeouts_follow_dead_after():
    import socket

    from trio_logmesh.host._link import tune_socket

    with socket.socket() as sock:
        tune_socket(sock, 6.0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 6000
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3


async def test_a_network_write_is_not_shielded_from_cancellation():
    # A peer that never reads: the write blocks, as on a partitioned link.  Cancelling it
    # must end it at once and mark the connection broken, never wait for the network.
    import trio
    import trio.testing

    from trio_logmesh.host._link import LinkIO

    ours, _theirs = trio.testing.lockstep_stream_pair()
    io = LinkIO(ours, LinkConnection(AGENT, TOKEN))
    io.send(b"x" * 1000)
    with trio.move_on_after(0.5) as scope:
        await io.run_writer()
    assert scope.cancelled_caught
    assert io.broken
    io.send(b"more")
    assert io.queued == 0  # nothing is queued on a broken connection


async def test_a_writer_on_a_closed_stream_ends_quietly_and_wakes_the_reader() -> None:
    # The agent's link closed under its writer (its driver gone): no error out of the writer,
    # which would have come out of the session's nursery as an exception group.
    import trio
    import trio.testing

    from trio_logmesh.host._link import LinkIO

    ours, _theirs = trio.testing.memory_stream_pair()
    io = LinkIO(ours, LinkConnection(AGENT, TOKEN))
    await ours.aclose()
    io.send(b"x")
    await io.run_writer()
    assert io.broken
    with pytest.raises(trio.ClosedResourceError):
        await io.receive()
