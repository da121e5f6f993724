"""The view on trio's MockClock, served by a fake mesh: windows, barriers, stalls, endings."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

import trio_logmesh as lm

from .conftest import Collected
from .fake_mesh import FakeMesh


class StalledSink(Collected):
    """Takes the first emit, then blocks until ``release`` is set (a terminal under Ctrl-S)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.calls = 0

    async def emit(self, items):
        self.calls += 1
        if self.calls > 1:
            await self.release.wait()
        await super().emit(items)


async def test_lines_chunks_and_partial_lines_reach_the_sink_in_order(autojump_clock):
    mesh = FakeMesh(2)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink) as client:
        mesh.log(0, b"a\nb\n")
        mesh.log(1, b"x\n", stream=1)
        mesh.log(0, b"half", partial=True)
        mesh.log(0, b" rest\nc\n")  # the rest of the partial line, then a line
        mesh.log(0, b"\n")  # a bare newline after nothing held: an empty line
        await client.flush()
        assert sink.lines(rank=0) == ["a", "b", "half", " rest", "c", ""]
        assert sink.lines(rank=1, stream="stderr") == ["x"]
        assert [i.partial for i in sink.items if isinstance(i, lm.LogLines) and i.rank == 0] == [
            False, True, False, False]
        hosts = {(i.hostname, i.pid) for i in sink.items if isinstance(i, lm.LogLines)}
        assert hosts == {("fakehost", 1000), ("fakehost", 1001)}


async def test_the_newline_ending_a_partial_line_shown_earlier_is_not_a_line(autojump_clock):
    mesh = FakeMesh(1)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink) as client:
        mesh.log(0, b"50%", partial=True)
        mesh.log(0, b"\nnext\n")
        await client.flush()
    assert sink.lines() == ["50%", "next"]


async def test_dropped_lines_become_one_notice_per_gap(autojump_clock):
    mesh = FakeMesh(1)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink) as client:
        mesh.log(0, b"a\n")
        mesh.log(0, b"b\n", dropped=1234)
        mesh.log(0, b"c\n", dropped=1234)
        mesh.log(0, b"d\n", stream=1, dropped=1239)  # the count is per rank, both streams
        await client.flush()
    assert sink.notices() == ["1,234 lines dropped for rank 0", "5 lines dropped for rank 0"]
    assert sink.lines() == ["a", "b", "c", "d"]


async def test_flush_waits_for_every_rank_and_names_the_silent_one(autojump_clock):
    mesh = FakeMesh(3)
    mesh.auto_answer = False
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink, exit_timeout=1) as client:
        mesh.log(2, b"late\n")

        async def answer() -> None:
            await trio.sleep(1)
            for rank, version in mesh.asked:
                if rank != 2:
                    mesh.mark(rank, version)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            t0 = trio.current_time()
            with pytest.raises(lm.FlushTimeout) as info:
                await client.flush(timeout=10)
        assert trio.current_time() - t0 == pytest.approx(10)
        assert info.value.missing_ranks == [2]
        assert info.value.reasons == {2: "fake reason for 2"}
        assert "rank 2 fake reason for 2" in str(info.value)
        assert sink.lines() == ["late"]  # what arrived was shown; the barrier says what did not


async def test_concurrent_flushes_each_complete_with_their_own_versions(autojump_clock):
    mesh = FakeMesh(2)
    mesh.auto_answer = False
    async with lm.open_logging_client(mesh, sink=Collected()) as client:
        finished: list[int] = []

        async def flush(i: int) -> None:
            await client.flush()
            finished.append(i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(flush, i)
            await trio.testing.wait_all_tasks_blocked()
            asked = list(mesh.asked)
            assert sorted({v for _, v in asked}) == [1, 2, 3]
            for rank, version in reversed(asked):  # answered newest first
                mesh.mark(rank, version)
        assert sorted(finished) == [0, 1, 2]
        mesh.auto_answer = True


async def test_a_stalled_sink_never_stalls_the_loop_and_flush_says_so(autojump_clock):
    mesh = FakeMesh(1)
    sink = StalledSink()
    client_ = None
    async with trio.open_nursery() as nursery:
        client = client_ = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
        mesh.log(0, b"first\n")
        await sink.wait_for(lambda: sink.lines() == ["first"])
        for i in range(100):  # the sink is stuck now: the view keeps taking frames anyway
            mesh.log(0, f"line {i}\n".encode())
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await trio.sleep(0.1)
                ticks += 1

        nursery.start_soon(ticker)
        with pytest.raises(lm.FlushTimeout) as info:
            await client.flush(timeout=5)
        assert ticks >= 45  # the loop kept running all along
        assert info.value.missing_ranks == [0]
        assert "the sink has been busy with one write for" in info.value.reasons[0]
        # aclose gives up on the stalled sink after close_timeout
        t0 = trio.current_time()
        await client.aclose()
        assert trio.current_time() - t0 <= client.close_timeout + 0.01
        nursery.cancel_scope.cancel()
    assert client_ is not None


async def test_frames_are_confirmed_only_once_the_sink_emitted_them(autojump_clock):
    mesh = FakeMesh(1)
    sink = StalledSink()
    async with trio.open_nursery() as nursery:
        client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
        mesh.log(0, b"one\n")  # emitted: the first emit goes through
        await sink.wait_for(lambda: sink.lines() == ["one"])
        await trio.testing.wait_all_tasks_blocked()
        assert mesh.confirmed == {0: 1}
        mesh.log(0, b"two\n")  # stuck in the sink
        await trio.sleep(1)
        assert mesh.confirmed == {0: 1}
        sink.release.set()
        await sink.wait_for(lambda: sink.lines() == ["one", "two"])
        await trio.testing.wait_all_tasks_blocked()
        assert mesh.confirmed == {0: 2}
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_fold_repeats_prints_the_first_line_live_then_the_summary(autojump_clock):
    mesh = FakeMesh(3)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=100,
                                      fold="repeats") as client:
        for step in (1, 2, 3):
            for rank in range(3):
                mesh.log(rank, f"step {step} loss 0.{step}{rank}\n".encode())
        await trio.sleep(20)
        live = [i for i in sink.items if isinstance(i, lm.LogLines)]
        assert [ln for i in live for ln in i.lines] == ["step 1 loss 0.10"]
        assert not [i for i in sink.items if isinstance(i, lm.GroupLine)]
        # A shorter window whose end has already passed: the summary is due at once.
        client.set_mode(aggregate_window_sec=5, fold="repeats")
        await trio.testing.wait_all_tasks_blocked()
        groups = [i for i in sink.items if isinstance(i, lm.GroupLine)]
        assert len(groups) == 1 and groups[0].count == 8 and groups[0].ranks_text == "0-2"
        assert groups[0].text == "step 1..3 loss 0.11..0.32"


async def test_a_window_lines_the_ranks_up_one_line_per_step(autojump_clock):
    mesh = FakeMesh(3)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=100):
        for step in (1, 2, 3):
            for rank in range(3):
                mesh.log(rank, f"step {step} loss 0.{step}{rank}\n".encode())
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() < 1  # every rank printed each step: no waiting
        assert [lm.format_output(i) for i in sink.items] == [
            "[ranks 0-2] step 1 loss 0.10..0.12",
            "[ranks 0-2] step 2 loss 0.20..0.22",
            "[ranks 0-2] step 3 loss 0.30..0.32",
        ]
    with pytest.raises(ValueError, match="fold"):
        async with lm.open_logging_client(mesh, fold="sideways"):  # type: ignore[arg-type]
            pass


async def test_flush_prints_what_the_window_holds(autojump_clock):
    mesh = FakeMesh(2)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=60) as client:
        mesh.log(0, b"x 1\n")  # waits for rank 1's "x" line
        mesh.log(1, b"y\n")  # waits for rank 0's "y" line
        await client.flush()
        assert [lm.format_output(i) for i in sink.items] == ["[0] x 1", "[1] y"]
        assert trio.current_time() < 1  # no waiting for the window


async def test_streaming_off_and_rank_filter_reach_the_mesh(autojump_clock):
    mesh = FakeMesh(3)
    async with lm.open_logging_client(mesh, sink=Collected(), ranks=[1]) as client:
        await trio.testing.wait_all_tasks_blocked()
        assert mesh.streaming == {0: False, 1: True, 2: False}
        assert mesh.levels == {0: logging.INFO, 1: logging.INFO, 2: logging.INFO}
        client.set_mode(stream_to_client=False, level="debug")
        assert mesh.streaming == {0: False, 1: False, 2: False}
        assert mesh.levels == {r: logging.DEBUG for r in range(3)}
    with pytest.raises(ValueError, match="ranks"):
        async with lm.open_logging_client(mesh, ranks=[3]):
            pass


async def test_a_client_ends_by_itself_once_every_rank_ended(autojump_clock):
    mesh = FakeMesh(2)
    sink = Collected()
    async with trio.open_nursery() as nursery:
        client = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=sink)
        mesh.log(0, b"bye\n")
        mesh.exit(0, 0)
        mesh.exit(1, -9)
        with trio.fail_after(1):
            await client.wait_finished()
    assert client.exit_codes == [0, -9]
    assert sink.notices() == ["rank 1 was killed by SIGKILL"]
    await client.flush()  # everything ended and was delivered: nothing to wait for


async def test_closed_and_replaced_clients_raise_their_own_errors(autojump_clock):
    mesh = FakeMesh(1)
    async with trio.open_nursery() as nursery:
        first = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=Collected())
        second = await lm.LoggingMeshClient.spawn(nursery, mesh, sink=Collected())
        await first.wait_finished()
        with pytest.raises(lm.ClientReplaced):
            await first.flush()
        await second.aclose()
        with pytest.raises(lm.ClientClosed):
            await second.flush()
    assert issubclass(lm.ClientReplaced, lm.LogmeshError)
    assert issubclass(lm.ClientClosed, lm.LogmeshError)
    assert not issubclass(lm.ClientReplaced, lm.ClientClosed)


async def test_a_sink_error_surfaces_as_itself(autojump_clock):
    class Broken(Exception):
        pass

    def sink(item):
        raise Broken("the user's sink")

    mesh = FakeMesh(1)
    with pytest.raises(Broken, match="the user's sink"):
        async with lm.open_logging_client(mesh, sink=sink):
            mesh.log(0, b"x\n")
            await trio.sleep(1)


async def test_the_body_exception_survives_a_failing_sink_at_exit(autojump_clock):
    class Broken(Exception):
        pass

    armed = []

    def sink(item):
        if armed:
            raise Broken("sink failed while closing")

    mesh = FakeMesh(2)
    with pytest.raises(ValueError, match="the user's own") as info:
        async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=60):
            mesh.log(0, b"a 1\n")  # waits for rank 1: printed when the client closes
            await trio.testing.wait_all_tasks_blocked()
            armed.append(True)
            raise ValueError("the user's own")
    notes = getattr(info.value, "__notes__", [])
    assert any("sink failed while closing" in n for n in notes), notes


async def test_a_ranks_exit_notice_comes_after_its_held_lines(autojump_clock):
    mesh = FakeMesh(2)
    sink = Collected()
    async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=60):
        mesh.log(1, b"err 2\n")  # waits for rank 0's "err" line
        mesh.exit(1, 1)
        await sink.wait_for(lambda: sink.notices())
        await trio.testing.wait_all_tasks_blocked()
    texts = [lm.format_output(i) for i in sink.items]
    assert texts.index("[1] err 2") < texts.index("[logmesh] rank 1 exited with code 1")


async def test_a_channel_sink_whose_reader_is_gone_ends_the_client_with_one_error(autojump_clock):
    mesh = FakeMesh(1)
    send, recv = trio.open_memory_channel[lm.Output](1)
    await recv.aclose()
    with pytest.raises(trio.BrokenResourceError):  # one exception, not a hang or a nest
        async with lm.open_logging_client(mesh, sink=send):
            mesh.log(0, b"nobody reads this\n")
            await trio.sleep(60)
