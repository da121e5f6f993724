"""Many hosts on loopback (tier 1: no root): host agents on 127.0.0.x addresses, real processes,
real TLS links.  Every line arrives exactly once; barriers are exact across hosts; a tampered
join document is refused; a killed or stopped agent is named, never a hang; a broken link
resumes without loss or duplication; agents whose driver is gone stop their ranks."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import trio_logmesh as lm
from trio_logmesh.hostmesh._tls import make_self_signed
from trio_logmesh.protocol._join import JoinInfo

from .conftest import CHILD_ENV, PY, Collected, alive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="loopback addresses 127.0.0.x are Linux's")

AGENT = [PY, "-m", "trio_logmesh", "agent"]


@asynccontextmanager
async def hosts_run(tmp_path, cmd: list[str], nnodes: int, procs: int, *,
                    sink: Collected | None = None, window: float | None = None,
                    **options: Any) -> AsyncIterator[tuple[lm.HostMesh, lm.LoggingMeshClient,
                                                           Collected, list[str]]]:
    """A run over ``nnodes`` local agents on loopback, a client collecting into a sink, and the
    driver's notices."""
    sink = sink if sink is not None else Collected()
    notes: list[str] = []
    env = dict(CHILD_ENV)
    env.update(options.pop("env", {}))
    options.setdefault("launcher", "local")
    options.setdefault("rdzv_endpoint", "127.0.0.1:0")
    options.setdefault("log_root", tmp_path / "logs")
    options.setdefault("join_timeout", 60)
    async with lm.open_host_mesh(cmd, nnodes, procs, env=env, say=notes.append,
                                 **options) as mesh:
        async with lm.open_logging_client(mesh, sink=sink, aggregate_window_sec=window,
                                          exit_timeout=10) as client:
            yield mesh, client, sink, notes


def agent_pid(mesh: lm.HostMesh, node: int) -> int:
    return int(mesh.hosts[node].join_info["pid"])


async def wait_gone(pids: list[int], timeout: float = 20.0) -> list[int]:
    """Wait (polling /proc: these are not our children) until none of ``pids`` runs;
    return those still running after ``timeout``."""
    with trio.move_on_after(timeout):
        while any(alive(p) for p in pids):
            await trio.sleep(0.05)
    return [p for p in pids if alive(p)]


# -- a whole run -------------------------------------------------------------------------------
WRITER = r"""
import os, sys
r = int(os.environ["RANK"])
sys.stderr.write("env %s\n" % " ".join(f"{k}={os.environ[k]}" for k in (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
    "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")))
for i in range(int(sys.argv[1])):
    print(f"r{r} line {i} " + "x" * (i % 50))
sys.stdout.write(f"r{r} partial-end")
"""


async def test_a_whole_run_delivers_every_line_exactly_once_with_global_ranks(tmp_path):
    lines = 3000
    async with hosts_run(tmp_path, [PY, "-c", WRITER, str(lines)], 3, 4) as (
            mesh, client, sink, notes):
        codes = await mesh.wait()
        await client.flush()
    assert codes == [0] * 12
    for rank in range(12):
        expected = [f"r{rank} line {i} " + "x" * (i % 50) for i in range(lines)]
        assert sink.lines(rank, "stdout") == [*expected, f"r{rank} partial-end"]
    partial = [i for i in sink.items if isinstance(i, lm.LogLines) and i.partial]
    assert sorted(i.rank for i in partial) == list(range(12))
    envs = {}
    for rank in range(12):
        (line,) = sink.lines(rank, "stderr")
        envs[rank] = dict(kv.split("=", 1) for kv in line.split()[1:])
    masters = {(e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs.values()}
    assert len(masters) == 1 and masters.pop()[0] == "127.0.0.2"  # node 0's address
    for rank, e in envs.items():
        assert e["RANK"] == str(rank) and e["WORLD_SIZE"] == "12"
        assert e["LOCAL_RANK"] == str(rank % 4) and e["LOCAL_WORLD_SIZE"] == "4"
        assert e["NODE_RANK"] == e["GROUP_RANK"] == str(rank // 4)
        assert e["GROUP_WORLD_SIZE"] == "3" and e["TORCHELASTIC_RUN_ID"] == mesh.session
    # Lines say their host; the files stay on each host (here: one directory, global names).
    tags = {i.prefix() for i in sink.items if isinstance(i, lm.LogLines) and i.rank == 5}
    assert tags == {f"[{mesh.host_of(5).label}:5]"}
    run_dir = tmp_path / "logs" / mesh.session
    for rank in range(12):
        data = (run_dir / f"rank-{rank:02d}.stdout.log").read_bytes()
        assert data.count(b"\n") == lines and data.endswith(f"r{rank} partial-end".encode())
    assert notes == []


FLUSHER = r"""
import os, sys, time
r = int(os.environ["RANK"])
progress = os.open(os.path.join(os.environ["PROGRESS"], str(r)), os.O_WRONLY | os.O_CREAT)
i = 0
while True:
    print(f"r{r} tick {i}")   # block-buffered: stays in sys.stdout until someone flushes
    os.pwrite(progress, b"%010d" % i, 0)  # after the print: tick i is in the buffer
    i += 1
    time.sleep(0.01)
"""


def printed(progress_dir, rank: int) -> int:
    """How many ticks ``rank`` had printed (into its buffer) when this returns, at least."""
    try:
        with open(os.path.join(progress_dir, str(rank)), "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        return 0
    return int(data) + 1 if data else 0


async def test_flush_is_exact_across_hosts(tmp_path):
    progress = tmp_path / "progress"
    progress.mkdir()
    async with hosts_run(tmp_path, [PY, "-c", FLUSHER], 3, 3, flush_interval=0,
                         env={"PROGRESS": str(progress)}) as (mesh, client, sink, _):
        for _round in range(6):
            # Every tick a rank printed before the barrier reaches the sink before it returns,
            # though the program never flushed it.
            before = {r: printed(progress, r) for r in range(9)}
            await client.flush(timeout=30)
            for r in range(9):
                got = sink.lines(r)
                assert len(got) >= before[r]
                assert got == [f"r{r} tick {i}" for i in range(len(got))]
            await trio.sleep(0.1)
        assert all(printed(progress, r) for r in range(9))
        mesh.send_signal(signal.SIGTERM)
    for r in range(9):
        got = sink.lines(r)
        assert got == [f"r{r} tick {i}" for i in range(len(got))]


async def test_a_flush_covers_output_still_in_the_childrens_buffers(tmp_path):
    child = (
        "import os, sys, time\n"
        "r = os.environ['RANK']\n"
        "print(f'held by rank {r}')\n"  # block-buffered, never flushed by the program
        "open(os.environ['READY'] + '.' + r, 'w').close()\n"
        "time.sleep(60)\n"
    )
    async with hosts_run(tmp_path, [PY, "-c", child], 2, 2, flush_interval=0,
                         env={"READY": str(tmp_path / "r")}) as (mesh, client, sink, _):
        with trio.fail_after(30):
            while not all(os.path.exists(tmp_path / f"r.{r}") for r in range(4)):
                await trio.sleep(0.02)
        assert sink.lines() == []  # nothing flushed yet: it is all in the children's buffers
        await client.flush(timeout=30)
        assert sorted(sink.lines()) == [f"held by rank {r}" for r in range(4)]
        mesh.send_signal(signal.SIGKILL)


# -- refusals --------------------------------------------------------------------------------
async def _agent(join_text: str, node: int, *extra: str) -> subprocess.CompletedProcess:
    """Run ``logmesh agent`` with ``join_text`` as its join file (until it exits)."""
    fd, path = tempfile.mkstemp(suffix=".join")
    try:
        os.write(fd, join_text.encode())
        os.close(fd)
        return await trio.run_process(
            [*AGENT, "--join", path, "--node-rank", str(node), *extra],
            capture_stdout=True, capture_stderr=True, check=False)
    finally:
        os.unlink(path)


async def test_a_tampered_join_document_is_refused_and_the_run_goes_on(tmp_path):
    join_file = tmp_path / "run.join"
    sink = Collected()
    outcomes: dict[str, subprocess.CompletedProcess] = {}

    async def try_agents(task_status=trio.TASK_STATUS_IGNORED) -> None:
        while not join_file.exists():
            await trio.sleep(0.02)
        task_status.started()
        good = json.loads(join_file.read_text())
        bad_token = dict(good, token=("0" if good["token"][0] != "0" else "1") + good["token"][1:])
        other = make_self_signed(["127.0.0.1"])  # a consistent document, not this driver's
        wrong_cert = dict(good, cert=other.cert, fingerprint=other.fingerprint)
        altered = dict(good, cert=good["cert"].replace("MII", "MIJ", 1))
        for name, doc in (("token", bad_token), ("cert", wrong_cert), ("altered", altered)):
            outcomes[name] = await _agent(json.dumps(doc), 0)
        outcomes["good"] = await _agent(json.dumps(good), 0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(try_agents)
        async with hosts_run(tmp_path, [PY, "-c", "print('ran')"], 1, 1, sink=sink,
                             launcher="none", join_file=join_file) as (mesh, client, _, notes):
            assert await mesh.wait() == [0]
            await client.flush()
    assert sink.lines() == ["ran"]
    assert outcomes["token"].returncode == 1
    assert b"refused node 0: bad token" in outcomes["token"].stderr
    assert outcomes["cert"].returncode == 1
    assert b"does not match the join document" in outcomes["cert"].stderr
    assert outcomes["altered"].returncode == 2
    assert b"altered" in outcomes["altered"].stderr
    assert outcomes["good"].returncode == 0, outcomes["good"].stderr
    assert any("bad token" in n for n in notes)
    assert not join_file.exists()  # removed at the end of the run


async def test_a_second_agent_for_a_node_is_refused(tmp_path):
    join_file = tmp_path / "run.join"
    second: list[subprocess.CompletedProcess] = []
    child = "import time; print('up', flush=True); time.sleep(60)"

    async def agents() -> None:
        while not join_file.exists():
            await trio.sleep(0.02)
        text = join_file.read_text()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_agent, text, 0)
            await trio.sleep(0.5)
            second.append(await _agent(text, 0))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(agents)
        async with hosts_run(tmp_path, [PY, "-c", child], 1, 1, launcher="none",
                             join_file=join_file) as (mesh, client, sink, _):
            with trio.fail_after(30):
                await sink.wait_for(lambda: "up" in sink.lines())
                while not second:
                    await trio.sleep(0.05)
            mesh.send_signal(signal.SIGTERM)
    assert second[0].returncode == 1 and b"already joined" in second[0].stderr


# -- lost hosts ------------------------------------------------------------------------------
TICKER = r"""
import os, time
r = os.environ["RANK"]
print(f"r{r} up", flush=True)
while True:
    time.sleep(0.05)
"""


async def test_a_killed_agent_is_named_and_a_pending_flush_raises_at_once(tmp_path):
    dead_after = 1.5
    async with hosts_run(tmp_path, [PY, "-c", TICKER], 3, 2, dead_after=dead_after,
                         flush_interval=0) as (mesh, client, sink, _):
        with trio.fail_after(30):
            await sink.wait_for(lambda: len(sink.lines()) == 6)
        victim = agent_pid(mesh, 1)
        ranks_pids = mesh.pids[2:4]
        os.kill(victim, signal.SIGKILL)
        killed_at = trio.current_time()
        with pytest.raises(lm.HostLost) as info:
            await client.flush(timeout=60)  # raises when the host is given up, not at 60 s
        took = trio.current_time() - killed_at
        with pytest.raises(lm.HostLost):
            await mesh.wait()
        mesh.send_signal(signal.SIGTERM)
    err = info.value
    label = mesh.hosts[1].label
    assert list(err.missing_hosts) == [label] and err.missing_ranks == [2, 3]
    assert "no word from its agent" in err.missing_hosts[label]
    assert isinstance(err, lm.FlushTimeout)
    assert took < 30  # bounded by dead_after, not the flush timeout (the bench measures it)
    assert any(f"host {label} was lost" in n for n in sink.notices())
    assert await wait_gone(ranks_pids) == []  # its ranks died with it


async def test_a_stopped_agent_is_lost_after_dead_after_and_refused_when_it_wakes(tmp_path):
    async with hosts_run(tmp_path, [PY, "-c", TICKER], 2, 2, dead_after=1.0,
                         flush_interval=0) as (mesh, client, sink, _):
        with trio.fail_after(30):
            await sink.wait_for(lambda: len(sink.lines()) == 4)
        victim = agent_pid(mesh, 1)
        ranks_pids = mesh.pids[2:4]
        os.kill(victim, signal.SIGSTOP)
        try:
            with pytest.raises(lm.HostLost) as info:
                await client.flush(timeout=60)
        finally:
            os.kill(victim, signal.SIGCONT)
        assert info.value.missing_ranks == [2, 3]
        # Woken, the agent finds its host given up: it stops its ranks and leaves.
        assert await wait_gone([victim, *ranks_pids]) == []
        # The others still answer, and every later flush names the lost host.
        with pytest.raises(lm.HostLost):
            await client.flush(timeout=30)
        assert sorted(sink.lines(0) + sink.lines(1)) == ["r0 up", "r1 up"]
        mesh.send_signal(signal.SIGTERM)


async def test_a_short_stop_of_an_agent_loses_nothing(tmp_path):
    progress = tmp_path / "p"
    progress.mkdir()
    async with hosts_run(tmp_path, [PY, "-c", FLUSHER], 2, 2, dead_after=10.0,
                         env={"PROGRESS": str(progress)},
                         flush_interval=0) as (mesh, client, sink, _):
        with trio.fail_after(30):
            while not all(printed(progress, r) for r in range(4)):
                await trio.sleep(0.05)
        await client.flush(timeout=30)
        victim = agent_pid(mesh, 1)
        os.kill(victim, signal.SIGSTOP)
        await trio.sleep(1.0)
        os.kill(victim, signal.SIGCONT)
        before = {r: printed(progress, r) for r in range(4)}
        await client.flush(timeout=30)
        for r in range(4):
            assert len(sink.lines(r)) >= before[r], r
        mesh.send_signal(signal.SIGTERM)
    assert mesh.lost_hosts == {}
    for r in range(4):
        got = sink.lines(r)
        assert got == [f"r{r} tick {i}" for i in range(len(got))] and got


# -- partitions that heal --------------------------------------------------------------------
class Proxy:
    """A TCP relay on loopback between agents and the driver that the test can break: ``hold``
    stops relaying (a partition: nothing arrives, nothing is refused), ``cut`` then resets
    every connection it relays; connections made afterwards go through again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.held = False
        self._pairs: list[tuple[trio.SocketStream, trio.SocketStream]] = []
        self._flowing = trio.Event()
        self._flowing.set()
        self.connections = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._relay, listeners)

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        pair = (client, server)
        self._pairs.append(pair)

        async def pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
            try:
                while True:
                    data = await src.receive_some(65536)
                    if not data:
                        break
                    while self.held:
                        await self._flowing.wait()
                    await dst.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            nursery.cancel_scope.cancel()  # one side gone: the relay is over

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, client, server)
                nursery.start_soon(pump, server, client)
        finally:
            for stream in pair:
                await trio.aclose_forcefully(stream)

    def hold(self) -> None:
        self.held = True
        self._flowing = trio.Event()

    async def cut(self) -> None:
        """Reset every relayed connection (RST: SO_LINGER 0) and flow again."""
        pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for stream in pair:
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                         struct.pack("ii", 1, 0))
                await trio.aclose_forcefully(stream)
        self.held = False
        self._flowing.set()


async def test_a_broken_link_resumes_without_loss_or_duplication(tmp_path):
    join_file = tmp_path / "run.join"
    progress = tmp_path / "p"
    progress.mkdir()
    agents: list[trio.Process] = []

    async with trio.open_nursery() as nursery:
        async def start_agents_through(proxy: Proxy) -> None:
            while not join_file.exists():
                await trio.sleep(0.02)
            await nursery.start(proxy.run)
            doc = json.loads(join_file.read_text())
            doc["port"] = proxy.port  # the agents dial the relay; the certificate is the same
            proxied = tmp_path / "proxied.join"
            proxied.write_text(json.dumps(doc))
            os.chmod(proxied, 0o600)
            for node in range(2):
                agents.append(await trio.lowlevel.open_process(
                    [*AGENT, "--join", str(proxied), "--node-rank", str(node)]))

        proxy = Proxy(0)

        async def find_port_then_start() -> None:
            while not join_file.exists():
                await trio.sleep(0.02)
            proxy.target_port = JoinInfo.loads(join_file.read_text()).port
            await start_agents_through(proxy)

        nursery.start_soon(find_port_then_start)
        async with hosts_run(tmp_path, [PY, "-c", FLUSHER], 2, 2, launcher="none",
                             join_file=join_file, rdzv_endpoint="127.0.0.1:0", dead_after=8.0,
                             env={"PROGRESS": str(progress)}) as (mesh, client, sink, notes):
            with trio.fail_after(30):
                while not all(printed(progress, r) for r in range(4)):
                    await trio.sleep(0.05)
            await client.flush(timeout=30)
            for _ in range(2):  # two partitions, each healed by a reconnection
                proxy.hold()
                await trio.sleep(1.0)  # the ranks print on; the link carries nothing
                await proxy.cut()
                before = {r: printed(progress, r) for r in range(4)}
                await client.flush(timeout=30)
                for r in range(4):
                    assert len(sink.lines(r)) >= before[r]
            mesh.send_signal(signal.SIGTERM)
            await mesh.wait()
        nursery.cancel_scope.cancel()
    for agent in agents:
        with trio.fail_after(20):
            assert await agent.wait() == 0
    assert mesh.lost_hosts == {}
    assert proxy.connections >= 6  # two agents, three connections each
    assert sum("reconnected" in n for n in notes) == 4
    for r in range(4):
        got = sink.lines(r)
        assert got == [f"r{r} tick {i}" for i in range(len(got))] and len(got) >= 10


# -- the user's own certificate --------------------------------------------------------------
def _ca_and_server_cert(tmp_path, name: str) -> tuple[str, str, str]:
    """A CA and a server certificate for ``name`` (an IP address) signed by it: PEM paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(name))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = []
    for stem, data in (
        ("ca", ca.public_bytes(serialization.Encoding.PEM)),
        ("cert", cert.public_bytes(serialization.Encoding.PEM)),
        ("key", key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())),
    ):
        path = tmp_path / f"{stem}.pem"
        path.write_bytes(data)
        paths.append(str(path))
    return paths[0], paths[1], paths[2]


async def test_the_users_own_certificate_and_ca_are_checked_by_name(tmp_path):
    ca, cert, key = _ca_and_server_cert(tmp_path, "127.0.0.1")
    async with hosts_run(tmp_path, [PY, "-c", "import os; print('via CA', os.environ['RANK'])"],
                         2, 1, cert=cert, key=key, ca=ca) as (mesh, client, sink, notes):
        assert await mesh.wait() == [0, 0]
        await client.flush()
    assert sorted(sink.lines()) == ["via CA 0", "via CA 1"]
    # The same certificate, but the agents expect another name: refused, the run cannot start.
    with pytest.raises(lm.LogmeshError) as info:
        async with hosts_run(tmp_path, [PY, "-c", "print('never')"], 1, 1, cert=cert, key=key,
                             ca=ca, server_name="driver.example", join_timeout=20):
            pass
    assert "before node(s) 0 joined" in str(info.value)
    assert "certificate is not valid for 'driver.example'" in str(info.value)
