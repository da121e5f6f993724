"""RankOutbox: one rank's ordered, sequence-numbered frame log on the host.

Both StreamFwders of a rank append their frames here (stdout and stderr interleaved in the
order they were read).  One consumer at a time -- the LocalLogSender feeding the in-child
forwarder, or the host-side forwarder feeding a client -- takes them in order from its cursor.

A frame stays here until the client confirms it was delivered (``Ack``).  So when the in-child
forwarder dies with frames it never relayed (the child exited), or a client joins late, the
new consumer rewinds to the last sequence number the client saw and nothing is lost or
repeated.  When unconfirmed frames exceed ``limit_bytes`` -- the live view is slower than the
child, or no client is listening -- the policy decides: ``"drop"`` evicts the oldest ``LOG``
frames (the receiver sees the gap in line numbers and reports it as a count), ``"block"`` makes
the StreamFwders stop reading the pipes until the client catches up.  Barrier markers and the
exit frame are never dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Literal

import attrs
import trio

from . import _wire as w

Policy = Literal["drop", "block"]

#: Bytes handed to one ``send_all`` at most (frames are coalesced up to this size).
BATCH_BYTES = 256 * 1024


@attrs.define
class RankOutbox:
    """Sequence-numbered frames of one rank; see the module docstring."""

    limit_bytes: int = 4 * 1024 * 1024
    policy: Policy = "drop"
    _ring: deque[tuple[int, int, bytes]] = attrs.field(factory=deque)  # (seq, kind, frame)
    _kept_controls: list[tuple[int, int, bytes]] = attrs.field(factory=list)
    _ring_bytes: int = 0
    _next_seq: int = 1
    _send_from: int = 1
    _replay_from: int | None = None
    _changed: trio.Event = attrs.field(factory=trio.Event)
    _room: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended frame will get."""
        return self._next_seq

    @property
    def held_bytes(self) -> int:
        """Bytes of frames not yet confirmed by a client."""
        return self._ring_bytes

    def append(self, kind: int, encode: Callable[[int], bytes]) -> int:
        """Add a frame built by ``encode(seq)``; return its sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        data = encode(seq)
        self._ring.append((seq, kind, data))
        self._ring_bytes += len(data)
        if self.policy == "drop":
            while self._ring_bytes > self.limit_bytes and len(self._ring) > 1:
                old = self._ring.popleft()
                self._ring_bytes -= len(old[2])
                if old[1] != w.LOG:
                    # Never lose a barrier marker or the exit frame, even when its data was
                    # dropped: the receiver gets it after the gap.
                    self._kept_controls.append(old)
        self._changed.set()
        return seq

    def confirm(self, seq: int) -> None:
        """The client has every frame up to ``seq``: forget them."""
        ring = self._ring
        while ring and ring[0][0] <= seq:
            self._ring_bytes -= len(ring.popleft()[2])
        if self._kept_controls:
            self._kept_controls = [c for c in self._kept_controls if c[0] > seq]
        if self._ring_bytes <= self.limit_bytes:
            self._room.unpark_all()

    def set_policy(self, policy: Policy) -> None:
        """Change the policy (the mesh switches to ``"drop"`` to drain pipes at teardown)."""
        self.policy = policy
        self._room.unpark_all()

    async def wait_room(self) -> None:
        """With the ``"block"`` policy, wait while more than ``limit_bytes`` are unconfirmed."""
        # One parking lot for every waiting reader (stdout and stderr): each wake-up reaches all.
        while self.policy == "block" and self._ring_bytes > self.limit_bytes:
            await self._room.park()

    def rewind(self, after_seq: int) -> None:
        """The next batch replays every frame after ``after_seq`` that is still here.

        A client resuming after ``after_seq`` has every frame up to it: that confirms them
        (its last ``Ack`` may have died with the forwarder that was to relay it).
        """
        self.confirm(after_seq)
        self._send_from = after_seq + 1
        self._replay_from = after_seq + 1
        self._changed.set()

    def _collect(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        if self._replay_from is not None:
            parts.append(w.frame(w.REPLAY, w.U64.pack(self._replay_from)))
            self._replay_from = None
        start = self._send_from
        last_seq = start - 1
        for seq, _kind, data in self._kept_controls:
            if seq >= start:
                parts.append(data)
                size += len(data)
                last_seq = max(last_seq, seq)
        ring = self._ring
        if ring:
            first = ring[0][0]
            idx = max(0, start - first)
            n = len(ring)
            while idx < n and size < BATCH_BYTES:
                seq, _kind, data = ring[idx]
                parts.append(data)
                size += len(data)
                last_seq = seq
                idx += 1
        self._send_from = max(start, last_seq + 1)
        return b"".join(parts)

    async def take(self) -> bytes:
        """Wait for frames after the cursor; return them coalesced (up to ``BATCH_BYTES``)."""
        while True:
            if self._replay_from is not None or self._send_from < self._next_seq:
                data = self._collect()
                if data:
                    return data
            self._changed = trio.Event()
            await self._changed.wait()
