"""LogForwardActor and LoggerRuntimeActor inside a Python child (standard library only).

Started by ``sitecustomize`` before the user's code.  The user's main thread runs blocking code
we do not control, so this is the one place logmesh uses threads; both are owned by this module
and end with the interpreter:

* ``logmesh-forwarder``: one ``poll`` loop serving ``BOOTSTRAP_LOG_CHANNEL``.  The host's
  LocalLogSender connects (role host) and sends ``LOG``/``MARK``/``EXIT`` frames; the driver's
  client connects (role client) and sends control.  Data frames are relayed to the client as raw
  bytes, in sequence order, never re-encoded.
* ``logmesh-flusher`` (not a daemon; it ends when the main thread does): flushes ``sys.stdout``/``sys.stderr`` every ``LOGMESH_FLUSH_INTERVAL``
  seconds (so block-buffered output shows up promptly) and, for a barrier, flushes Python and C
  stdio buffers and then tells the host to cut its pipes.  Flushing may block on the user's
  stream lock, so it never runs on the forwarder loop: the loop must keep relaying, or the host
  could stop draining the pipe that the user's thread is blocked writing to.

The in-band barrier: ``ForceSyncFlush(v)`` -> flusher empties user-space buffers -> ``FlushPipes(v)``
to the host -> the host reads both pipes up to what they held at that moment and puts ``MARK(v)``
behind that data -> relayed here -> client.  The marker travels behind the data, never beside it.
"""

from __future__ import annotations

import _socket
import atexit
import collections
import os
import select
import sys
import threading
import time
import types

_here = os.path.dirname(os.path.abspath(__file__))
# Load the frame layout by path, without importing the trio_logmesh package (which imports
# trio) and without importlib.util (whose imports cost every child milliseconds at start-up).
_wire_path = os.path.join(os.path.dirname(_here), "_wire.py")
w = types.ModuleType("_logmesh_wire")
w.__file__ = _wire_path
with open(_wire_path, "rb") as _fh:
    exec(compile(_fh.read(), _wire_path, "exec"), w.__dict__)

HEARTBEAT_SEC = 1.0

try:  # hmac.compare_digest without importing hashlib/OpenSSL into every child at start-up
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover
    from hmac import compare_digest  # type: ignore[no-redef]


def _flush_user_buffers(with_c: bool) -> None:
    out, err = sys.stdout, sys.stderr
    streams = [out, err]
    for orig in (sys.__stdout__, sys.__stderr__):  # the user may have replaced sys.stdout
        if orig is not out and orig is not err:
            streams.append(orig)
    for stream in streams:
        if stream is not None:
            try:
                stream.flush()
            except Exception:
                pass
    if with_c:
        try:
            _c_fflush()(None)
        except Exception:
            pass


_fflush = None


def _c_fflush():  # type: ignore[no-untyped-def]
    global _fflush
    if _fflush is None:
        import ctypes  # only once a barrier needs it: ctypes costs start-up time

        _fflush = ctypes.CDLL(None).fflush
    return _fflush


class _Poller:
    """The few lines of ``selectors`` we need, on ``select.poll`` (importing ``selectors`` and
    ``socket`` costs every child milliseconds of start-up)."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._data: dict[int, object] = {}

    def register(self, fd: int, data: object) -> None:
        self._poll.register(fd, select.POLLIN)
        self._data[fd] = data

    def unregister(self, fd: int) -> None:
        if self._data.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def items(self) -> list[tuple[int, object]]:
        return list(self._data.items())

    def select(self, timeout: float) -> list[object]:
        events = self._poll.poll(timeout * 1000)
        return [self._data[fd] for fd, _ in events if fd in self._data]


class _Conn:
    __slots__ = ("sock", "reader", "role")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.reader = w.FrameReader()
        self.role = 0


class Agent:
    """The forwarder loop; see the module docstring."""

    def __init__(self, path: str, token: bytes, rank: int, flush_interval: float) -> None:
        self.path = path
        self.token = token
        self.rank = rank
        self.flush_interval = flush_interval
        self.sel = _Poller()
        self.lsock: _socket.socket | None = None
        self.host: _Conn | None = None
        self.client: _Conn | None = None
        self.streaming = True
        self.awaiting_replay = False
        self.last_forwarded = 0
        self.pending_resume: int | None = None
        # Jobs for the flusher: a deque plus a pipe to wake it.  Its idle wait is one select()
        # with a timeout, the cheapest way to poll 50 times a second in a user's process.
        self.jobs: collections.deque[tuple[str, int]] = collections.deque()
        self.job_r, self.job_w = os.pipe()
        self.outbox: collections.deque[bytes] = collections.deque()  # flusher -> loop
        self.stopping = False
        self.unrelayed = 0
        self.relay: list[bytes] = []  # frames to relay to the client, sent once per chunk
        self.thread: threading.Thread | None = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.welcome = w.WELCOME_S.pack(rank, os.getpid(), w.KIND_AGENT) + (
            _socket.gethostname().encode()
        )

    # -- set-up ------------------------------------------------------------------------
    def bind(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        lsock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        lsock.bind(self.path)
        lsock.listen(8)
        lsock.setblocking(False)
        self.lsock = lsock
        self.sel.register(lsock.fileno(), "listen")
        self.sel.register(self.wake_r, "wake")

    # -- the forwarder loop -------------------------------------------------------------
    def stop(self, timeout: float) -> None:
        """At interpreter exit: close every connection from the loop's own thread and wait for
        it (at most ``timeout``).  The host then serves the rank itself: whatever the child still
        writes while it finishes goes there, not to a relay thread that is about to vanish."""
        self.stopping = True
        os.write(self.wake_w, b"x")
        if self.thread is not None:
            self.thread.join(timeout)

    def _shutdown(self) -> None:
        for conn in (self.client, self.host):
            if conn is not None:
                self._close(conn)
        if self.lsock is not None:
            self.sel.unregister(self.lsock.fileno())
            self.lsock.close()
            self.lsock = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def run(self) -> None:
        try:
            self._loop()
        finally:
            if self.stopping:
                self._shutdown()

    def _loop(self) -> None:
        next_beat = time.monotonic() + HEARTBEAT_SEC
        while not self.stopping:
            timeout = max(0.0, next_beat - time.monotonic())
            for data in self.sel.select(timeout):
                if data == "listen":
                    self._accept()
                elif data == "wake":
                    self._drain_outbox()
                    if self.stopping:
                        return
                else:
                    self._readable(data)  # type: ignore[arg-type]
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_SEC
                if self.client is not None:
                    self._send(self.client, w.frame(w.HEARTBEAT))

    def _accept(self) -> None:
        if self.lsock is None:
            return
        try:
            fd, _ = self.lsock._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        sock = _socket.socket(fileno=fd)
        sock.setblocking(True)
        conn = _Conn(sock)
        self.sel.register(fd, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            self.sel.unregister(fd)
            try:  # the peer must see the end even if a forked child still holds a copy
                conn.sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass
        conn.sock.close()
        if conn is self.client:
            self.client = None
        if conn is self.host:
            self.host = None
            # No data can reach us any more; the host serves this rank itself from now on.
            # Closing the client makes it reconnect there.
            if self.client is not None:
                self._close(self.client)

    def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            conn.sock.sendall(data)
            return True
        except OSError:
            self._close(conn)
            return False

    def _readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(262144)
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        try:
            frames = conn.reader.feed(data)
        except w.FrameError:
            self._close(conn)
            return
        for kind, payload in frames:
            if conn.sock.fileno() < 0:
                return
            if conn.role == 0:
                self._hello(conn, kind, payload)
            elif conn.role == w.ROLE_HOST:
                self._from_host(kind, payload)
            else:
                self._from_client(kind, payload)
        if self.relay:
            # One send for everything this chunk relays: each send is a GIL hand-off with the
            # user's thread, which is what relaying costs their process.
            parts, self.relay = self.relay, []
            if self.client is not None:
                self._send(self.client, b"".join(parts))
        if self.unrelayed and self.host is not None:
            self._send(self.host, w.frame(w.ACK, w.U64.pack(self.unrelayed)))
            self.unrelayed = 0

    def _hello(self, conn: _Conn, kind: int, payload: bytes) -> None:
        try:
            role, token, rank, resume = w.HELLO_S.unpack(payload)
        except Exception:
            role, token, rank, resume = 0, b"", -1, 0
        ok = (
            kind == w.HELLO
            and role in (w.ROLE_HOST, w.ROLE_CLIENT)
            and rank == self.rank
            and compare_digest(token, self.token)
        )
        if not ok:
            self._send(conn, w.frame(w.REJECT))
            self._close(conn)
            return
        conn.role = role
        if role == w.ROLE_HOST:
            if self.host is not None:
                self._close(self.host)
            self.host = conn
            if self.pending_resume is not None:
                self._send(conn, w.frame(w.RESUME, w.U64.pack(self.pending_resume)))
                self.pending_resume = None
            self._drain_outbox()
        else:
            if self.client is not None:  # a newer client takes over: tell the old one why
                self._send(self.client, w.frame(w.REJECT))
                if self.client is not None:
                    self._close(self.client)
            self.client = conn
            self.streaming = True
            self.awaiting_replay = True
            self.last_forwarded = resume
            if not self._send(conn, w.frame(w.WELCOME, self.welcome)):
                return
            if self.host is not None:
                self._send(self.host, w.frame(w.RESUME, w.U64.pack(resume)))
            else:
                self.pending_resume = resume

    def _from_host(self, kind: int, payload: bytes) -> None:
        if kind == w.FORCE_SYNC_FLUSH:  # the host's own barrier (files), e.g. at teardown
            self._job("flush", w.I64.unpack(payload)[0])
            return
        if kind == w.REPLAY:
            self.awaiting_replay = False
            self.last_forwarded = w.U64.unpack(payload)[0] - 1
            return
        if kind not in (w.LOG, w.MARK, w.EXIT):
            return
        client = self.client
        if client is None or self.awaiting_replay:
            return
        seq = w.U64.unpack_from(payload)[0]
        if seq <= self.last_forwarded:
            return
        self.last_forwarded = seq
        if kind == w.LOG and not self.streaming:
            # Not relayed, so the client will never confirm it: confirm it ourselves, or the
            # host's "block" policy would stall the child.
            self.unrelayed = seq
            return
        self.relay += (w.HEADER.pack(kind, len(payload)), payload)

    def _from_client(self, kind: int, payload: bytes) -> None:
        try:
            if kind == w.SET_MODE:
                self.streaming = bool(w.U8.unpack(payload)[0])
            elif kind == w.FORCE_SYNC_FLUSH:
                self._job("flush", w.I64.unpack(payload)[0])
            elif kind == w.SET_LEVEL:
                self._job("level", w.I32.unpack(payload)[0])
            elif kind == w.ACK and self.host is not None and len(payload) == 8:
                self._send(self.host, w.HEADER.pack(kind, 8) + payload)
        except Exception:
            pass  # a malformed control frame is ignored, never fatal

    def _drain_outbox(self) -> None:
        try:
            os.read(self.wake_r, 4096)
        except OSError:
            pass
        while self.host is not None:
            try:
                data = self.outbox.popleft()
            except IndexError:
                return
            self._send(self.host, data)

    # -- the flusher thread ---------------------------------------------------------------
    def _job(self, job: str, arg: int) -> None:
        self.jobs.append((job, arg))
        os.write(self.job_w, b"j")

    def flusher(self) -> None:
        interval = self.flush_interval
        timeout = interval if interval > 0 else 0.1
        job_r = self.job_r
        while _user_threads_alive():
            if not select.select((job_r,), (), (), timeout)[0]:
                if interval > 0:
                    _flush_user_buffers(with_c=False)
                continue
            os.read(job_r, 4096)
            while self.jobs:
                job, arg = self.jobs.popleft()
                if job == "flush":
                    _flush_user_buffers(with_c=True)
                    self.outbox.append(w.frame(w.FLUSH_PIPES, w.I64.pack(arg)))
                    os.write(self.wake_w, b"x")
                elif job == "level":
                    import logging

                    logging.getLogger().setLevel(arg)


_agent: Agent | None = None


def _user_threads_alive() -> bool:
    """Whether the program still runs: its main thread, or another non-daemon thread of its
    own (the interpreter waits for those; we must not keep it waiting for us)."""
    if threading.main_thread().is_alive():
        return True
    me = threading.current_thread()
    return any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate())


def _after_fork_in_child() -> None:
    # A child forked without exec (multiprocessing's "fork") must not keep our sockets: the
    # host would never see this rank's forwarder go away.  The threads did not survive the
    # fork; close what they owned.
    global _agent
    agent, _agent = _agent, None
    if agent is None:
        return
    for conn in (agent.client, agent.host):
        if conn is not None:
            conn.sock.close()
    if agent.lsock is not None:
        agent.lsock.close()
    for fd in (agent.wake_r, agent.wake_w, agent.job_r, agent.job_w):
        try:
            os.close(fd)
        except OSError:
            pass


def _at_exit(agent: Agent) -> None:
    if _agent is None or agent.thread is None or not agent.thread.is_alive():
        return  # a forked child: the forwarder is not ours
    # Interpreter exit: daemon threads die before Python's own final flush of sys.stdout.  Flush
    # now, while the relay still runs (with a full pipe and a "block" policy that flush needs
    # the relay), then hand the rank to the host before this thread disappears.
    _flush_user_buffers(with_c=False)  # C stdio is flushed by exit() itself, after us
    agent.stop(timeout=2.0)


def start() -> None:
    """Serve ``BOOTSTRAP_LOG_CHANNEL`` from two daemon threads (idempotent)."""
    global _agent
    if _agent is not None:
        return
    path = os.environ["BOOTSTRAP_LOG_CHANNEL"]
    token = bytes.fromhex(os.environ.pop("LOGMESH_TOKEN"))
    rank = int(os.environ.get("RANK", "0"))
    interval = float(os.environ.get("LOGMESH_FLUSH_INTERVAL", "0.02"))
    level = os.environ.pop("LOGMESH_LEVEL", None)
    if level:
        import logging

        logging.getLogger().setLevel(int(level))
    agent = Agent(path, token, rank, interval)
    agent.bind()
    _agent = agent
    agent.thread = threading.Thread(target=agent.run, name="logmesh-forwarder", daemon=True)
    agent.thread.start()
    atexit.register(_at_exit, agent)
    os.register_at_fork(after_in_child=_after_fork_in_child)
    # Not a daemon: it may hold sys.stdout's lock while blocked on a full pipe, and a daemon
    # thread holding that lock when the interpreter flushes stdout at exit aborts the child.
    # It ends by itself within one interval once the main thread has finished.
    threading.Thread(target=agent.flusher, name="logmesh-flusher", daemon=False).start()
