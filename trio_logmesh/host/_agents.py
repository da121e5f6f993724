"""The host's end of ``BOOTSTRAP_LOG_CHANNEL``: a unix socket each Python child's agent dials.

One listener per mesh, in a private 0700 directory.  An agent opens with ``HELLO(token, rank,
pid)`` (checked by the shared :class:`~trio_logmesh.protocol._control.ControlConnection`); the
connection then belongs to that rank (:class:`AgentLink`) until it closes.  Control frames are a
few bytes, so the host sends them without waiting: a peer whose socket buffer is full has not
read for thousands of requests -- it is treated as gone.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

import attrs
import trio

from ..protocol import _wire as w
from ..protocol._control import HOST, ControlConnection, ProtocolError

#: Seconds a new connection has to say hello.
HELLO_TIMEOUT = 5.0
RECV_SIZE = 4096


@attrs.define(eq=False)
class AgentLink:
    """A connected agent: its socket and its end of the control protocol."""

    sock: socket.socket
    conn: ControlConnection
    broken: bool = False

    def send(self, data: bytes) -> None:
        """Send control bytes now.  A link that cannot take them is shut down, so its reader
        sees the end and the rank carries on without it."""
        if self.broken:
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1
        if sent != len(data):
            self.close()

    def close(self) -> None:
        """Shut the connection down (its reader task then ends and closes the socket)."""
        self.broken = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def listen(path: str, backlog: int) -> socket.socket:
    """A non-blocking unix socket listening at ``path`` (a stale file there is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_agents(
    lsock: socket.socket,
    token: bytes,
    on_agent: Callable[[AgentLink], Callable[[AgentLink, int], None] | None],
    on_lost: Callable[[AgentLink], None],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept agents on ``lsock`` until cancelled (then close it).

    ``on_agent(link)`` is called once a connection said a valid hello; it returns the callback
    for that link's ``FLUSHED(version)`` answers, or ``None`` to refuse the link.  ``on_lost(link)``
    is called once an accepted link has closed, whatever the reason.
    """
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(lsock)
                try:
                    sock, _ = lsock.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as exc:  # out of file descriptors: agents wait in the backlog
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        await trio.sleep(0.1)
                        continue
                    raise
                sock.setblocking(False)
                nursery.start_soon(_serve_agent, sock, token, on_agent, on_lost)
    finally:
        trio.lowlevel.notify_closing(lsock)
        lsock.close()


async def _serve_agent(
    sock: socket.socket,
    token: bytes,
    on_agent: Callable[[AgentLink], Callable[[AgentLink, int], None] | None],
    on_lost: Callable[[AgentLink], None],
) -> None:
    conn = ControlConnection(HOST, token)
    link = AgentLink(sock, conn)
    on_flushed: Callable[[AgentLink, int], None] | None = None
    try:
        with trio.move_on_after(HELLO_TIMEOUT):
            while not conn.ready:
                events = conn.receive(await _recv(sock))
                if conn.ready:
                    on_flushed = on_agent(link)
                    if on_flushed is None:
                        link.send(conn.reject())
                        return
                    for kind, value in events[1:]:
                        if kind == w.FLUSHED:
                            on_flushed(link, value)
        if on_flushed is None:
            return
        while True:
            for kind, value in conn.receive(await _recv(sock)):
                if kind == w.FLUSHED:
                    on_flushed(link, value)
    except (ProtocolError, EOFError, OSError):
        pass  # a broken or closed connection ends this link only
    finally:
        link.broken = True
        if on_flushed is not None:
            on_lost(link)
        sock.close()


async def _recv(sock: socket.socket) -> bytes:
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            continue
        if not data:
            raise EOFError
        return data
