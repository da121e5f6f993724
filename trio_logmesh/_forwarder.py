"""The host-side LogForwardActor: serves a rank's channel when no in-child forwarder can.

A non-Python child (a shell script, a C binary) cannot host a forwarder, and a Python child's
forwarder dies with the child while the host still reads its last lines from the pipes.  In
both cases this object serves the rank on the host, straight from the rank's outbox, with the
same protocol as the in-child forwarder (``_boot/_logmesh_agent.py``): a client connects, says
which sequence number it saw last, and gets everything after it, then the exit frame.
"""

from __future__ import annotations

import contextlib
import hmac
import os
from collections.abc import Callable, Iterator

import attrs
import trio
import trio_util

from . import _frames as f
from . import _wire as w
from ._channel import FrameStream, unix_listener
from ._outbox import RankOutbox

HELLO_TIMEOUT = 5.0


def drop_logs(data: bytes) -> bytes:
    """Remove ``LOG`` frames from a run of encoded frames (streaming is off)."""
    out = []
    pos = 0
    n = len(data)
    while pos < n:
        kind, length = w.HEADER.unpack_from(data, pos)
        end = pos + w.HEADER_SIZE + length
        if kind != w.LOG:
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


@attrs.define(eq=False)
class HostLogForwarder:
    """Serves one rank's channel at ``path`` from its ``outbox``; see the module docstring."""

    rank: int
    path: str
    token: bytes
    outbox: RankOutbox
    cut_pipes: Callable[[int], None]
    pid: int
    hostname: str
    heartbeat_sec: float = 1.0
    streaming: bool = True
    _client_scope: trio.CancelScope | None = None
    _client_fs: FrameStream | None = None

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, then serve clients until cancelled; one client at a time (a new one wins)."""
        listener = await unix_listener(self.path)
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    stream = await listener.accept()
                    nursery.start_soon(self._handle, stream)
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _handle(self, stream: trio.SocketStream) -> None:
        fs = FrameStream(stream)
        try:
            async with stream:
                first = None
                with trio.move_on_after(HELLO_TIMEOUT):
                    first = await fs.first()
                hello = _parse_client_hello(first, self.token)
                if hello is None:
                    if first is not None:
                        await fs.send(w.frame(w.REJECT))
                    return
                if self._client_scope is not None:  # a newer client takes over
                    if self._client_fs is not None:
                        with contextlib.suppress(trio.BrokenResourceError,
                                                 trio.ClosedResourceError):
                            await self._client_fs.send(w.frame(w.REJECT))
                    self._client_scope.cancel()
                with trio.CancelScope() as scope:
                    self._client_scope, self._client_fs = scope, fs
                    await self._serve_client(fs, hello)
        except (trio.BrokenResourceError, trio.ClosedResourceError, w.FrameError):
            return  # the client went away or sent garbage: drop that connection only

    async def _serve_client(self, fs: FrameStream, hello: f.Hello) -> None:
        self.streaming = True
        self.outbox.rewind(hello.resume_after)
        await fs.send_msg(f.Welcome(self.rank, self.pid, w.KIND_HOST, self.hostname))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, fs, nursery.cancel_scope)
            nursery.start_soon(self._beat, fs, nursery.cancel_scope)
            with _ends(nursery.cancel_scope):
                await self._control(fs)
            nursery.cancel_scope.cancel()

    async def _pump(self, fs: FrameStream, done: trio.CancelScope) -> None:
        with _ends(done):
            while True:
                data = await self.outbox.take()
                if not self.streaming:
                    kept = drop_logs(data)
                    if len(kept) != len(data):
                        # Nobody will confirm frames not sent: confirm them here, or the
                        # "block" policy would stall the child forever.
                        self.outbox.confirm(_last_seq(data))
                    data = kept
                if data:
                    await fs.send(data)

    async def _beat(self, fs: FrameStream, done: trio.CancelScope) -> None:
        beat = w.frame(w.HEARTBEAT)
        with _ends(done):
            async for _ in trio_util.periodic(self.heartbeat_sec):
                await fs.send(beat)

    async def _control(self, fs: FrameStream) -> None:
        while frames := await fs.receive_frames():
            for kind, payload in frames:
                msg = f.decode(kind, payload)
                if isinstance(msg, f.SetMode):
                    self.streaming = msg.stream_to_client
                elif isinstance(msg, f.ForceSyncFlush):
                    self.cut_pipes(msg.version)
                elif isinstance(msg, f.Ack):
                    self.outbox.confirm(msg.seq)
                # SetLevel: there is no Python runtime here to obey it.


@contextlib.contextmanager
def _ends(scope: trio.CancelScope) -> Iterator[None]:
    """A broken connection ends the whole client session quietly (not as an error group)."""
    try:
        yield
    except (trio.BrokenResourceError, trio.ClosedResourceError, w.FrameError):
        scope.cancel()


def _last_seq(data: bytes) -> int:
    """The sequence number of the last data frame in a run of encoded frames."""
    pos, last = 0, 0
    while pos < len(data):
        kind, length = w.HEADER.unpack_from(data, pos)
        if kind in (w.LOG, w.MARK, w.EXIT):
            last = w.U64.unpack_from(data, pos + w.HEADER_SIZE)[0]
        pos += w.HEADER_SIZE + length
    return last


def _parse_client_hello(first: tuple[int, bytes] | None, token: bytes) -> f.Hello | None:
    if first is None or first[0] != w.HELLO:
        return None
    try:
        hello = f.decode(*first)
    except w.FrameError:
        return None
    assert isinstance(hello, f.Hello)
    if hello.role != w.ROLE_CLIENT or not hmac.compare_digest(hello.token, token):
        return None
    return hello
