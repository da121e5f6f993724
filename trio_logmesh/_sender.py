"""LocalLogSender: the host's connection to the forwarder inside a Python child.

It dials ``BOOTSTRAP_LOG_CHANNEL`` once the child serves it, sends the rank's outbox over it in
order, and obeys what the forwarder asks back: ``Resume`` (a client joined: replay what it has
not seen) and ``FlushPipes`` (the child flushed its buffers: cut both pipes for a barrier).
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from . import _frames as f
from . import _wire as w
from ._channel import FrameStream, dial
from ._outbox import RankOutbox


async def connect_agent(
    path: str, token: bytes, rank: int, give_up: trio.Event, timeout: float
) -> FrameStream | None:
    """Dial the in-child forwarder until it answers, ``give_up`` is set, or ``timeout`` passes."""
    delay = 0.005
    with trio.move_on_after(timeout):
        while not give_up.is_set():
            try:
                fs = await dial(path)
            except OSError:
                with trio.move_on_after(delay):
                    await give_up.wait()
                delay = min(delay * 2, 0.1)
                continue
            try:
                await fs.send_msg(f.Hello(w.ROLE_HOST, token, rank, 0))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                await fs.aclose()
                continue
            return fs
    return None


async def run_local_log_sender(
    fs: FrameStream, outbox: RankOutbox, cut_pipes: Callable[[int], None]
) -> None:
    """Pump ``outbox`` into the connection and handle what comes back, until it breaks."""
    try:
        async with trio.open_nursery() as nursery:

            async def pump() -> None:
                try:
                    while True:
                        await fs.send(await outbox.take())
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    nursery.cancel_scope.cancel()

            nursery.start_soon(pump)
            try:
                while frames := await fs.receive_frames():
                    for kind, payload in frames:
                        if kind == w.RESUME:
                            outbox.rewind(w.U64.unpack(payload)[0])
                        elif kind == w.FLUSH_PIPES:
                            cut_pipes(w.I64.unpack(payload)[0])
                        elif kind == w.ACK:
                            outbox.confirm(w.U64.unpack(payload)[0])
            except w.FrameError:
                pass
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await fs.aclose()
