"""Trio helpers for framed unix-socket connections (listen, dial, read frames, hello)."""

from __future__ import annotations

import os
import socket as _stdsocket

import trio

from . import _frames as f
from . import _wire as w

RECV_SIZE = 262144


async def unix_listener(path: str, backlog: int = 128) -> trio.SocketListener:
    """Bind and listen on a unix socket path (a stale file at ``path`` is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = trio.socket.socket(_stdsocket.AF_UNIX, _stdsocket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


class FrameStream:
    """A trio stream that yields decoded frames and sends encoded ones whole.

    Writes of whole frames are serialized by a lock and shielded from cancellation: a frame cut
    in half would corrupt every frame after it on the connection.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = w.FrameReader()
        self._lock = trio.Lock()
        self._backlog: list[tuple[int, bytes]] = []

    async def send(self, data: bytes) -> None:
        """Send already-encoded frame bytes (one or many frames)."""
        async with self._lock:
            with trio.CancelScope(shield=True):
                await self.stream.send_all(data)

    async def send_msg(self, msg: f.Message) -> None:
        """Encode and send one message."""
        await self.send(f.encode(msg))

    async def receive_frames(self) -> list[tuple[int, bytes]]:
        """The complete frames of the next received chunk(s); ``[]`` at EOF.

        Raises :class:`~trio_logmesh._wire.FrameError` on an oversized or malformed frame.
        """
        if self._backlog:
            frames, self._backlog = self._backlog, []
            return frames
        while True:
            try:
                data = await self.stream.receive_some(RECV_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return []
            if not data:
                return []
            frames = self.reader.feed(data)
            if frames:
                return frames

    async def first(self) -> tuple[int, bytes] | None:
        """The first frame on the connection (None on EOF before it)."""
        frames = await self.receive_frames()
        if not frames:
            return None
        self._backlog = frames[1:]
        return frames[0]

    async def aclose(self) -> None:
        """Close the underlying stream."""
        await self.stream.aclose()


async def dial(path: str) -> FrameStream:
    """Connect to a unix socket path.  Raises ``OSError`` when nobody serves it."""
    stream = await trio.open_unix_socket(path)
    return FrameStream(stream)
