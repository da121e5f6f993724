"""A mesh without processes, for view tests on trio's MockClock.

It implements the view's public seam (``trio_logmesh.view._port.MeshPort``): the test appends
frames per rank and decides when barriers are answered, and can read back what the view asked
for (streaming, levels, confirmations).
"""

from __future__ import annotations

import itertools
import math

import trio

from trio_logmesh.protocol._frames import Exit, Frame, Log, Mark


class FakeLink:
    """What the client holds while it is the fake mesh's view."""

    def __init__(self, mesh: FakeMesh) -> None:
        self.mesh = mesh
        self.replaced = trio.Event()
        self.scope = trio.CancelScope()

    def new_version(self) -> int:
        return next(self.mesh.versions)

    def set_streaming(self, rank: int, on: bool) -> None:
        self.mesh.streaming[rank] = on

    def force_sync_flush(self, rank: int, version: int) -> None:
        self.mesh.asked.append((rank, version))
        if self.mesh.auto_answer:
            self.mesh.mark(rank, version)

    def set_level(self, rank: int, level: int) -> None:
        self.mesh.levels[rank] = level

    def confirm(self, rank: int, seq: int) -> None:
        self.mesh.confirmed[rank] = max(self.mesh.confirmed.get(rank, 0), seq)

    def describe(self, rank: int) -> str:
        return f"fake reason for {rank}"

    def origin(self, rank: int) -> tuple[str, int]:
        return "fakehost", 1000 + rank


class FakeMesh:
    """``size`` ranks whose frames the test appends; barriers answered at once unless
    ``auto_answer`` is False (then the test calls :meth:`mark`)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.versions = itertools.count(1)
        self.auto_answer = True
        self.asked: list[tuple[int, int]] = []
        self.streaming: dict[int, bool] = {}
        self.levels: dict[int, int] = {}
        self.confirmed: dict[int, int] = {}
        self._seq = [0] * size
        self._link: FakeLink | None = None
        # Frames wait here (unbounded: a test appends faster than a view takes) until the
        # serve loop hands them to the view, one frame per delivery.
        self._queue, self._frames = trio.open_memory_channel[tuple[int, list[Frame]]](math.inf)

    async def serve_view(self, inbox, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if self._link is not None:
            self._link.replaced.set()
            self._link.scope.cancel()  # the older view's serve loop ends, as a mesh's does
        self._link = link = FakeLink(self)
        task_status.started(link)
        with trio.CancelScope() as scope:
            link.scope = scope
            async for item in self._frames:
                await inbox.send([item])

    def _put(self, rank: int, frame_of) -> None:
        self._seq[rank] += 1
        self._queue.send_nowait((rank, [frame_of(self._seq[rank])]))

    def log(self, rank: int, data: bytes, *, stream: int = 0, partial: bool = False,
            dropped: int = 0) -> None:
        self._put(rank, lambda seq: Log(seq, stream, data, dropped, partial))

    def mark(self, rank: int, version: int) -> None:
        self._put(rank, lambda seq: Mark(seq, version))

    def exit(self, rank: int, code: int = 0) -> None:
        self._put(rank, lambda seq: Exit(seq, code))
