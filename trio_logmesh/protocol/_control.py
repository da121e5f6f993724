"""The control channel between a host and the agent in a Python child, sans I/O.

Standard library only: children load this module by path (see ``child/``).  Both ends drive
one :class:`ControlConnection` -- the host in a trio task, the agent in the child's thread --
so the two cannot drift apart.  It frames and checks what each side sends and receives, and
keeps the barrier bookkeeping both ends must agree on:

* the agent opens with ``HELLO(token, rank, pid)``; the host checks the token (in constant
  time) and answers ``WELCOME``, or ``REJECT`` after which the connection closes.  The agent
  waits for that answer before the user's code starts, so from then on the host knows the
  process is there: a barrier never misses what it buffers;
* the host asks ``FORCE_SYNC_FLUSH(v)``; the agent flushes Python and C stdio and answers
  ``FLUSHED(v)``, once per version.  :attr:`ControlConnection.outstanding` holds the versions
  asked and not yet answered: when the connection is lost (the child exited, or exec'd), the
  host cuts the pipes for those itself;
* ``SET_LEVEL(n)`` sets the child's root logging level; the host may send it ahead of its
  ``WELCOME``, and the agent then sets it before the user's code starts.

Anything else -- an unknown frame, a frame meant for the other role, an answer to a version
never asked -- raises :class:`ProtocolError`, and whoever drives the connection closes it.
"""

from __future__ import annotations

try:  # hmac.compare_digest without importing hashlib/OpenSSL into every child at start-up
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover
    from hmac import compare_digest

try:  # inside the package
    from . import _wire as w
except ImportError:  # loaded by path in a child: the agent put `_logmesh_wire` in sys.modules
    import _logmesh_wire as w  # type: ignore[no-redef]

HOST = "host"
AGENT = "agent"

#: Control frames are a few bytes; anything larger is a broken or hostile peer.
MAX_CONTROL_FRAME = 4096

#: An event from :meth:`ControlConnection.receive`: ``(frame type, value)``.  ``(HELLO, rank)``
#: and ``(FLUSHED, version)`` reach the host; ``(WELCOME, 0)``, ``(FORCE_SYNC_FLUSH, version)``,
#: ``(SET_LEVEL, level)`` and ``(REJECT, 0)`` reach the agent.
Event = tuple[int, int]


class ProtocolError(Exception):
    """The peer broke the control protocol; close the connection."""


class ControlConnection:
    """One end of a control connection; see the module docstring.

    ``role`` is :data:`HOST` or :data:`AGENT`; ``token`` is the run's secret.  The host learns
    the peer's ``rank`` and ``pid`` from its hello (``ready`` turns true then).
    """

    __slots__ = ("role", "token", "rank", "pid", "ready", "outstanding", "_reader")

    def __init__(self, role: str, token: bytes) -> None:
        if role not in (HOST, AGENT):
            raise ValueError(f"role must be {HOST!r} or {AGENT!r}, not {role!r}")
        if len(token) != w.TOKEN_SIZE:
            raise ValueError(f"token must be {w.TOKEN_SIZE} bytes, not {len(token)}")
        self.role = role
        self.token = token
        self.rank = -1
        self.pid = 0
        self.ready = False
        self.outstanding: list[int] = []
        self._reader = w.FrameReader(MAX_CONTROL_FRAME)

    # -- what a side sends ----------------------------------------------------------------
    def hello(self, rank: int, pid: int) -> bytes:
        """Agent: the first frame of the connection."""
        self._must_be(AGENT)
        self.rank, self.pid, self.ready = rank, pid, True
        return w.encode(w.HELLO, self.token, rank, pid)

    def flushed(self, version: int) -> bytes:
        """Agent: user-space buffers are flushed for barrier ``version``."""
        self._must_be(AGENT)
        return w.encode(w.FLUSHED, version)

    def force_sync_flush(self, version: int) -> bytes:
        """Host: ask the child to flush its buffers for barrier ``version``."""
        self._must_be(HOST)
        self.outstanding.append(version)
        return w.encode(w.FORCE_SYNC_FLUSH, version)

    def set_level(self, level: int) -> bytes:
        """Host: set the child's root logging level."""
        self._must_be(HOST)
        return w.encode(w.SET_LEVEL, level)

    def welcome(self) -> bytes:
        """Host: the hello was accepted."""
        self._must_be(HOST)
        return w.encode(w.WELCOME)

    def reject(self) -> bytes:
        """Host: refuse the connection (bad hello)."""
        self._must_be(HOST)
        return w.encode(w.REJECT)

    # -- what a side receives -------------------------------------------------------------
    def receive(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete, in order.

        Raises :class:`ProtocolError` when the peer breaks the protocol.
        """
        try:
            frames = self._reader.feed(data)
        except w.FrameError as exc:
            raise ProtocolError(str(exc)) from None
        events: list[Event] = []
        for kind, payload in frames:
            try:
                fields = w.decode(kind, payload)
            except w.FrameError as exc:
                raise ProtocolError(str(exc)) from None
            if self.role == HOST:
                events.append(self._host_event(kind, fields))
            else:
                events.append(self._agent_event(kind, fields))
        return events

    def _host_event(self, kind: int, fields: tuple) -> Event:
        if not self.ready:
            if kind != w.HELLO:
                raise ProtocolError(f"expected a hello, got frame type {kind}")
            token, rank, pid = fields
            if not compare_digest(token, self.token):
                raise ProtocolError("bad token")
            if rank < 0 or pid <= 0:
                raise ProtocolError(f"bad hello: rank {rank}, pid {pid}")
            self.rank, self.pid, self.ready = rank, pid, True
            return (w.HELLO, rank)
        if kind != w.FLUSHED:
            raise ProtocolError(f"unexpected frame type {kind} from an agent")
        (version,) = fields
        try:
            self.outstanding.remove(version)
        except ValueError:
            raise ProtocolError(f"answer to barrier {version}, which was not asked") from None
        return (w.FLUSHED, version)

    def _agent_event(self, kind: int, fields: tuple) -> Event:
        if kind in (w.FORCE_SYNC_FLUSH, w.SET_LEVEL):
            return (kind, fields[0])
        if kind in (w.REJECT, w.WELCOME):
            return (kind, 0)
        raise ProtocolError(f"unexpected frame type {kind} from a host")

    def _must_be(self, role: str) -> None:
        if self.role != role:
            raise ProtocolError(f"only the {role} side sends this")
