"""LogForwardActor: hands each rank's ordered stream to the mesh's view, control beside it.

One actor per rank (the seed's component): it knows whether its rank streams to the view, and
takes the rank's frames from its outbox in order -- ``Log`` frames are dropped (and confirmed)
while streaming is off; ``Mark`` and ``Exit`` always pass.  A mesh's actors are driven by one
serve loop per attached view (:meth:`Forwarders.serve_view`, a task in the view's nursery): it
gathers every rank with frames ready into one delivery on the view's memory channel, so a
barrier across 128 ranks wakes the view once, not 128 times.  Ranks take turns, so one
flooding rank cannot starve the others.

The view holds a :class:`ViewLink` while it is the mesh's view: streaming, barriers and levels
per rank, confirmations, and the host's account of a silent rank.  A newer view replaces it:
the old serve loop ends and ``replaced`` is set; the new view resumes every rank at its first
unconfirmed frame.
"""

from __future__ import annotations

import itertools
from collections import deque

import attrs
import trio

from ..protocol._frames import Frame, Log, frame_size
from ._outbox import RankOutbox
from ._rank import RankProc

#: One delivery: some ranks' next frames, in order per rank.
Delivery = list[tuple[int, list[Frame]]]

#: A rank's share of one delivery, and a delivery's size (about), in bytes.
RANK_BATCH_BYTES = 256 * 1024
DELIVERY_BYTES = 1024 * 1024


@attrs.define(eq=False)
class LogForwardActor:
    """One rank's forwarder state; see the module docstring."""

    rank: int
    outbox: RankOutbox
    streaming: bool = True

    def take(self, max_bytes: int) -> list[Frame]:
        """The rank's next frames for the view (``Log`` frames only while streaming)."""
        frames = self.outbox.take(max_bytes)
        if self.streaming or not frames:
            return frames
        kept = [f for f in frames if not isinstance(f, Log)]
        if len(kept) != len(frames):
            # Nobody will confirm frames never sent: confirm them here, or the "block" policy
            # would hold the child back for output nobody shows.
            self.outbox.confirm(max(f.seq for f in frames if isinstance(f, Log)))
        return kept


class ViewLink:
    """The view's handle on the mesh's ranks while it is the mesh's view."""

    def __init__(self, forwarders: Forwarders) -> None:
        self._fw = forwarders
        #: Set when a newer view took the mesh over; this link's serve loop has ended.
        self.replaced = trio.Event()
        self._scope = trio.CancelScope()

    @property
    def size(self) -> int:
        """The number of ranks."""
        return len(self._fw.ranks)

    def new_version(self) -> int:
        """A barrier version no other view of this mesh ever used."""
        return next(self._fw.versions)

    def set_streaming(self, rank: int, on: bool) -> None:
        """Stream ``rank``'s lines to the view, or not (marks and the exit always come)."""
        if not self.replaced.is_set():
            self._fw.actors[rank].streaming = on

    def force_sync_flush(self, rank: int, version: int) -> None:
        """Put ``Mark(version)`` in ``rank``'s stream behind every byte it wrote before now."""
        if self.replaced.is_set():
            return
        outbox = self._fw.ranks[rank].outbox
        self._fw.ranks[rank].barrier(lambda: outbox.append_mark(version))

    def set_level(self, rank: int, level: int) -> None:
        """Set the root logging level of ``rank``'s Python process (if it has an agent)."""
        if not self.replaced.is_set():
            self._fw.ranks[rank].set_level(level)

    def confirm(self, rank: int, seq: int) -> None:
        """The view has handled ``rank``'s frames up to ``seq``: the host may forget them."""
        self._fw.ranks[rank].outbox.confirm(seq)

    def describe(self, rank: int) -> str:
        """The host's account of why ``rank`` has not answered a barrier."""
        return self._fw.ranks[rank].describe()

    def origin(self, rank: int) -> tuple[str, int]:
        """``(hostname, pid)`` of ``rank``."""
        return self._fw.hostname, self._fw.ranks[rank].process.pid

    def _replace(self) -> None:
        self.replaced.set()
        self._scope.cancel()


@attrs.define(eq=False)
class Forwarders:
    """The LogForwardActors of a mesh and the serve loop that feeds its view."""

    ranks: list[RankProc]
    actors: list[LogForwardActor]
    hostname: str = ""
    versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1))
    _ready: deque[int] = attrs.field(factory=deque)
    _is_ready: set[int] = attrs.field(factory=set)
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _view: ViewLink | None = None

    def on_ready(self, rank: int) -> None:
        """``rank``'s outbox has frames to take (its ``on_ready`` callback)."""
        if rank not in self._is_ready:
            self._is_ready.add(rank)
            self._ready.append(rank)
            self._wake.set()

    async def serve_view(
        self,
        inbox: trio.MemorySendChannel[Delivery],
        task_status: trio.TaskStatus[ViewLink] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Become the mesh's view: deliver every rank's frames into ``inbox`` until cancelled
        or replaced by a newer view.  Starts (``task_status.started(link)``) with every rank
        streaming and rewound to its first unconfirmed frame."""
        old = self._view
        if old is not None:
            old._replace()
        link = self._view = ViewLink(self)
        for actor in self.actors:
            actor.streaming = True
            actor.outbox.rewind()
        task_status.started(link)
        try:
            with link._scope:
                while True:
                    if not self._ready:
                        self._wake = trio.Event()
                        await self._wake.wait()
                    if link.replaced.is_set():
                        return  # woken in the same tick as the replacement: take nothing
                    delivery = self._collect()
                    if delivery:
                        await inbox.send(delivery)
        finally:
            if self._view is link:
                self._view = None

    def _collect(self) -> Delivery:
        delivery: Delivery = []
        size = 0
        for _ in range(len(self._ready)):
            rank = self._ready.popleft()
            actor = self.actors[rank]
            frames = actor.take(RANK_BATCH_BYTES)
            if actor.outbox.has_unsent:
                self._ready.append(rank)  # its turn comes again after the others'
            else:
                self._is_ready.discard(rank)
            if frames:
                delivery.append((rank, frames))
                size += sum(frame_size(f) for f in frames)
                if size >= DELIVERY_BYTES:
                    break
        return delivery
