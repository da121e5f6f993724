"""RankOutbox: one rank's ordered, sequence-numbered frame log on the host.

Both StreamFwders of a rank append their frames here (stdout and stderr interleaved in the
order they were read).  One consumer at a time -- the LocalLogSender feeding the in-child
forwarder, or the host-side forwarder feeding a client -- takes them in order from its cursor.

The outbox is also the replay buffer: frames stay after they were sent, up to ``limit_bytes``,
so that when the in-child forwarder dies with unrelayed frames (the child exited) or a client
joins late, the new consumer rewinds to the last sequence number the client saw and nothing is
lost or repeated.  When the consumer is slower than the child and the policy is ``"drop"``,
the oldest ``LOG`` frames are evicted before they were sent; the receiver sees the gap in line
numbers and reports it as a count.  Barrier markers and the exit frame are never dropped.
"""

from __future__ import annotations

from collections import deque
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
    _room: trio.Event = attrs.field(factory=trio.Event)
    consumers: int = 0

    @property
    def next_seq(self) -> int:
        """The sequence number the next appended frame will get."""
        return self._next_seq

    def unsent_bytes(self) -> int:
        """Bytes of frames the current consumer has not taken yet (an upper bound)."""
        if not self._ring:
            return 0
        first = self._ring[0][0]
        if self._send_from <= first:
            return self._ring_bytes
        # Frames are roughly uniform in a flood; this estimate only steers back-pressure.
        unsent = self._next_seq - self._send_from
        return self._ring_bytes * unsent // max(1, len(self._ring))

    def append(self, kind: int, encode: object) -> int:
        """Add a frame built by ``encode(seq) -> bytes``; return its sequence number."""
        seq = self._next_seq
        self._next_seq += 1
        data = encode(seq)  # type: ignore[operator]
        self._ring.append((seq, kind, data))
        self._ring_bytes += len(data)
        while self._ring_bytes > self.limit_bytes and len(self._ring) > 1:
            old = self._ring.popleft()
            self._ring_bytes -= len(old[2])
            if old[1] != w.LOG and old[0] >= self._send_from:
                # Never lose a barrier marker or the exit frame, even when its data was dropped.
                self._kept_controls.append(old)
        self._changed.set()
        return seq

    async def wait_room(self) -> None:
        """With the ``"block"`` policy, wait while the consumer is too far behind."""
        while self.policy == "block" and self.consumers and self.unsent_bytes() > (
            self.limit_bytes // 2
        ):
            self._room = trio.Event()
            await self._room.wait()

    def rewind(self, after_seq: int) -> None:
        """The next consumer batch replays every frame after ``after_seq`` that is still here."""
        self._send_from = after_seq + 1
        self._replay_from = after_seq + 1
        self._changed.set()

    def skip_all(self) -> None:
        """Mark everything appended so far as taken (no one is listening)."""
        self._send_from = self._next_seq
        self._kept_controls.clear()
        self._room.set()

    def _collect(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        if self._replay_from is not None:
            parts.append(w.frame(w.REPLAY, w.U64.pack(self._replay_from)))
            self._replay_from = None
        start = self._send_from
        if self._kept_controls:
            for seq, _kind, data in self._kept_controls:
                if seq >= start:
                    parts.append(data)
                    size += len(data)
            self._kept_controls.clear()
        ring = self._ring
        if ring:
            first = ring[0][0]
            idx = max(0, start - first)
            last_seq = start - 1
            n = len(ring)
            while idx < n and size < BATCH_BYTES:
                seq, _kind, data = ring[idx]
                parts.append(data)
                size += len(data)
                last_seq = seq
                idx += 1
            self._send_from = max(start, last_seq + 1)
        if self._send_from >= self._next_seq or self.unsent_bytes() <= self.limit_bytes // 2:
            self._room.set()
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
