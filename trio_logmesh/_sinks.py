"""Sinks: where the driver's output goes (the terminal, a file, a callable, a trio channel)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO, runtime_checkable

import trio

from ._records import GroupLine, LogLines, Notice, Output, format_output


@runtime_checkable
class Sink(Protocol):
    """Receives the driver's output, in order.  ``emit`` may apply back-pressure by waiting."""

    async def emit(self, items: Sequence[Output]) -> None:
        """Deliver ``items`` (in order)."""


_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_RED = "\x1b[31m"
_CYAN = "\x1b[36m"
_YELLOW = "\x1b[33m"


def color_enabled(stream: TextIO, mode: str = "auto") -> bool:
    """Whether to color output on ``stream``: ``always``/``never``, or ``auto`` (a terminal,
    and ``NO_COLOR`` not set)."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"color must be 'auto', 'always' or 'never', not {mode!r}")
    if mode == "never" or os.environ.get("NO_COLOR"):
        return False
    if mode == "always":
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _colored(item: Output) -> str:
    if isinstance(item, LogLines):
        tag = (_RED if item.stream == "stderr" else _DIM) + item.prefix() + _RESET + " "
        return tag + ("\n" + tag).join(item.lines)
    if isinstance(item, GroupLine):
        return f"{_CYAN}{item.prefix()}{_RESET} {item.text}"
    return f"{_YELLOW}{item.prefix()} {item.text}{_RESET}"


def _item_time(item: Output) -> float:
    if isinstance(item, GroupLine):
        return item.first_time
    return item.time


def _stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d} "


class TerminalSink:
    """Prints to the driver's stdout/stderr (matching each line's stream), ``[rank]``-prefixed.

    ``color`` is ``"auto"`` (only on a terminal, never with ``NO_COLOR`` set), ``"always"``
    or ``"never"``; ``timestamps`` puts the wall-clock time in front of every line.
    """

    def __init__(
        self,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        color: str = "auto",
        timestamps: bool = False,
    ) -> None:
        self.stdout = stdout if stdout is not None else sys.stdout
        self.stderr = stderr if stderr is not None else sys.stderr
        self.color = {
            "stdout": color_enabled(self.stdout, color),
            "stderr": color_enabled(self.stderr, color),
        }
        self.timestamps = timestamps

    async def emit(self, items: Sequence[Output]) -> None:
        """Write the items and flush the streams written to."""
        touched: set[TextIO] = set()
        for item in items:
            out = self.stderr if item.stream == "stderr" else self.stdout
            text = _colored(item) if self.color[item.stream] else format_output(item)
            if self.timestamps:
                stamp = _stamp(_item_time(item))
                text = stamp + text.replace("\n", "\n" + stamp)
            out.write(text + "\n")
            touched.add(out)
        for out in touched:
            out.flush()


class JsonSink:
    """One JSON object per line on ``file`` (default stdout), for machines.

    Lines: ``time``, ``rank``, ``host``, ``pid``, ``stream``, ``text`` (and ``partial`` when the
    line had no newline yet).  Groups: ``time``, ``ranks``, ``count``, ``stream``, ``text``,
    ``group: true``, ``first_time``, ``last_time``.  Notices: ``notice: true``.
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file if file is not None else sys.stdout

    async def emit(self, items: Sequence[Output]) -> None:
        """Write one JSON object per line and flush."""
        out = []
        for item in items:
            if isinstance(item, LogLines):
                base = {"time": item.time, "rank": item.rank, "host": item.hostname,
                        "pid": item.pid, "stream": item.stream}
                last = len(item.lines) - 1
                for i, line in enumerate(item.lines):
                    rec = dict(base, text=line)
                    if item.partial and i == last:
                        rec["partial"] = True
                    if item.progress:
                        rec["progress"] = True
                    out.append(json.dumps(rec))
            elif isinstance(item, GroupLine):
                out.append(json.dumps({
                    "time": item.first_time, "ranks": list(item.ranks), "count": item.count,
                    "stream": item.stream, "text": item.text, "group": True,
                    "first_time": item.first_time, "last_time": item.last_time,
                }))
            else:
                out.append(json.dumps({"time": item.time, "rank": item.rank,
                                       "stream": item.stream, "text": item.text,
                                       "notice": True}))
        if out:
            self.file.write("\n".join(out) + "\n")
            self.file.flush()


class FileSink:
    """Writes every item, both streams, as plain prefixed lines to one text file object."""

    def __init__(self, file: TextIO) -> None:
        self.file = file

    async def emit(self, items: Sequence[Output]) -> None:
        """Write the items (no flush: the caller owns the file)."""
        self.file.write("".join(format_output(i) + "\n" for i in items))


class CallableSink:
    """Calls ``fn(item)`` for each item; an async ``fn`` is awaited."""

    def __init__(self, fn: Callable[[Output], Any]) -> None:
        self.fn = fn

    async def emit(self, items: Sequence[Output]) -> None:
        """Call the function on each item, in order."""
        for item in items:
            result = self.fn(item)
            if hasattr(result, "__await__"):
                await result


class ChannelSink:
    """Sends each item into a trio memory channel (the caller iterates the receive end).

    A full channel makes the client wait: that is back-pressure on the live view only.
    """

    def __init__(self, channel: trio.MemorySendChannel[Output]) -> None:
        self.channel = channel

    async def emit(self, items: Sequence[Output]) -> None:
        """Send the items, in order."""
        for item in items:
            await self.channel.send(item)


def make_sink(sink: object = None) -> Sink:
    """Turn what a user passes as ``sink=`` into a :class:`Sink`.

    ``None`` is the terminal; a :class:`Sink` is used as is; a ``trio.MemorySendChannel``, a
    text file object (has ``write``) or a callable are wrapped.  Anything else is a TypeError.
    """
    if sink is None:
        return TerminalSink()
    if isinstance(sink, trio.MemorySendChannel):
        return ChannelSink(sink)
    if isinstance(sink, Sink):
        return sink
    if hasattr(sink, "write"):
        return FileSink(sink)  # type: ignore[arg-type]
    if callable(sink):
        return CallableSink(sink)
    raise TypeError(
        "sink must be None (the terminal), a Sink, a trio.MemorySendChannel, a text file or a "
        f"callable, not {type(sink).__name__}"
    )


__all__ = [
    "CallableSink", "ChannelSink", "FileSink", "GroupLine", "JsonSink", "LogLines", "Notice", "Sink",
    "TerminalSink", "make_sink",
]
