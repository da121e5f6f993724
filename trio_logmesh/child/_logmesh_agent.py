"""The agent inside a Python child: flushes its buffers for barriers and sets its logging level.

Standard library only, started by ``sitecustomize`` before the user's code, which runs
unchanged.  It carries no log bytes: the host reads the child's pipes itself.  It dials the
host at ``BOOTSTRAP_LOG_CHANNEL``, says hello with the run's token, and runs one thread,
``logmesh-agent``, driving the same sans-I/O ``ControlConnection`` as the host:

* every ``LOGMESH_FLUSH_INTERVAL`` seconds it flushes ``sys.stdout``/``sys.stderr``, so
  block-buffered output shows up promptly (0 turns this off).  While the program's own threads
  use no CPU at all (it sleeps, or waits), the interval doubles up to :data:`IDLE_INTERVAL`, and
  it is back at once when they run again: 128 idle ranks cost a fraction of a core, not half;
* ``FORCE_SYNC_FLUSH(v)``: it flushes Python and C stdio, then answers ``FLUSHED(v)``; the host
  then cuts the pipes at what they hold, so the barrier marker goes behind the data;
* ``SET_LEVEL(n)``: it sets the root logging level (the LoggerRuntime of the seed).

The user's main thread runs blocking code we do not control, so this is the one place logmesh
uses a thread.  It is not a daemon: it may hold ``sys.stdout``'s lock while blocked on a full
pipe, and a daemon thread holding that lock when the interpreter flushes stdout at exit aborts
the child.  It ends as soon as the program's own threads have: threading's exit hook wakes it.
"""

from __future__ import annotations

import _frozen_importlib_external as _ext  # already loaded at start-up: importing is free
import _socket
import os
import select
import sys
import threading
import time

#: The longest pause between periodic flushes of an idle program (seconds).
IDLE_INTERVAL = 0.25
#: CPU seconds the program's threads must use between two ticks to count as active.  Reading
#: "process minus this thread" jitters by a microsecond or so; a print too small to cross this
#: is still flushed within IDLE_INTERVAL.
_ACTIVE_CPU = 50e-6

_HERE = os.path.dirname(os.path.abspath(__file__))
_PROTOCOL = os.path.join(os.path.dirname(_HERE), "protocol")


def _load(name: str, filename: str):  # type: ignore[no-untyped-def]
    # The protocol modules by path, from their cached bytecode, without importing the
    # trio_logmesh package (trio, attrs: tens of ms of start-up) or importlib.util.
    path = os.path.join(_PROTOCOL, filename)
    loader = _ext.SourceFileLoader(name, path)
    module = type(sys)(name)
    module.__file__ = path
    module.__loader__ = loader
    sys.modules[name] = module
    loader.exec_module(module)
    return module


w = _load("_logmesh_wire", "_wire.py")
_control = _load("_logmesh_control", "_control.py")


#: Held while we flush the program's streams, and by ``os.fork`` around a fork: a flush holds
#: the stream's lock (maybe blocked on a full pipe), and a lock held across a fork stays held
#: forever in the child, which then hangs at its first print.
_flush_lock = threading.Lock()


def _flush_user_buffers(with_c: bool) -> None:
    with _flush_lock:
        _flush_streams(with_c)


def _flush_streams(with_c: bool) -> None:
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


#: Set by threading's exit hook: the main thread has finished the program.  (That hook runs
#: before the main thread is marked stopped, so ``is_alive()`` cannot tell yet.)
_main_done = False


def _user_threads_alive() -> bool:
    """Whether the program still runs: its main thread, or another non-daemon thread of its
    own (the interpreter waits for those; we must not keep it waiting for us)."""
    main = threading.main_thread()
    if not _main_done and main.is_alive():
        return True
    me = threading.current_thread()
    return any(
        t is not me and t is not main and not t.daemon and t.is_alive()
        for t in threading.enumerate()
    )


class Agent:
    """The agent's connection and thread; see the module docstring."""

    def __init__(self, sock: _socket.socket, conn, interval: float) -> None:  # type: ignore[no-untyped-def]
        self.sock: _socket.socket | None = sock
        self.conn = conn
        self.interval = interval
        self.wake_r, self.wake_w = os.pipe()
        self.thread: threading.Thread | None = None
        #: Requests that came with the host's welcome, before the thread ran.
        self.early: list = []

    def wake(self) -> None:
        """Make the thread look at the program's threads again (interpreter exit)."""
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass

    def _close_socket(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()

    def run(self) -> None:
        """The thread: periodic flushes, and the host's requests, until the program ends."""
        try:
            self._loop()
        finally:
            self._close_socket()
            for fd in (self.wake_r, self.wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _loop(self) -> None:
        if self.early:
            self._handle(self.early)
        interval = self.interval
        current = interval
        others = time.process_time() - time.thread_time()  # CPU of the program's threads
        while _user_threads_alive():
            timeout = current if interval > 0 else None
            if _main_done or not threading.main_thread().is_alive():
                timeout = 0.05  # only the program's other threads keep it going: look again soon
            fds = [self.wake_r] if self.sock is None else [self.wake_r, self.sock.fileno()]
            ready = select.select(fds, (), (), timeout)[0]
            if not ready:
                if interval > 0:
                    _flush_user_buffers(with_c=False)
                    now = time.process_time() - time.thread_time()
                    # Anything printed since the last tick cost its thread some CPU.
                    active = now - others > _ACTIVE_CPU
                    current = interval if active else min(current * 2, IDLE_INTERVAL)
                    others = now
                continue
            if self.wake_r in ready:
                os.read(self.wake_r, 64)
            if self.sock is not None and self.sock.fileno() in ready:
                self._readable()
                current = interval

    def _readable(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(4096)
            events = self.conn.receive(data) if data else None
        except (OSError, _control.ProtocolError):
            events = None
        if events is None:  # the host went away or broke the protocol: keep flushing only
            self._close_socket()
            return
        self._handle(events)

    def _handle(self, events: list) -> None:
        for kind, value in events:
            if self.sock is None:
                return
            if kind == w.FORCE_SYNC_FLUSH:
                _flush_user_buffers(with_c=True)
                try:
                    self.sock.sendall(self.conn.flushed(value))
                except OSError:
                    self._close_socket()
                    return
            elif kind == w.SET_LEVEL:
                import logging

                logging.getLogger().setLevel(value)
            elif kind == w.REJECT:
                self._close_socket()
                return


_agent: Agent | None = None


def _after_fork_in_child() -> None:
    # A child forked without exec (multiprocessing's "fork") must not keep our socket: the
    # host would not see this rank's agent go away.  The thread did not survive the fork.
    global _agent
    _flush_lock.release()
    agent, _agent = _agent, None
    if agent is None:
        return
    agent._close_socket()
    for fd in (agent.wake_r, agent.wake_w):
        try:
            os.close(fd)
        except OSError:
            pass


def _wake_at_exit() -> None:
    global _main_done
    _main_done = True
    if _agent is not None:
        _agent.wake()


#: Seconds to wait for the host's answer to our hello before running without an agent.
HANDSHAKE_TIMEOUT = 10.0


def _await_welcome(sock: _socket.socket, conn) -> list | None:  # type: ignore[no-untyped-def]
    """The host's answer: the requests that came with its welcome, or None if refused.

    The user's code starts only after this: from then on the host knows this process, so a
    barrier never misses what it buffers.  A level the host sends ahead of its welcome is set
    here, so the user's first log call already obeys it.
    """
    while True:
        data = sock.recv(4096)
        if not data:
            return None
        events = conn.receive(data)
        for i, (kind, value) in enumerate(events):
            if kind == w.WELCOME:
                return events[i + 1 :]
            if kind == w.REJECT:
                return None
            if kind == w.SET_LEVEL:
                import logging

                logging.getLogger().setLevel(value)


def start() -> None:
    """Connect to the host, wait for its welcome, start the agent's thread (idempotent)."""
    global _agent
    if _agent is not None:
        return
    path = os.environ["BOOTSTRAP_LOG_CHANNEL"]
    token = bytes.fromhex(os.environ.pop("LOGMESH_TOKEN"))
    interval = float(os.environ.pop("LOGMESH_FLUSH_INTERVAL", "0.02"))
    level = os.environ.pop("LOGMESH_LEVEL", None)
    if level:
        import logging

        logging.getLogger().setLevel(int(level))
    # The host's own index of the rank (RANK is global in a run over many hosts, and the
    # user's to change).
    rank = int(os.environ.pop("LOGMESH_RANK", None) or os.environ.get("RANK", "0"))
    conn = _control.ControlConnection(_control.AGENT, token)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT)
        sock.connect(path)
        sock.sendall(conn.hello(rank, os.getpid()))
        early = _await_welcome(sock, conn)
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    if early is None:  # refused: this process runs without an agent
        sock.close()
        return
    agent = _agent = Agent(sock, conn, interval)
    agent.early = early
    os.register_at_fork(before=_flush_lock.acquire, after_in_parent=_flush_lock.release,
                        after_in_child=_after_fork_in_child)
    register = getattr(threading, "_register_atexit", None)
    if register is not None:  # runs before the interpreter waits for non-daemon threads
        register(_wake_at_exit)
    agent.thread = threading.Thread(target=agent.run, name="logmesh-agent", daemon=False)
    agent.thread.start()
