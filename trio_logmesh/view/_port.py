"""What a view needs from a mesh: the seam between the view and wherever the ranks run.

A view never imports the host.  It is served by anything with these two shapes: in one process
:class:`~trio_logmesh.ProcMesh` (frames on a memory channel, control by method call); across
processes, a link to a remote host (frames on a byte stream).
"""

from __future__ import annotations

from typing import Protocol

import trio

from ..protocol._frames import Frame

#: One delivery from a mesh: some ranks' next frames, in order per rank.
Delivery = list[tuple[int, list[Frame]]]


class ViewLink(Protocol):
    """The view's handle on the ranks while it is the mesh's view."""

    replaced: trio.Event

    def new_version(self) -> int:
        """A barrier version no other view of the mesh used."""

    def set_streaming(self, rank: int, on: bool) -> None:
        """Stream ``rank``'s lines, or not (its marks and exit always come)."""

    def force_sync_flush(self, rank: int, version: int) -> None:
        """Put ``Mark(version)`` in ``rank``'s stream behind everything it wrote so far."""

    def set_level(self, rank: int, level: int) -> None:
        """Set ``rank``'s root Python logging level."""

    def confirm(self, rank: int, seq: int) -> None:
        """``rank``'s frames up to ``seq`` were handled."""

    def describe(self, rank: int) -> str:
        """Why ``rank`` may not have answered a barrier."""

    def origin(self, rank: int) -> tuple[str, int]:
        """``(hostname, pid)`` of ``rank``."""


class MeshPort(Protocol):
    """A mesh as a view sees it."""

    @property
    def size(self) -> int:
        """The number of ranks."""

    async def serve_view(
        self,
        inbox: trio.MemorySendChannel[Delivery],
        task_status: trio.TaskStatus[ViewLink] = ...,
    ) -> None:
        """Deliver every rank's frames into ``inbox`` until cancelled or replaced."""
