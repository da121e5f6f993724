"""The host link between a host agent and the driver, sans I/O (standard library only).

One TLS connection per host carries every rank of that host: the data frames of ``_wire``
(``LOG``, ``MARK``, ``EXIT`` with global ranks, in each rank's order) and the link's own
control frames.  Both ends drive one :class:`LinkConnection`, so they cannot drift apart; it
frames and checks what each side sends and receives:

* the agent opens with ``JOIN(token, node rank, version, info)``.  The driver checks the token
  in constant time before it reads anything else, and until then accepts only small frames (an
  unauthenticated peer cannot make it allocate much).  It answers ``ACCEPT`` or ``REFUSE``;
* the driver sends ``START`` once every host joined; the agent answers ``STARTED``;
* the driver opens a stream epoch with ``STREAM(e, already received)``; the agent puts
  ``EPOCH(e)`` into its data before the frames of that epoch (a reconnection or a new view
  starts a new epoch: what the driver got before it, it need not get again);
* the driver grants ``CREDIT`` for data bytes, so the link always stays readable: control is
  never stuck behind data, and liveness needs no guessing;
* ``CONFIRM``, ``FLUSH``, ``STREAMING``, ``LEVEL``, ``SIGNAL``, ``STOP``, ``END`` go to the
  agent; ``EXITED``, ``STATUS``, ``TAIL``, ``BYE`` come back; ``HEARTBEAT`` goes both ways.

Anything else -- a frame of the other side's, data before the join, a malformed payload --
raises :class:`ProtocolError`, and whoever drives the connection closes it.
"""

from __future__ import annotations

import json
import struct
from hmac import compare_digest

from . import _wire as w

DRIVER = "driver"
AGENT = "agent"

#: The version of the link's conversation; a JOIN of another version is refused.
LINK_VERSION = 1
LINK_TOKEN_SIZE = 32
#: The largest frame accepted before a peer has proven it knows the token.
MAX_UNJOINED_FRAME = 64 * 1024

DATA_KINDS = frozenset({w.LOG, w.MARK, w.EXIT})
#: What each side may send.
SENT_BY = {
    AGENT: frozenset({w.JOIN, w.STARTED, w.EPOCH, w.HEARTBEAT, w.EXITED, w.STATUS, w.TAIL,
                      w.BYE}) | DATA_KINDS,
    DRIVER: frozenset({w.ACCEPT, w.REFUSE, w.START, w.STREAM, w.CONFIRM, w.FLUSH, w.STREAMING,
                       w.LEVEL, w.CREDIT, w.HEARTBEAT, w.SIGNAL, w.STOP, w.END}),
}
_JSON_TAILS = frozenset({w.JOIN, w.ACCEPT, w.START, w.STARTED})
_TEXT_TAILS = frozenset({w.REFUSE, w.STATUS, w.TAIL, w.BYE})
_PAIR = struct.Struct("<IQ")
_U32 = struct.Struct("<I")

#: An event from :meth:`LinkConnection.receive`: ``(frame type, *fields)``.  Data frames come
#: as ``(type, payload)`` for ``_frames.decode_frame``; a JSON tail as a dict, a text tail as
#: a str; ``STREAM`` as ``(STREAM, epoch, {rank: seq})`` and ``SIGNAL`` as ``(SIGNAL, sig,
#: [ranks])``.
Event = tuple


class ProtocolError(Exception):
    """The peer broke the link's protocol (or presented a bad token); close the connection."""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class LinkConnection:
    """One end of a host link; see the module docstring.

    ``role`` is :data:`DRIVER` or :data:`AGENT`; ``token`` is the run's secret (the driver
    checks it, the agent presents it).  ``joined`` turns true once the driver received a valid
    ``JOIN`` (driver side) or the agent an ``ACCEPT`` (agent side).
    """

    __slots__ = ("role", "token", "joined", "node_rank", "_reader")

    def __init__(self, role: str, token: bytes) -> None:
        if role not in (DRIVER, AGENT):
            raise ValueError(f"role must be {DRIVER!r} or {AGENT!r}, not {role!r}")
        if len(token) != LINK_TOKEN_SIZE:
            raise ValueError(f"token must be {LINK_TOKEN_SIZE} bytes, not {len(token)}")
        self.role = role
        self.token = token
        self.joined = False
        self.node_rank = -1
        self._reader = w.FrameReader(MAX_UNJOINED_FRAME)

    # -- what the agent sends --------------------------------------------------------------
    def join(self, node_rank: int, info: dict) -> bytes:
        """Agent: the first frame; ``info`` says who it is (host name, pid, address, ...)."""
        self._must_be(AGENT)
        self.node_rank = node_rank
        return w.encode(w.JOIN, self.token, node_rank, LINK_VERSION,
                        tail=json.dumps(info).encode())

    def started(self, info: dict) -> bytes:
        """Agent: the ranks run (``pids``, ``run_dir``), or could not start (``error``)."""
        return self._json(AGENT, w.STARTED, info)

    def epoch(self, epoch: int) -> bytes:
        """Agent: the data frames that follow belong to stream epoch ``epoch``."""
        self._must_be(AGENT)
        return w.encode(w.EPOCH, epoch)

    def exited(self, rank: int, code: int) -> bytes:
        """Agent: ``rank``'s process exited with ``code``."""
        self._must_be(AGENT)
        return w.encode(w.EXITED, rank, code)

    def status(self, rank: int, text: str) -> bytes:
        """Agent: why ``rank`` has not yet answered a barrier, as the host sees it."""
        return self._text(AGENT, w.STATUS, text, rank)

    def tail(self, rank: int, text: str) -> bytes:
        """Agent: the last lines of ``rank``'s stderr file."""
        return self._text(AGENT, w.TAIL, text, rank)

    def bye(self, reason: str = "") -> bytes:
        """Agent: leaving (``reason`` empty for a normal end)."""
        return self._text(AGENT, w.BYE, reason)

    # -- what the driver sends -------------------------------------------------------------
    def accept(self, info: dict) -> bytes:
        """Driver: the join is accepted."""
        return self._json(DRIVER, w.ACCEPT, info)

    def refuse(self, reason: str) -> bytes:
        """Driver: the join is refused, and why; close the connection after it."""
        return self._text(DRIVER, w.REFUSE, reason)

    def start(self, spec: dict) -> bytes:
        """Driver: start the ranks as ``spec`` says."""
        return self._json(DRIVER, w.START, spec)

    def stream(self, epoch: int, received: dict[int, int]) -> bytes:
        """Driver: stream from epoch ``epoch`` on, skipping what was ``received`` by rank."""
        self._must_be(DRIVER)
        tail = b"".join(_PAIR.pack(r, s) for r, s in sorted(received.items()))
        return w.encode(w.STREAM, epoch, tail=tail)

    def confirm(self, rank: int, seq: int) -> bytes:
        """Driver: the view handled ``rank``'s frames up to ``seq``."""
        self._must_be(DRIVER)
        return w.encode(w.CONFIRM, rank, seq)

    def flush(self, rank: int, version: int) -> bytes:
        """Driver: put ``Mark(version)`` behind what ``rank`` wrote so far."""
        self._must_be(DRIVER)
        return w.encode(w.FLUSH, rank, version)

    def streaming(self, rank: int, on: bool) -> bytes:
        """Driver: stream ``rank``'s lines, or not."""
        self._must_be(DRIVER)
        return w.encode(w.STREAMING, rank, int(on))

    def level(self, rank: int, level: int) -> bytes:
        """Driver: set ``rank``'s root Python logging level."""
        self._must_be(DRIVER)
        return w.encode(w.LEVEL, rank, level)

    def credit(self, nbytes: int) -> bytes:
        """Driver: the agent may send ``nbytes`` more bytes of data frames."""
        self._must_be(DRIVER)
        return w.encode(w.CREDIT, nbytes)

    def signal(self, sig: int, ranks: list[int] | None = None) -> bytes:
        """Driver: send ``sig`` to the process groups of ``ranks`` (None: all)."""
        self._must_be(DRIVER)
        return w.encode(w.SIGNAL, sig, tail=b"".join(_U32.pack(r) for r in ranks or ()))

    def stop(self, sig: int, grace: float) -> bytes:
        """Driver: stop the ranks with ``sig``, SIGKILL after ``grace`` seconds."""
        self._must_be(DRIVER)
        return w.encode(w.STOP, sig, grace)

    def end(self) -> bytes:
        """Driver: the run is over; the agent stops what still runs and leaves."""
        self._must_be(DRIVER)
        return w.encode(w.END)

    def heartbeat(self) -> bytes:
        """Either side: still here."""
        return w.encode(w.HEARTBEAT)

    # -- what a side receives --------------------------------------------------------------
    def receive(self, data: bytes | bytearray) -> list[Event]:
        """Feed received bytes; return the events they complete, in order.

        Raises :class:`ProtocolError` when the peer breaks the protocol.
        """
        try:
            frames = self._reader.feed(data)
        except w.FrameError as exc:
            raise ProtocolError(str(exc)) from None
        peer = DRIVER if self.role == AGENT else AGENT
        allowed = SENT_BY[peer]
        events: list[Event] = []
        for kind, payload in frames:
            if kind not in allowed:
                raise ProtocolError(f"frame type {kind} may not come from the {peer}")
            if not self.joined:
                events.append(self._handshake(kind, payload))
                continue
            if kind in DATA_KINDS:
                events.append((kind, payload))
                continue
            try:
                fields = w.decode(kind, payload)
            except w.FrameError as exc:
                raise ProtocolError(str(exc)) from None
            events.append(self._event(kind, fields))
        return events

    def _handshake(self, kind: int, payload: bytes) -> Event:
        expected = (w.JOIN,) if self.role == DRIVER else (w.ACCEPT, w.REFUSE)
        if kind not in expected:
            raise ProtocolError(f"expected {'a join' if self.role == DRIVER else 'an answer'} "
                                f"first, got frame type {kind}")
        try:
            fields = w.decode(kind, payload)
        except w.FrameError as exc:
            raise ProtocolError(str(exc)) from None
        if kind == w.JOIN:
            token, node_rank, version, tail = fields
            # The token first, in constant time: nothing else of an unproven peer is read.
            if not compare_digest(token, self.token):
                raise ProtocolError("bad token")
            if version != LINK_VERSION:
                raise ProtocolError(f"link version {version}, this driver speaks "
                                    f"{LINK_VERSION}")
            info = _json(tail)
            self.node_rank = node_rank
        elif kind == w.ACCEPT:
            info = _json(fields[-1])
        else:
            return (w.REFUSE, _text(fields[-1]))
        self.joined = True
        self._reader.max_frame = w.MAX_FRAME
        return (kind, node_rank, info) if kind == w.JOIN else (kind, info)

    @staticmethod
    def _event(kind: int, fields: tuple) -> Event:
        if kind in _JSON_TAILS:
            return (kind, _json(fields[-1]))
        if kind in _TEXT_TAILS:
            return (kind, *fields[:-1], _text(fields[-1]))
        if kind == w.STREAM:
            epoch, tail = fields
            if len(tail) % _PAIR.size:
                raise ProtocolError("bad STREAM payload")
            return (kind, epoch, dict(_PAIR.iter_unpack(tail)))
        if kind == w.SIGNAL:
            sig, tail = fields
            if len(tail) % _U32.size:
                raise ProtocolError("bad SIGNAL payload")
            return (kind, sig, [r for (r,) in _U32.iter_unpack(tail)])
        if kind == w.STREAMING:
            return (kind, fields[0], bool(fields[1]))
        return (kind, *fields)

    # -- helpers -----------------------------------------------------------------------------
    def _json(self, role: str, kind: int, info: dict) -> bytes:
        self._must_be(role)
        return w.encode(kind, tail=json.dumps(info).encode())

    def _text(self, role: str, kind: int, text: str, *fields: object) -> bytes:
        self._must_be(role)
        return w.encode(kind, *fields, tail=text.encode("utf-8", "replace"))

    def _must_be(self, role: str) -> None:
        if self.role != role:
            raise ProtocolError(f"only the {role} side sends this")


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"bad JSON in a link frame: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("a link frame's JSON must be an object")
    return value
