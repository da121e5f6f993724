"""Sinks: where the driver's output goes (the terminal, JSON lines, a file, a callable, a channel).

The view calls ``await sink.emit(items)`` from its own sink task, fed by a bounded channel, so a
slow sink slows the live view only; the pipe readers and the files never wait on it.  The text
sinks (:class:`TerminalSink`, :class:`JsonSink`, :class:`FileSink`) write through
``_writer.TextOutput``, which never blocks the trio loop on a stalled pipe or terminal.  A
callable or a custom sink runs in the sink task itself: it may apply back-pressure by
awaiting, and if it blocks without awaiting, it blocks the loop -- that is its own choice.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TextIO, runtime_checkable

import trio

from ._records import GroupLine, LogLines, Output, format_output
from ._writer import TextOutput


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
    ``output_closed`` turns true once the reader of an output went away (``EPIPE``), after
    which output to it is dropped.
    """

    def __init__(
        self,
        stdout: TextIO | None = None,
        stderr: TextIO | None = None,
        color: str = "auto",
        timestamps: bool = False,
    ) -> None:
        out = stdout if stdout is not None else sys.stdout
        err = stderr if stderr is not None else sys.stderr
        self._outputs = {"stdout": TextOutput(out), "stderr": TextOutput(err)}
        self._color = {"stdout": out is not None and color_enabled(out, color),
                       "stderr": err is not None and color_enabled(err, color)}
        self.timestamps = timestamps

    @property
    def output_closed(self) -> bool:
        """Whether the reader of our stdout or stderr went away."""
        return any(o.closed_by_reader for o in self._outputs.values())

    @property
    def output_errors(self) -> dict[str, OSError]:
        """The error that ended output to ``"stdout"`` or ``"stderr"``, if any (a full disk,
        a terminal that hung up, no stdout at all)."""
        return {name: o.error for name, o in self._outputs.items() if o.error is not None}

    async def wait_stdout_ended(self) -> OSError | None:
        """Wait until output to stdout has ended: return the error, or None when its reader
        went away (``EPIPE``, as under ``| head``)."""
        out = self._outputs["stdout"]
        await out.ended.wait()
        return out.error

    def render(self, item: Output) -> list[bytes]:
        """One item as the bytes written for it (with its final newline), in pieces."""
        color = self._color[item.stream]
        if isinstance(item, LogLines):
            tag = item.prefix()
            if color:
                tag = (_RED if item.stream == "stderr" else _DIM) + tag + _RESET
            btag = ((_stamp(item.time) if self.timestamps else "") + tag + " ").encode()
            # One pass over the chunk's bytes, whatever its number of lines.
            return [btag, item.data.replace(b"\n", b"\n" + btag), b"\n"]
        if isinstance(item, GroupLine):
            tag = f"{_CYAN}{item.prefix()}{_RESET} " if color else item.prefix() + " "
            text = tag + item.text.replace("\n", "\n" + tag)
        else:
            text = f"{_YELLOW}{item.prefix()} {item.text}{_RESET}" if color else format_output(item)
        if self.timestamps:
            stamp = _stamp(_item_time(item))
            text = stamp + text.replace("\n", "\n" + stamp)
        return [(text + "\n").encode("utf-8", "replace")]

    async def emit(self, items: Sequence[Output]) -> None:
        """Write the items; consecutive items of one stream in one write, stdout and stderr
        in the order in which they alternate."""
        parts: list[bytes] = []
        current = None
        for item in items:
            if item.stream != current and parts:
                await self._outputs[current].write(parts)  # type: ignore[index]
                parts = []
            current = item.stream
            parts += self.render(item)
        if parts:
            await self._outputs[current].write(parts)  # type: ignore[index]


class JsonSink:
    """One JSON object per line on ``file`` (default stdout), for machines.

    Lines: ``time``, ``rank``, ``host``, ``pid``, ``stream``, ``text`` (and ``partial`` when the
    line had no newline yet, ``progress`` for a progress bar's state).  Groups: ``time``,
    ``ranks``, ``count``, ``stream``, ``text``, ``group: true``, ``first_time``,
    ``last_time`` (and ``hosts`` in a run over many hosts).  Notices: ``notice: true``.
    """

    def __init__(self, file: TextIO | None = None) -> None:
        self._output = TextOutput(file if file is not None else sys.stdout)

    @property
    def output_closed(self) -> bool:
        """Whether the reader of the output went away."""
        return self._output.closed_by_reader

    @property
    def output_errors(self) -> dict[str, OSError]:
        """The error that ended the output, if any, as ``{"stdout": error}``."""
        return {"stdout": self._output.error} if self._output.error is not None else {}

    async def wait_stdout_ended(self) -> OSError | None:
        """Wait until the output has ended: return the error, or None when its reader went
        away (``EPIPE``)."""
        await self._output.ended.wait()
        return self._output.error

    @staticmethod
    def render(item: Output) -> str:
        """One item as its JSON lines (with the final newline)."""
        if isinstance(item, LogLines):
            head = json.dumps({"time": item.time, "rank": item.rank, "host": item.hostname,
                               "pid": item.pid, "stream": item.stream})[:-1] + ', "text": '
            dumps = json.dumps
            lines = item.lines
            out = [head + dumps(line) + "}" for line in lines]
            if item.progress:
                out[-1] = out[-1][:-1] + ', "progress": true}'
            if item.partial:
                out[-1] = out[-1][:-1] + ', "partial": true}'
            return "\n".join(out) + "\n"
        if isinstance(item, GroupLine):
            record = {
                "time": item.first_time, "ranks": list(item.ranks), "count": item.count,
                "stream": item.stream, "text": item.text, "group": True,
                "first_time": item.first_time, "last_time": item.last_time,
            }
            if item.hosts:
                record["hosts"] = list(item.hosts)
            return json.dumps(record) + "\n"
        return json.dumps({"time": item.time, "rank": item.rank, "stream": item.stream,
                           "text": item.text, "notice": True}) + "\n"

    async def emit(self, items: Sequence[Output]) -> None:
        """Write one JSON object per line."""
        await self._output.write(["".join(map(self.render, items)).encode("utf-8", "replace")])


class FileSink:
    """Writes every item, both streams, as plain prefixed lines to one text file object
    (through its own ``write``, no flush: the caller owns the file)."""

    def __init__(self, file: TextIO) -> None:
        self.file = file
        self._output = TextOutput(file, flush=False, raw=False)

    async def emit(self, items: Sequence[Output]) -> None:
        """Write the items."""
        text = "".join([format_output(i) + "\n" for i in items])
        await self._output.write([text.encode("utf-8", "surrogateescape")])


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

    A full channel makes the view wait: that is back-pressure on the live view only.
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
