"""Sinks and their writer: rendering, and outputs that never block the trio loop."""

from __future__ import annotations

import errno
import io
import json
import os

import pytest
import trio
import trio.testing

import trio_logmesh as lm
from trio_logmesh.view._writer import TextOutput


def lines_of(rank: int, *lines: str, stream: str = "stdout", **kw) -> lm.LogLines:
    return lm.LogLines.of(rank, stream, lines, "h", 100 + rank, 1700000000.25, **kw)


async def test_terminal_sink_prefixes_every_line_and_keeps_streams_apart():
    out, err = io.StringIO(), io.StringIO()
    sink = lm.TerminalSink(stdout=out, stderr=err, color="never")
    await sink.emit([
        lines_of(0, "a", "b"),
        lines_of(1, "boom", stream="stderr"),
        lm.GroupLine("stdout", "step 1..3", 6, (0, 1, 2), "0-2", 1.0, 2.0),
        lm.Notice("stderr", "rank 1 exited with code 1", 1),
        lines_of(0, ""),
    ])
    assert out.getvalue() == "[0] a\n[0] b\n[6x ranks 0-2] step 1..3\n[0] \n"
    assert err.getvalue() == "[1] boom\n[logmesh] rank 1 exited with code 1\n"


async def test_terminal_sink_colors_and_timestamps():
    out = io.StringIO()
    sink = lm.TerminalSink(stdout=out, stderr=out, color="always", timestamps=True)
    await sink.emit([lines_of(2, "x", "y")])
    text = out.getvalue()
    assert text.count("\x1b[2m[2]\x1b[0m") == 2
    stamps = [ln.split(" ")[0] for ln in text.splitlines()]
    assert len(set(stamps)) == 1 and stamps[0].count(":") == 2


async def test_terminal_sink_passes_the_ranks_bytes_through():
    r, w = os.pipe()
    with open(w, "w") as wfile:
        sink = lm.TerminalSink(stdout=wfile, stderr=wfile, color="never")
        await sink.emit([lm.LogLines(0, "stdout", b"caf\xc3\xa9 \xff raw")])
    with open(r, "rb") as rfile:
        assert rfile.read() == b"[0] caf\xc3\xa9 \xff raw\n"


async def test_json_sink_writes_one_object_per_line():
    out = io.StringIO()
    await lm.JsonSink(out).emit([
        lines_of(3, "one", "two", partial=True),
        lm.GroupLine("stderr", "w <num>", 4, (0, 1), "0-1", 1.0, 2.0),
        lm.Notice("stderr", "5 lines dropped for rank 3", 3, 5.0),
    ])
    recs = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert [r.get("text") for r in recs] == ["one", "two", "w <num>",
                                             "5 lines dropped for rank 3"]
    assert recs[0] == {"time": 1700000000.25, "rank": 3, "host": "h", "pid": 103,
                       "stream": "stdout", "text": "one"}
    assert recs[1]["partial"] is True and "partial" not in recs[0]
    assert recs[2]["group"] is True and recs[2]["ranks"] == [0, 1] and recs[2]["count"] == 4
    assert recs[3]["notice"] is True


async def test_a_pipe_nobody_reads_blocks_only_the_writing_task():
    r, w = os.pipe()
    try:
        output = TextOutput(open(w, "w", closefd=False))
        big = b"x" * (4 * 1024 * 1024)  # far more than a pipe holds
        others_ran = 0
        async with trio.open_nursery() as nursery:

            async def other() -> None:
                nonlocal others_ran
                while True:
                    await trio.sleep(0.01)
                    others_ran += 1

            nursery.start_soon(other)
            with trio.move_on_after(0.5) as scope:
                await output.write([big])
            assert scope.cancelled_caught  # the write waited, and could be cancelled
            assert others_ran >= 10  # while the loop kept running other tasks
            nursery.cancel_scope.cancel()
        # our private non-blocking descriptor left the shared one as it was
        assert os.get_blocking(w)
    finally:
        os.close(r)
        os.close(w)


async def test_a_reader_that_went_away_ends_output_quietly():
    r, w = os.pipe()
    os.close(r)
    output = TextOutput(open(w, "w"))
    await output.write([b"nobody listens\n"])
    assert output.closed_by_reader
    await output.write([b"still nobody\n"])  # dropped, no error


async def test_a_regular_file_gets_everything_in_order(tmp_path):
    path = tmp_path / "out.txt"
    with open(path, "w") as fh:
        fh.write("before\n")  # what the program printed itself goes first
        output = TextOutput(fh)
        for i in range(1000):
            await output.write([f"line {i}\n".encode()])
    assert path.read_text() == "before\n" + "".join(f"line {i}\n" for i in range(1000))


def test_make_sink_wraps_what_users_pass():
    send, _ = trio.open_memory_channel(1)
    assert isinstance(lm.make_sink(None), lm.TerminalSink)
    assert isinstance(lm.make_sink(send), lm.ChannelSink)
    assert isinstance(lm.make_sink(io.StringIO()), lm.FileSink)
    assert isinstance(lm.make_sink(print), lm.CallableSink)
    with pytest.raises(TypeError, match="sink must be"):
        lm.make_sink(42)


async def test_an_output_that_fails_stops_the_live_view_and_says_why():
    with open("/dev/full", "w") as full:
        sink = lm.TerminalSink(stdout=full, stderr=full)
        await sink.emit([lines_of(0, "x")])  # no exception: the run goes on
        assert set(sink.output_errors) == {"stdout"}
        assert sink.output_errors["stdout"].errno == errno.ENOSPC
        await sink.emit([lines_of(0, "y"), lines_of(1, "z", stream="stderr")])
        assert set(sink.output_errors) == {"stdout", "stderr"}
