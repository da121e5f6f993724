"""RankOutbox: one rank's ordered, sequence-numbered frames on the host.

Both StreamFwders of a rank append ``Log`` frames here (stdout and stderr interleaved in the
order they were read), the barrier appends ``Mark`` frames behind them, the rank's end appends
``Exit``.  The forwarder takes them in order from a cursor and hands them to the view; a frame
stays here until the view confirms it, so a view that takes over from another one -- or, across
hosts, reconnects -- resumes at the first unconfirmed frame and nothing is lost or repeated.

When unconfirmed frames exceed ``limit_bytes`` (the view is slower than the child, or no view
is attached yet) the policy decides: ``"drop"`` evicts the oldest ``Log`` frames, ``"block"``
makes the StreamFwders stop reading the pipes until the view catches up.  ``Mark`` and ``Exit``
are never dropped.  Lines are counted only when dropped: each ``Log`` frame carries how many
lines of the rank (both streams) were dropped before it, in all, and the view reports what that
grew by.  Evictions happen only as a ``Log`` frame arrives, which then carries the new count,
and the newest frame is never the one evicted: every drop is reported.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from ..protocol._frames import FRAME_OVERHEAD, Exit, Frame, Log, Mark, frame_size

Policy = Literal["drop", "block"]


@attrs.define(eq=False)
class RankOutbox:
    """The frames of one rank; see the module docstring.

    ``on_ready`` is called when frames become available to :meth:`take` after the cursor had
    caught up (or after a rewind): the forwarder's cue to come and take them.
    """

    limit_bytes: int = 4 * 1024 * 1024
    policy: Policy = "drop"
    on_ready: Callable[[], None] | None = None
    # The ring holds a contiguous range of sequence numbers: frames enter on the right and
    # leave on the left (confirmed, or dropped by the "drop" policy).
    _ring: deque[Frame] = attrs.field(factory=deque)
    #: Marks and exits the "drop" policy pushed out of the ring: they are delivered anyway.
    _kept: list[Frame] = attrs.field(factory=list)
    _ring_bytes: int = 0
    #: Lines dropped from the live view so far (evicted before the view took them).
    _dropped: int = 0
    _next_seq: int = 1
    _send_from: int = 1
    #: The rank's end, once appended: a view that takes over always learns of it.
    _exit: Exit | None = None
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    @property
    def held_bytes(self) -> int:
        """Bytes of frames not yet confirmed by the view."""
        return self._ring_bytes

    @property
    def has_unsent(self) -> bool:
        """Whether :meth:`take` would return frames."""
        return self._send_from < self._next_seq

    # -- producers -------------------------------------------------------------------------
    def append_log(self, stream: int, data: bytes, partial: bool, progress: bool) -> None:
        """Add a ``Log`` frame."""
        size = len(data) + FRAME_OVERHEAD
        if self.policy == "drop":
            self._make_room(size)
        self._append(
            Log(self._next_seq, stream, data, self._dropped, partial, progress), size
        )

    def append_mark(self, version: int) -> None:
        """Add barrier ``version``'s marker behind everything appended so far."""
        self._append(Mark(self._next_seq, version), FRAME_OVERHEAD)

    def append_exit(self, code: int) -> None:
        """Add the rank's exit (only barrier markers may follow it)."""
        self._exit = Exit(self._next_seq, code)
        self._append(self._exit, FRAME_OVERHEAD)

    def _make_room(self, size: int) -> None:
        # Evict before the new frame is built, so it already carries the count of what its
        # arrival pushed out.
        ring = self._ring
        while ring and self._ring_bytes + size > self.limit_bytes:
            old = ring.popleft()
            self._ring_bytes -= frame_size(old)
            if not isinstance(old, Log):
                self._kept.append(old)  # never lose a marker or the exit: deliver it anyway
            elif old.seq >= self._send_from:  # taken frames still reach the view
                self._dropped += old.data.count(b"\n")

    def _append(self, frame: Frame, size: int) -> None:
        caught_up = self._send_from == self._next_seq
        self._next_seq += 1
        self._ring.append(frame)
        self._ring_bytes += size
        if caught_up and self.on_ready is not None:
            self.on_ready()

    # -- the consumer ----------------------------------------------------------------------
    def take(self, max_bytes: int) -> list[Frame]:
        """The frames after the cursor, in order, up to about ``max_bytes`` (at least one when
        there is one); moves the cursor past them."""
        start = self._send_from
        out: list[Frame] = [f for f in self._kept if f.seq >= start] if self._kept else []
        ring = self._ring
        if ring:
            start = max(start, ring[0].seq)  # what lies before the ring is gone
            idx = start - ring[0].seq
            n = len(ring)
            size = 0
            while idx < n and (size < max_bytes or not out):
                frame = ring[idx]
                out.append(frame)
                size += frame_size(frame)
                idx += 1
        else:
            start = self._next_seq
        self._send_from = out[-1].seq + 1 if out else max(self._send_from, start)
        return out

    def confirm(self, seq: int) -> None:
        """The view has every frame up to ``seq``: forget them."""
        ring = self._ring
        while ring and ring[0].seq <= seq:
            self._ring_bytes -= frame_size(ring.popleft())
        if self._kept:
            self._kept = [f for f in self._kept if f.seq > seq]
        if self._ring_bytes <= self.limit_bytes:
            self._room.unpark_all()

    def rewind(self) -> None:
        """Move the cursor back to the first unconfirmed frame (a new view takes over); the
        rank's exit comes again even if the previous view confirmed it."""
        firsts = [self._next_seq]
        if self._kept:
            firsts.append(self._kept[0].seq)
        if self._ring:
            firsts.append(self._ring[0].seq)
        start = min(firsts)
        exit_ = self._exit
        if exit_ is not None and exit_.seq < start:
            self._kept.insert(0, exit_)
            start = exit_.seq
        self._send_from = start
        if self.has_unsent and self.on_ready is not None:
            self.on_ready()

    # -- the policy ------------------------------------------------------------------------
    def set_policy(self, policy: Policy) -> None:
        """Change the policy (the mesh switches to ``"drop"`` to drain pipes at teardown)."""
        self.policy = policy
        self._room.unpark_all()

    async def wait_room(self) -> None:
        """With the ``"block"`` policy, wait while more than ``limit_bytes`` are unconfirmed."""
        # One parking lot for every waiting reader (stdout and stderr): each wake-up reaches all.
        while self.policy == "block" and self._ring_bytes > self.limit_bytes:
            await self._room.park()
