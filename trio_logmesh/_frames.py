"""Typed messages of the logmesh channel and their encoding (layout in ``_wire``).

Names follow Monarch's ``LogMessage`` / ``LogForwardMessage``: ``Log`` and ``Mark`` (the
seed's ``Flush{sync_version}``) are the in-band data plane; ``SetMode``, ``ForceSyncFlush`` and
``SetLevel`` the control plane; ``FlushPipes``/``Resume``/``Replay`` are ours, for the exact
barrier and for surviving a forwarder's death.
"""

from __future__ import annotations

import attrs

from . import _wire as w


@attrs.frozen
class Hello:
    """First frame on every connection to a forwarder."""

    role: int
    token: bytes
    rank: int
    resume_after: int = 0


@attrs.frozen
class Welcome:
    """The forwarder's answer to a client's ``Hello``."""

    rank: int
    pid: int
    kind: int
    hostname: str


@attrs.frozen
class Log:
    """A chunk of complete lines (and maybe one trailing partial line) of one stream."""

    seq: int
    stream: int
    data: bytes
    line_start: int = 0
    partial: bool = False
    progress: bool = False  # the partial line is a progress bar's latest state


@attrs.frozen
class Mark:
    """Barrier marker: every byte of the rank written before barrier ``version`` precedes it."""

    seq: int
    version: int


@attrs.frozen
class Exit:
    """The rank's process ended with ``code`` and its pipes reached EOF; nothing follows."""

    seq: int
    code: int


@attrs.frozen
class Heartbeat:
    """Liveness from a forwarder (the seed's ``Flush(None)``)."""


@attrs.frozen
class Replay:
    """The data frames that follow start again at ``from_seq``."""

    from_seq: int


@attrs.frozen
class SetMode:
    """Turn relaying to the client on or off."""

    stream_to_client: bool


@attrs.frozen
class ForceSyncFlush:
    """Ask the forwarder to put barrier ``version`` behind everything written so far."""

    version: int


@attrs.frozen
class SetLevel:
    """Set the root Python logging level in the child."""

    level: int


@attrs.frozen
class FlushPipes:
    """Forwarder to host: user-space buffers are flushed; cut both pipes for ``version``."""

    version: int


@attrs.frozen
class Resume:
    """Forwarder to host: send again every data frame after ``after_seq``."""

    after_seq: int


@attrs.frozen
class Ack:
    """Client to host (through the forwarder): frames up to ``seq`` were delivered."""

    seq: int


@attrs.frozen
class Reject:
    """The forwarder refused the connection (bad token or role)."""


Message = (
    Hello | Welcome | Log | Mark | Exit | Heartbeat | Replay | SetMode | ForceSyncFlush
    | SetLevel | FlushPipes | Resume | Ack | Reject
)


def encode(msg: Message) -> bytes:
    """Encode a message as one frame."""
    if isinstance(msg, Log):
        flags = (w.FLAG_PARTIAL if msg.partial else 0) | (w.FLAG_PROGRESS if msg.progress else 0)
        head = w.LOG_S.pack(msg.seq, msg.stream, flags, msg.line_start)
        return w.HEADER.pack(w.LOG, len(head) + len(msg.data)) + head + msg.data
    if isinstance(msg, Mark):
        return w.frame(w.MARK, w.MARK_S.pack(msg.seq, msg.version))
    if isinstance(msg, Exit):
        return w.frame(w.EXIT, w.EXIT_S.pack(msg.seq, msg.code))
    if isinstance(msg, Heartbeat):
        return w.frame(w.HEARTBEAT)
    if isinstance(msg, Hello):
        return w.frame(w.HELLO, w.HELLO_S.pack(msg.role, msg.token, msg.rank, msg.resume_after))
    if isinstance(msg, Welcome):
        return w.frame(
            w.WELCOME, w.WELCOME_S.pack(msg.rank, msg.pid, msg.kind) + msg.hostname.encode()
        )
    if isinstance(msg, Replay):
        return w.frame(w.REPLAY, w.U64.pack(msg.from_seq))
    if isinstance(msg, SetMode):
        return w.frame(w.SET_MODE, w.U8.pack(1 if msg.stream_to_client else 0))
    if isinstance(msg, ForceSyncFlush):
        return w.frame(w.FORCE_SYNC_FLUSH, w.I64.pack(msg.version))
    if isinstance(msg, SetLevel):
        return w.frame(w.SET_LEVEL, w.I32.pack(msg.level))
    if isinstance(msg, FlushPipes):
        return w.frame(w.FLUSH_PIPES, w.I64.pack(msg.version))
    if isinstance(msg, Resume):
        return w.frame(w.RESUME, w.U64.pack(msg.after_seq))
    if isinstance(msg, Ack):
        return w.frame(w.ACK, w.U64.pack(msg.seq))
    if isinstance(msg, Reject):
        return w.frame(w.REJECT)
    raise TypeError(f"not a logmesh message: {msg!r}")


def decode(kind: int, payload: bytes) -> Message:
    """Decode one frame's payload.  Raises :class:`~trio_logmesh._wire.FrameError` if malformed."""
    try:
        if kind == w.LOG:
            seq, stream, flags, line_start = w.LOG_S.unpack_from(payload)
            if stream > 1:
                raise w.FrameError(f"bad stream id {stream}")
            return Log(seq, stream, payload[w.LOG_S.size :], line_start,
                       bool(flags & w.FLAG_PARTIAL), bool(flags & w.FLAG_PROGRESS))
        if kind == w.MARK:
            return Mark(*w.MARK_S.unpack(payload))
        if kind == w.EXIT:
            return Exit(*w.EXIT_S.unpack(payload))
        if kind == w.HEARTBEAT:
            return Heartbeat()
        if kind == w.HELLO:
            return Hello(*w.HELLO_S.unpack(payload))
        if kind == w.WELCOME:
            rank, pid, fkind = w.WELCOME_S.unpack_from(payload)
            host = payload[w.WELCOME_S.size :].decode("utf-8", "replace")
            return Welcome(rank, pid, fkind, host)
        if kind == w.REPLAY:
            return Replay(*w.U64.unpack(payload))
        if kind == w.SET_MODE:
            return SetMode(bool(w.U8.unpack(payload)[0]))
        if kind == w.FORCE_SYNC_FLUSH:
            return ForceSyncFlush(*w.I64.unpack(payload))
        if kind == w.SET_LEVEL:
            return SetLevel(*w.I32.unpack(payload))
        if kind == w.FLUSH_PIPES:
            return FlushPipes(*w.I64.unpack(payload))
        if kind == w.RESUME:
            return Resume(*w.U64.unpack(payload))
        if kind == w.ACK:
            return Ack(*w.U64.unpack(payload))
        if kind == w.REJECT:
            return Reject()
    except Exception as exc:  # struct.error and friends: the peer sent garbage
        if isinstance(exc, w.FrameError):
            raise
        raise w.FrameError(f"malformed frame of type {kind}: {exc}") from None
    raise w.FrameError(f"unknown frame type {kind}")
