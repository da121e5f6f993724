"""A host link's transport: TLS over TCP, socket settings from ``dead_after``, and one
connection's I/O loop (used by the agent here and by the driver in ``hostmesh``).

* **Dialing** (the agent): TCP to the driver's address, TLS 1.3, and the driver's certificate
  checked against the join document -- pinned by its SHA-256 fingerprint for the run's own
  self-signed certificate, or verified against the user's CA with its name.
* **Socket settings**: keepalive probes and ``TCP_USER_TIMEOUT`` follow ``dead_after``, so a
  write on a partitioned link fails within about ``dead_after`` instead of blocking for
  minutes (measured here: more than 20 s without it).
* **One connection's I/O** (:class:`LinkIO`): whatever a side queues with :meth:`LinkIO.send`
  goes out from one writer task, whole frames in one ``send_all``.  A network write is never
  shielded from cancellation: a cancelled write breaks the connection, and the link's
  protocol (epochs, resumption) makes that safe.  :meth:`LinkIO.receive` feeds the
  :class:`~trio_logmesh.protocol._link.LinkConnection` and notes when the peer was last heard.
"""

from __future__ import annotations

import hashlib
import socket
import ssl

import attrs
import trio

from .._errors import LogmeshError
from ..protocol._join import JoinInfo
from ..protocol._link import Event, LinkConnection

RECV_SIZE = 256 * 1024


class LinkRefused(LogmeshError):
    """The agent cannot join: the driver refused it, or its certificate does not match."""


def tune_socket(sock: socket.socket, dead_after: float) -> None:
    """Keepalive and ``TCP_USER_TIMEOUT`` from ``dead_after`` (seconds), and no Nagle delay.
    Options the system lacks are skipped."""
    idle = max(1, int(dead_after / 3))
    settings = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None),
         max(1000, int(dead_after * 1000))),
    ]
    for level, option, value in settings:
        if option is not None:
            try:
                sock.setsockopt(level, option, value)
            except OSError:
                pass


def client_context(join: JoinInfo) -> ssl.SSLContext:
    """The agent's TLS 1.3 context for ``join``: trusting only the run's certificate, or the
    user's CA (then checking the certificate's name too)."""
    ctx = ssl.create_default_context(cadata=join.ca or join.cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    # A pinned certificate is checked by its fingerprint, not by a name: agents dial whatever
    # address the driver is reachable at.
    ctx.check_hostname = bool(join.ca)
    return ctx


async def dial(join: JoinInfo, dead_after: float, bind: str | None = None) -> trio.SSLStream:
    """Connect to the driver of ``join`` over TLS (from address ``bind`` when given).

    Raises :class:`LinkRefused` when the driver's certificate is not the one the join
    document names, ``OSError`` when the driver cannot be reached.
    """
    tcp = await trio.open_tcp_stream(join.host, join.port, local_address=bind)
    tune_socket(tcp.socket, dead_after)  # type: ignore[arg-type]
    tls = trio.SSLStream(tcp, client_context(join),
                         server_hostname=join.server_name or join.host if join.ca else None)
    try:
        await tls.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(tls)
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise LinkRefused(
                f"the driver at {join.host}:{join.port} presented a certificate that does not "
                f"match the join document ({cause.verify_message}): a stale or tampered join "
                "file, or someone else at that address"
            ) from None
        raise OSError(f"TLS with {join.host}:{join.port} failed: {cause or exc}") from None
    if join.fingerprint:
        der = tls.getpeercert(binary_form=True) or b""
        if hashlib.sha256(der).hexdigest() != join.fingerprint.lower():
            await trio.aclose_forcefully(tls)
            raise LinkRefused(
                f"the driver at {join.host}:{join.port} presented a certificate whose "
                "fingerprint does not match the join document: a tampered join file, or "
                "someone else at that address"
            )
    return tls


@attrs.define(eq=False)
class LinkIO:
    """One connection of a host link: the stream, its protocol state, what waits to be sent.

    ``last_heard`` is the trio time anything last arrived from the peer.  :meth:`send` never
    blocks: the bytes wait for the writer task (:meth:`run_writer`).
    """

    stream: trio.abc.Stream
    conn: LinkConnection
    last_heard: float = attrs.field(factory=trio.current_time)
    broken: bool = False
    _out: bytearray = attrs.field(factory=bytearray)
    _wake: trio.Event = attrs.field(factory=trio.Event)

    def send(self, data: bytes) -> None:
        """Queue ``data`` (whole frames) for the writer."""
        if not self.broken:
            self._out += data
            self._wake.set()

    @property
    def queued(self) -> int:
        """Bytes queued and not yet handed to the stream."""
        return len(self._out)

    async def run_writer(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """Send what is queued, in order, until cancelled or the stream breaks or is closed.
        Then it closes the stream, so that the reader (:meth:`receive`) wakes up and the
        connection ends there, with one reason, and returns."""
        task_status.started()
        try:
            while True:
                if not self._out:
                    self._wake = trio.Event()
                    await self._wake.wait()
                data, self._out = self._out, bytearray()
                await self.stream.send_all(data)  # never shielded: see the module docstring
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.broken = True
            await trio.aclose_forcefully(self.stream)
        except BaseException:
            self.broken = True
            raise

    async def receive(self) -> list[Event]:
        """The next events from the peer.  Raises ``EOFError`` at the end of the stream,
        ``trio.BrokenResourceError`` for a broken one and ``ProtocolError`` for a broken
        peer."""
        while True:
            data = await self.stream.receive_some(RECV_SIZE)
            if not data:
                raise EOFError
            self.last_heard = trio.current_time()
            events = self.conn.receive(data)
            if events:
                return events

    async def run_heartbeats(self, interval: float) -> None:
        """Send a heartbeat every ``interval`` seconds until cancelled."""
        while True:
            self.send(self.conn.heartbeat())
            await trio.sleep(interval)

    async def aclose(self) -> None:
        """Close the stream at once (no TLS goodbye that could block)."""
        self.broken = True
        await trio.aclose_forcefully(self.stream)
