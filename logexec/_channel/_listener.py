"""The parent side of the channel: one thread that reads every worker's connection.

The listener owns an ``AF_UNIX`` socket in a private (0700) temporary directory (or, where
that path would be too long for ``AF_UNIX``, a random name in Linux's abstract namespace).
Each worker connects once, proves it knows the executor's random key (challenge and HMAC
answer), and from then on writes frames (see ``_framing``), either on the connection or
into a shared-memory ring it handed over with its hello (see ``_ring``). The thread waits on
all connections at once, reads the rings, and handles records in the order each worker
wrote them.

Rings are read by polling while records flow and by sleeping on the connections otherwise:
while runs of records come in, the listener looks again every ``POLL_SECONDS`` (for up to
``STAY_AWAKE_SECONDS`` after the last one) without being woken, and tells the writers so
(each ring's "awake until"), so a worker that logs steadily makes no system call at all.
When nothing comes, or only a record or two per task (each task's barrier wakes the
listener anyway, so polls would find nothing), it marks each ring asleep and the next frame
wakes it.

Why one connection per worker rather than one shared ``multiprocessing.Queue``:

* a shared queue has one write lock, which a killed writer can hold forever, and one pipe,
  which a frame cut off mid-write poisons for every other writer;
* ``Queue.put`` returns before the bytes leave the worker (a feeder thread writes later),
  so a crash loses records whose log call had already returned.

Here a killed worker is only an EOF on its own connection, a cut-off frame is only at the
end of that one worker's stream, and a full ring or socket blocks only the worker that
filled it, which is the backpressure that bounds memory when the parent's handlers are slow.

Failure handling: the listener is never the casualty
----------------------------------------------------
One thread serves every worker, so it is the one thing no failure may stop. Everything it
calls is somebody else's code or somebody else's bytes: unpickling, rebuilding a record, the
parent's filters and handlers, logexec's own reports, ``accept``, the rings. The invariant,
held by the guards below and tested by injecting a failure into each of those calls in
turn (``tests/test_listener.py``): **no exception raised by anything the listener calls,
and no bytes a worker sends, end the thread before ``stop()``; a failure costs at most what
it touched.**

* A record that cannot be rebuilt is still delivered, with the parts that failed replaced by
  a placeholder (``_records.decode_record``); bytes that are no record at all are a
  protocol error.
* A connection that breaks the protocol (or whose handling fails unexpectedly) is closed and
  reported once, naming the worker's pid; the worker is told why (``GOODBYE``), and its
  later records go to its own stderr after a notice that says so.
* A handler or filter that raises is reported through ``handleError`` as logging itself
  would, and the next record is handled normally (``_dispatch``).
* logexec's own reports go through the same fault-tolerant walk of the parent's handlers;
  if even that fails they go to ``sys.stderr``.
* An unexpected error in the loop itself is reported and the loop goes on.
* Running out of descriptors: a worker whose ring the parent cannot take sends its frames on
  its connection instead; a worker the parent cannot accept at all is refused with a reason
  that its initializer raises (a clear ``BrokenProcessPool``), never left hanging.
* Lifecycle: ``stop()`` reads every connection to its end within one overall deadline,
  then reports what is still open (a process forked by a task), with pids, once.
"""

from __future__ import annotations

import array
import atexit
import contextlib
import errno
import hmac
import logging
import os
import secrets
import selectors
import shutil
import socket
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable

from .. import _records
from .._dispatch import Dispatcher, handle_safely
from . import _framing, _portable, _ring, _transports

# Bytes asked of the kernel per read. Large reads carry many records per system call;
# beyond this the gain is gone and the buffer only costs memory.
READ_SIZE = 1 << 17
# After the workers have exited, how long in all the final drain waits for connections that
# are still open (held by a process a task forked) before it closes them. One deadline for
# the whole drain, not per event: a grandchild that keeps logging must not hold it forever.
DRAIN_SECONDS = 2.0
# How long a new connection may take to prove it holds the key. A real worker answers at
# once; the deadline is generous for a loaded machine, and bounds what a peer that dribbles
# its hello can hold.
HANDSHAKE_SECONDS = 10.0
# How soon to retry telling the pool that a worker's connection ended, when it was busy.
WORKER_EXIT_RETRY_SECONDS = 0.05
# Unexpected errors in a row on one connection before it is given up (its worker then
# falls back to its stderr): one may be passing, one that repeats would repeat forever.
CONNECTION_FAILURES_TOLERATED = 3
# How soon such a connection is looked at again.
RETRY_SECONDS = 0.05
# After an unexpected error in the loop itself, pause before going on (doubling up to the
# maximum) so that an error that repeats cannot spin a core or flood the reports.
LOOP_ERROR_FIRST_PAUSE = 0.01
LOOP_ERROR_MAX_PAUSE = 1.0
# See the module docstring. Polling costs the listener a wake-up per interval while records
# flow; each wake-up it saves costs a worker a system call per record.
POLL_SECONDS = 0.0005
STAY_AWAKE_SECONDS = 0.02
# Poll only while records come in runs: with a barrier every few records (short tasks that
# log a little), each barrier's wake-up already brings the listener, and polls find nothing.
POLL_RECORDS_PER_BARRIER = 4
# A pass that took at least this much from one ring is followed by another at once.
BUSY_BYTES = 4096
# How far ahead the listener promises to look again, and when it renews the promise. Ahead
# of the poll interval by a margin for scheduling delays: a late look costs a worker a
# needless wake-up, never a record.
_PROMISE_NS = 10_000_000
_RENEW_NS = 5_000_000
_STAY_AWAKE_NS = int(STAY_AWAKE_SECONDS * 1e9)
# AF_UNIX paths are limited to 108 bytes on Linux and 104 on macOS, terminator included.
_UNIX_PATH_LIMIT = 100
_ABSTRACT_NAMESPACE = sys.platform.startswith("linux")
_NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE)

_LOGGER = logging.getLogger("logexec")


# What a connection is: a socket, or a multiprocessing connection dressed as one (_portable).
_Stream = socket.socket | _portable.StreamConnection


class _Connection:
    """One worker's connection and its receive buffer."""

    __slots__ = (
        "accepted",
        "buffer",
        "challenge",
        "closed",
        "failures",
        "fds",
        "filled",
        "pid",
        "ring",
        "socket",
        "view",
    )

    def __init__(self, sock: _Stream, challenge: bytes) -> None:
        self.socket = sock
        self.challenge = challenge
        self.accepted = time.monotonic()
        # 0 until the peer has authenticated.
        self.pid = 0
        self.closed = False
        # Unexpected errors in a row while handling this connection (see _on_ready).
        self.failures = 0
        # Received bytes not yet handled: view[:filled]. The buffer is reused for every
        # read (recv_into), because allocating a fresh large bytes object per recv costs
        # more than handling the records in it.
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        self.filled = 0
        # Descriptors received before the hello was complete, and the ring made of one.
        self.fds: list[int] = []
        self.ring: _ring.RingReader | None = None

    def resize(self, capacity: int) -> None:
        """Move the unhandled bytes into a buffer of ``capacity`` bytes."""
        pending = bytes(self.view[: self.filled])
        self.view.release()
        self.buffer = bytearray(capacity)
        self.view = memoryview(self.buffer)
        self.view[: len(pending)] = pending

    def describe(self) -> str:
        return f"worker {self.pid}" if self.pid else "an unauthenticated peer"


_ACCEPT = "accept"
_WAKE = "wake"


class Listener:
    """Receives every worker's records and hands them to a ``Dispatcher``."""

    def __init__(
        self, dispatcher: Dispatcher, key: bytes, on_worker_exit: Callable[[], bool] | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._key = key
        # Called when a worker's connection ends; returns False to be called again later.
        self._on_worker_exit = on_worker_exit
        self._worker_exit_pending = False
        self._lock = threading.Lock()
        # The process that owns the socket. A process forked from it (a fork worker, or a
        # child of a task) inherits this object and must never stop, drain or delete it.
        self._pid = os.getpid()
        self._directory: str | None = None
        self._server: socket.socket | _portable.Server | None = None
        self._wake_reader: _Stream | None = None
        self._wake_writer: _Stream | None = None
        self._selector: selectors.BaseSelector | None = None
        # Held open so that, out of descriptors, the listener can still accept a worker and
        # tell it why it is refused instead of leaving it waiting (see _accept).
        self._reserve_fd: int | None = None
        self._accept_paused_until = 0.0
        self._thread: threading.Thread | None = None
        self._connections: list[_Connection] = []
        # The connections whose frames come through a ring.
        self._rings: list[_Connection] = []
        # What the rings were last told: look again by this monotonic time; 0: asleep.
        self._promised = 0
        # Frames handled in the current pass over the rings.
        self._pass_records = 0
        self._pass_barriers = 0
        self._loop_pause = LOOP_ERROR_FIRST_PAUSE
        # Connections whose handling failed unexpectedly, to be handled again (see
        # _connection_failed).
        self._retry: list[_Connection] = []
        self._told_descriptors = False
        self._stopping = False
        self._stopped = threading.Event()
        self._closed = False
        self.address: _portable.Address = ""
        # Chosen by bind() (see _transports); the workers follow it.
        self.transport = ""

    # Lifecycle -------------------------------------------------------------------------

    def bind(self) -> _portable.Address:
        """Create the socket workers connect to; idempotent. Returns its address."""
        with self._lock:
            if self._closed or self._stopping:
                raise RuntimeError("the log listener was already stopped; create a new executor")
            if self._server is None:
                transport = _transports.choose()
                if transport == _transports.PORTABLE:
                    self._bind_portable()
                    self.transport = transport
                    _live_listeners.add(self)
                    return self.address
                directory, address = _new_address()
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    server.bind(address)
                    server.listen(socket.SOMAXCONN)
                    server.setblocking(False)
                    self._wake_reader, self._wake_writer = socket.socketpair()
                    # Made here, not on the listener thread: a failure (out of descriptors)
                    # must reach the caller, not leave a thread that can serve nobody.
                    self._selector = selectors.DefaultSelector()
                    self._selector.register(server, selectors.EVENT_READ, _ACCEPT)
                    self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
                except BaseException:
                    server.close()
                    for sock in (self._wake_reader, self._wake_writer, self._selector):
                        if sock is not None:
                            sock.close()
                    self._wake_reader = self._wake_writer = self._selector = None
                    if directory is not None:
                        shutil.rmtree(directory, ignore_errors=True)
                    raise
                self._reserve_fd = _open_reserve()
                self._directory, self._server, self.address = directory, server, address
                self.transport = transport
                _live_listeners.add(self)
            return self.address

    def _bind_portable(self) -> None:
        """bind() for the portable transport (see ``_portable``): the same loop, other ends."""
        directory, address = _portable.new_address(_new_address)
        server: _portable.Server | None = None
        try:
            server = _portable.Server(address, self._key, report)
            self._wake_reader, self._wake_writer = _portable.wake_pair()
            self._selector = _portable.Selector()
            self._selector.register(server, selectors.EVENT_READ, _ACCEPT)
            self._selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
        except BaseException:
            for end in (server, self._wake_reader, self._wake_writer):
                if end is not None:
                    with contextlib.suppress(BaseException):
                        end.close()
            self._wake_reader = self._wake_writer = self._selector = None
            if directory is not None:
                shutil.rmtree(directory, ignore_errors=True)
            raise
        # No reserve descriptor: out of descriptors, the accept thread waits and retries
        # (the peer waits in the backlog); nothing here can refuse it with a reason.
        self._directory, self._server, self.address = directory, server, server.address

    def start(self) -> None:
        """Start the listener thread; idempotent.

        Raises ``RuntimeError`` if the thread cannot start (a thread limit, or interpreter
        shutdown); the socket is then closed, so workers fail at once with a clear error
        instead of waiting for an answer that would never come.
        """
        if self._thread is not None:
            return  # the usual case, on every submit under fork: no lock needed
        with self._lock:
            if self._thread is not None or self._stopping or self._server is None:
                return
            thread = threading.Thread(target=self._run, name="logexec-listener", daemon=True)
            try:
                if isinstance(self._server, _portable.Server):
                    self._server.start()  # its accept thread, started when ours is (fork)
                thread.start()
            except RuntimeError as error:
                failure: RuntimeError | None = error
            else:
                failure = None
                self._thread = thread
        if failure is not None:
            self.stop()
            raise RuntimeError(
                f"logexec could not start its log listener thread ({failure}); the pool's "
                "workers cannot report their records and will fail to start"
            ) from failure

    @property
    def thread(self) -> threading.Thread | None:
        """The listener thread, once started."""
        return self._thread

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait until the listener has finished (every record read, everything closed)."""
        return self._stopped.wait(timeout)

    def stop(self, wait: bool = True) -> None:
        """Handle everything the workers wrote, then stop. Call after the workers exited.

        Every connection is read to its end (within ``DRAIN_SECONDS`` in all for those that
        stay open), so no record that reached the kernel is left behind. Idempotent and safe
        from any thread, including the listener's own (a parent handler may shut the
        executor down): there, and with ``wait=False``, it only asks the thread to finish.
        """
        if os.getpid() != self._pid:
            return  # an inherited copy in a forked child: the parent's to stop
        with self._lock:
            self._stopping = True
            thread = self._thread
            run_here = thread is None and not self._closed
            if run_here:
                # Never started (a fork pool that was entered but never used, or a thread
                # that could not start): finish on this thread; no worker ever connected.
                self._thread = threading.current_thread()
        if run_here:
            self._run()
            return
        self._wake()
        if wait and thread is not None and thread is not threading.current_thread():
            self._stopped.wait()

    def _wake(self) -> None:
        writer = self._wake_writer
        if writer is not None:
            with contextlib.suppress(OSError, ValueError):
                writer.send(b"\0")

    # The thread ------------------------------------------------------------------------

    def _run(self) -> None:
        selector = self._selector
        try:
            if selector is not None:
                last_record = 0
                while not self._stopping:
                    try:
                        last_record = self._serve_once(selector, last_record)
                        self._loop_pause = LOOP_ERROR_FIRST_PAUSE
                    except BaseException as error:  # see "Failure handling" above
                        self._loop_failed("serving the workers", error)
                self._drain(selector)
        except BaseException as error:
            self._loop_failed("draining the workers' connections", error)
        finally:
            self._close(selector)

    def _serve_once(self, selector: selectors.BaseSelector, last_record: int) -> int:
        """One pass: read the rings, wait for what comes next, handle it."""
        if self._retry:
            self._handle_retries(selector)
        self._pass_records = self._pass_barriers = 0
        moved = self._read_rings(selector)
        now = time.monotonic_ns()
        timeout: float | None
        if moved and self._pass_records > POLL_RECORDS_PER_BARRIER * self._pass_barriers:
            last_record = now
            self._renew_promise(now)
            # A good batch means the workers keep up with us: read on at once, or we sit
            # idle while they wait. A small one: let the next batch gather.
            timeout = 0.0 if moved >= BUSY_BYTES else POLL_SECONDS
        elif not moved and self._promised and now - last_record < _STAY_AWAKE_NS:
            self._renew_promise(now)
            timeout = POLL_SECONDS
        else:
            # Nothing flows, or the records come a few per task and each task's barrier
            # wakes us anyway: polling would only add empty looks.
            timeout = self._sleep_timeout(selector)
            if timeout == 0.0:
                return last_record  # a frame came in while the rings were being marked asleep
        timeout = self._bound_timeout(selector, timeout)
        for key, _ in selector.select(timeout):
            self._on_ready(selector, key.data)
        if self._worker_exit_pending:
            self._notify_worker_exit()
        return last_record

    def _handle_retries(self, selector: selectors.BaseSelector) -> None:
        retry, self._retry = self._retry, []
        for connection in retry:
            if connection.closed:
                continue
            try:
                self._process(selector, connection)
            except BaseException as error:
                self._connection_failed(selector, connection, "handling it again", error)
            else:
                connection.failures = 0

    def _bound_timeout(self, selector: selectors.BaseSelector, timeout: float | None) -> float | None:
        """Shorten a wait for the things that need a look at a set time."""
        deadlines = [RETRY_SECONDS] if self._retry else []
        if self._worker_exit_pending:
            # A worker-exit notice that could not be delivered yet (see
            # _compat.wake_executor_manager) makes us come back.
            deadlines.append(WORKER_EXIT_RETRY_SECONDS)
        if self._accept_paused_until:
            remaining = self._accept_paused_until - time.monotonic()
            if remaining <= 0:
                self._resume_accepting(selector)
            else:
                deadlines.append(remaining)
        if any(not connection.pid for connection in self._connections):
            deadlines.append(self._expire_handshakes(selector))
        if not deadlines:
            return timeout
        soonest = max(0.0, min(deadlines))
        return soonest if timeout is None else min(timeout, soonest)

    def _expire_handshakes(self, selector: selectors.BaseSelector) -> float:
        """Close connections past the handshake deadline; return the time to the next one."""
        now = time.monotonic()
        soonest = HANDSHAKE_SECONDS
        for connection in list(self._connections):
            if connection.pid:
                continue
            remaining = connection.accepted + HANDSHAKE_SECONDS - now
            if remaining <= 0:
                self._report(
                    logging.WARNING,
                    "logexec: closed a connection to the log listener that did not complete the "
                    "handshake within %.0f s (only the executor's own workers hold the key)",
                    HANDSHAKE_SECONDS,
                )
                self._forget(selector, connection)
            else:
                soonest = min(soonest, remaining)
        return soonest

    def _loop_failed(self, what: str, error: BaseException) -> None:
        """Report an unexpected error of the loop itself; pause a little; go on."""
        self._report_error(f"logexec: an unexpected error in the log listener while {what}", error)
        # Back off so that an error that repeats every pass cannot spin.
        time.sleep(self._loop_pause)
        self._loop_pause = min(self._loop_pause * 2, LOOP_ERROR_MAX_PAUSE)

    def _sleep_timeout(self, selector: selectors.BaseSelector) -> float | None:
        """Mark every ring asleep, then look once more; 0.0 means a frame came meanwhile."""
        if not self._rings:
            return None
        if self._promised:
            self._promise(0)
            # A writer that published before it could see the mark did not wake us. (Asleep
            # all along, every writer since saw the mark, and woke us.)
            if self._read_rings(selector):
                return 0.0
        return _ring.SAFETY_WAKE_SECONDS

    def _renew_promise(self, now: int) -> None:
        if self._promised - now < _RENEW_NS:
            self._promise(now + _PROMISE_NS)

    def _promise(self, deadline_ns: int) -> None:
        self._promised = deadline_ns
        for connection in self._rings:
            if connection.ring is not None:
                connection.ring.set_awake_until(deadline_ns)

    def _read_rings(self, selector: selectors.BaseSelector) -> int:
        """Handle what every ring holds, one buffer each; return the most bytes one held."""
        moved = 0
        for connection in list(self._rings):
            moved = max(moved, self._read_ring(selector, connection))
        return moved

    def _read_ring(self, selector: selectors.BaseSelector, connection: _Connection) -> int:
        ring = connection.ring
        if ring is None or connection.closed:
            return 0
        filled = connection.filled
        try:
            received = ring.read_into(connection.view[filled:])
            if received:
                self._handle_frames(selector, connection, filled + received, 0)
        except _ring.RingError as error:
            self._fail(selector, connection, f"its shared-memory ring broke the protocol: {error}")
            return 0
        except BaseException as error:  # see "Failure handling" above
            self._connection_failed(selector, connection, "reading its ring", error)
            return 0
        connection.failures = 0
        return received

    def _drain(self, selector: selectors.BaseSelector) -> None:
        """Read every connection to its end, within one overall deadline."""
        deadline = time.monotonic() + DRAIN_SECONDS
        if isinstance(self._server, _portable.Server):
            with contextlib.suppress(BaseException):
                self._server.settle(DRAIN_SECONDS / 2)  # see Server.settle
        # Connections still in the backlog are accepted first: a worker may have connected
        # and logged without ever being accepted.
        self._guarded_accept(selector)
        while self._connections or self._handshaking():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                # Rings are looked at between waits; a short wait while any is held.
                events = selector.select(min(remaining, 0.01) if self._rings else remaining)
                ready = set()
                for key, _ in events:
                    ready.add(key.data)
                    self._on_ready(selector, key.data)
                self._read_rings(selector)
                # The workers have exited, so a real worker's hello is already here. A peer
                # that has not authenticated and has nothing to say is not one of them. (A
                # portable connection has passed the stdlib's handshake, so it holds the key:
                # a process a task forked, whose hello is a round trip away.)
                for connection in list(self._connections):
                    if (
                        not connection.pid
                        and connection not in ready
                        and not isinstance(connection.socket, _portable.StreamConnection)
                    ):
                        self._forget(selector, connection)
            except BaseException as error:
                self._loop_failed("draining the workers' connections", error)
        if self._connections:
            self._give_up_on_open_connections(selector)

    def _handshaking(self) -> bool:
        """Whether the portable transport has handshakes under way (see ``_portable``)."""
        return isinstance(self._server, _portable.Server) and self._server.handshaking

    def _give_up_on_open_connections(self, selector: selectors.BaseSelector) -> None:
        # Take what they have already written, without waiting for more, then close them.
        for connection in list(self._connections):
            if connection.ring is not None:
                # Asleep: the process's next write tries to wake us, fails, and it learns.
                with contextlib.suppress(BaseException):
                    connection.ring.set_awake_until(0)
            with contextlib.suppress(BaseException):
                connection.socket.setblocking(False)
                for _ in range(64):
                    if connection.closed:
                        break
                    before = connection.filled
                    self._read(selector, connection)
                    if connection.closed or connection.filled == before:
                        break
            with contextlib.suppress(BaseException):
                self._read_ring(selector, connection)
        pids = sorted(connection.pid for connection in self._connections if connection.pid)
        if pids:
            self._report(
                logging.WARNING,
                "logexec: %d connection(s) to the log listener were still open %.1f s after the "
                "workers exited (pids %s; a process forked by a task may still hold them); "
                "closed them: their later records go to those processes' stderr",
                len(pids),
                DRAIN_SECONDS,
                pids,
            )

    def _close(self, selector: selectors.BaseSelector | None) -> None:
        with self._lock:
            self._closed = True
        try:
            for connection in list(self._connections):
                with contextlib.suppress(BaseException):
                    self._release(connection)
            self._connections.clear()
            self._rings.clear()
            if selector is not None:
                with contextlib.suppress(BaseException):
                    selector.close()
            for sock in (self._server, self._wake_reader, self._wake_writer):
                if sock is not None:
                    with contextlib.suppress(BaseException):
                        sock.close()
            if self._reserve_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._reserve_fd)
                self._reserve_fd = None
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            self._dispatcher.forget_all()
            _live_listeners.discard(self)
        finally:
            self._stopped.set()

    def _on_ready(self, selector: selectors.BaseSelector, data: object) -> None:
        if isinstance(data, _Connection):
            if data.closed:
                return
            try:
                self._read(selector, data)
            except BaseException as error:  # see "Failure handling" above
                self._connection_failed(selector, data, "reading it", error)
            else:
                data.failures = 0
        elif data is _ACCEPT:
            self._guarded_accept(selector)
        elif self._wake_reader is not None:
            with contextlib.suppress(OSError):
                self._wake_reader.recv(64)

    def _guarded_accept(self, selector: selectors.BaseSelector) -> None:
        try:
            self._accept(selector)
        except BaseException as error:
            self._report_error("logexec: the log listener could not accept a connection", error)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        if self._server is None or self._accept_paused_until:
            return
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                if error.errno not in _NO_DESCRIPTORS:
                    raise
                self._refuse_for_descriptors(selector, error)
                return
            sock.setblocking(True)
            challenge = os.urandom(_framing.CHALLENGE_SIZE)
            if not self._greet(sock, challenge):
                # Closed, not dropped: an open socket (a report's traceback may hold it) would
                # leave the worker waiting for its greeting for ever, and the pool's shutdown
                # with it. Hung up on, the worker connects again (_worker.CONNECT_ATTEMPTS).
                sock.close()
                continue
            connection = _Connection(sock, challenge)
            self._connections.append(connection)
            selector.register(sock, selectors.EVENT_READ, connection)

    def _greet(self, sock: _Stream, challenge: bytes) -> bool:
        """Send the greeting and challenge; False if the connection must be closed instead.

        An unexpected error is reported and the send tried once more, as a barrier's answer
        is: a worker whose greeting is lost would wait for it for ever.
        """
        for attempt in range(2):
            try:
                sock.sendall(_framing.GREETING + challenge)
            except OSError:
                return False  # the peer is gone
            except BaseException as error:  # see "Failure handling" above
                self._report_error(
                    "logexec: a new connection could not be greeted"
                    + ("; closed it" if attempt else "; trying again"),
                    error,
                )
            else:
                return True
        return False

    def _refuse_for_descriptors(self, selector: selectors.BaseSelector, error: OSError) -> None:
        """Out of descriptors: tell the waiting worker why, rather than leave it hanging."""
        if not self._told_descriptors:
            self._told_descriptors = True
            self._report(
                logging.ERROR,
                "logexec: this process has run out of file descriptors (%s), so a worker could "
                "not connect to the log listener and fails to start; each worker needs one "
                "descriptor here: raise the limit (ulimit -n) or use fewer workers",
                error.strerror,
            )
        if self._reserve_fd is not None and self._server is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
            try:
                sock, _ = self._server.accept()
            except OSError:
                pass
            else:
                with contextlib.suppress(OSError):
                    reason = f"the parent process has run out of file descriptors ({error.strerror})"
                    sock.send(_framing.REFUSED + reason.encode())
                sock.close()
            self._reserve_fd = _open_reserve()
            return
        # No reserve to spend: stop looking at the backlog for a moment rather than spin.
        self._accept_paused_until = time.monotonic() + 0.1
        if self._server is not None:
            selector.unregister(self._server)

    def _resume_accepting(self, selector: selectors.BaseSelector) -> None:
        self._accept_paused_until = 0.0
        if self._reserve_fd is None:
            self._reserve_fd = _open_reserve()
        if self._server is not None:
            selector.register(self._server, selectors.EVENT_READ, _ACCEPT)

    def _read(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        if connection.ring is not None:
            # Only wake-ups arrive here; the frames are in the ring.
            try:
                woken = connection.socket.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                woken = b""
            if not woken:
                self._hang_up(selector, connection)
            return
        filled = connection.filled
        target = connection.view[filled:]
        try:
            if connection.pid:
                received = connection.socket.recv_into(target)
            else:
                received = self._receive_hello(connection, target)
        except BlockingIOError:
            return
        except OSError:
            received = 0
        finally:
            target.release()
        if not received:
            self._hang_up(selector, connection)
            return
        # Counted before anything is handled: should handling fail unexpectedly, the bytes
        # stay in the buffer for the retry (see _connection_failed).
        connection.filled = filled + received
        self._process(selector, connection)

    def _process(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        """Handle what the connection's buffer holds: the hello, then whole frames."""
        position = 0
        if not connection.pid:
            position = self._authenticate(selector, connection, connection.filled)
            if not position:
                return
            if connection.ring is not None:
                connection.filled = 0  # anything after the hello is a wake-up
                return
        self._handle_frames(selector, connection, connection.filled, position)

    def _receive_hello(self, connection: _Connection, target: memoryview) -> int:
        # recvmsg, not recv: a descriptor rides with the hello, and recv would drop it. Close
        # on exec, so that a worker spawned meanwhile does not inherit another one's ring.
        received, ancillary, _, _ = connection.socket.recvmsg_into([target], _FDS_SPACE, _CLOEXEC)
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                connection.fds.extend(fds)
        return received

    def _handle_frames(
        self, selector: selectors.BaseSelector, connection: _Connection, end: int, position: int
    ) -> None:
        """Handle the whole frames in ``view[position:end]``; keep a cut-off one for later."""
        view = connection.view
        dispatch = self._dispatcher.dispatch
        decode = _records.decode_record
        unpack = _framing.HEADER.unpack_from
        header_size = _framing.HEADER_SIZE
        needed = records = barriers = 0
        while end - position >= header_size:
            size, kind = unpack(view, position)
            start = position + header_size
            stop = start + size
            if stop > end:
                needed = stop - position
                break
            if kind == _framing.KIND_RECORD:
                try:
                    task_id, record = decode(view[start:stop])
                except BaseException as error:  # bytes that are no record (ProtocolError)
                    # The frame's length was sound, so the stream is not: only this record
                    # is lost, and a record saying so takes its place.
                    task_id, record = None, _stand_in(connection, error)
                try:
                    dispatch(task_id, record)
                except BaseException as error:  # dispatch reports its own; this is a last resort
                    self._report_error(f"logexec: a record could not be handled ({_identify(record)})", error)
                records += 1
            elif kind == _framing.KIND_BARRIER:
                if not self._answer_barrier(selector, connection):
                    return
                barriers += 1
            else:
                self._fail(selector, connection, f"it sent a frame of unknown kind {kind}")
                return
            position = stop
        self._pass_records += records
        self._pass_barriers += barriers
        leftover = end - position
        if leftover and position:
            # Copy first: the source and the destination overlap.
            view[:leftover] = bytes(view[position:end])
        connection.filled = leftover
        capacity = len(view)
        if needed > capacity:
            connection.resize(needed)  # a frame larger than the buffer (a huge record)
        elif not leftover and capacity > READ_SIZE:
            connection.resize(READ_SIZE)  # done with the huge record: give the memory back

    def _authenticate(self, selector: selectors.BaseSelector, connection: _Connection, end: int) -> int:
        """Check the worker's proof; return where its frames start (0: not yet, or refused).

        Nothing is committed (pid, ring) until the answer is sent, so that an unexpected
        failure on the way leaves a hello that can be checked again.
        """
        if end < _framing.HELLO_SIZE:
            return 0
        view = connection.view
        proof = bytes(view[: _framing.DIGEST_SIZE])
        expected = _framing.answer_challenge(self._key, connection.challenge)
        if not hmac.compare_digest(proof, expected):
            self._refuse(selector, connection)
            return 0
        pid, via = _framing.HELLO_TAIL.unpack_from(view, _framing.DIGEST_SIZE)
        fds, connection.fds = connection.fds, []
        ring: _ring.RingReader | None = None
        if via == _framing.VIA_RING:
            problem, ring = self._map_ring(pid, fds)
        else:
            _close_fds(fds)
            problem = "" if via == _framing.VIA_CONNECTION and not fds else f"unknown transport {via}"
        if problem:
            connection.pid = pid or -1
            self._fail(selector, connection, f"its hello was refused: {problem}")
            return 0
        try:
            connection.socket.sendall(_framing.USE_CONNECTION if ring is None else _framing.USE_RING)
        except BaseException as error:
            if ring is not None:
                ring.close()
            if isinstance(error, OSError):
                self._hang_up(selector, connection)  # it died before it heard the answer
                return 0
            raise
        connection.pid = pid or -1  # never 0 once authenticated
        if ring is not None:
            connection.ring = ring
            ring.set_awake_until(self._promised)
            self._rings.append(connection)
        return _framing.HELLO_SIZE

    def _map_ring(self, pid: int, fds: list[int]) -> tuple[str, _ring.RingReader | None]:
        """Map the ring that came with a hello: (what is wrong with it, the ring or None).

        No descriptor at all is what a parent out of descriptors sees (the kernel drops it),
        and a mapping can fail for want of memory: the worker then uses its connection.
        """
        try:
            if not fds:
                self._tell_short_of_descriptors(pid, "its ring's descriptor could not be received")
                return "", None
            if len(fds) != 1:
                return f"a ring hello came with {len(fds)} descriptors", None
            try:
                return "", _ring.RingReader(fds[0])
            except _ring.RingError as error:
                return f"its shared-memory ring is unusable: {error}", None
            except (OSError, ValueError) as error:
                self._tell_short_of_descriptors(pid, f"its ring could not be mapped ({error})")
                return "", None
        finally:
            # Closed before any answer or hang-up: the peer may look at once. The mapping
            # holds no descriptor (see _ring._SharedMapping).
            _close_fds(fds)

    def _tell_short_of_descriptors(self, pid: int, what: str) -> None:
        self._report(
            logging.WARNING,
            "logexec: worker %d: %s; it sends its records through its connection instead "
            "(slower, nothing lost)",
            pid,
            what,
        )

    def _notify_worker_exit(self) -> None:
        if self._on_worker_exit is None:
            self._worker_exit_pending = False
            return
        try:
            self._worker_exit_pending = not self._on_worker_exit()
        except BaseException as error:
            self._worker_exit_pending = False
            self._report_error("logexec: the worker-exit callback failed", error)

    def _answer_barrier(self, selector: selectors.BaseSelector, connection: _Connection) -> bool:
        """Answer a barrier; False if the connection had to be given up instead."""
        for attempt in range(2):
            try:
                connection.socket.sendall(_framing.BARRIER_ACK)
            except OSError:
                return True  # the worker died while waiting; nobody is left to answer
            except BaseException as error:
                if attempt:
                    # A worker left waiting for an answer would hang its task: close the
                    # connection, which ends the wait (its result is still sent).
                    self._fail(selector, connection, f"its barrier could not be answered: {_describe(error)}")
                    return False
                self._report_error("logexec: a barrier could not be answered; trying again", error)
            else:
                return True
        return True

    def _hang_up(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        if connection.ring is not None:
            # The worker is gone; what it published is still in the ring.
            while not connection.closed and self._read_ring(selector, connection):
                pass
            if connection.closed:
                return  # closed for a protocol error while draining
        if connection.pid:
            self._worker_exit_pending = True
            self._notify_worker_exit()
        if connection.filled and connection.pid:
            # The worker died in the middle of writing a frame. That record's log call had
            # not returned, so it was never promised; still, say so rather than drop it.
            needed = _framing.HEADER_SIZE
            if connection.filled >= needed:
                needed += _framing.HEADER.unpack_from(connection.view, 0)[0]
            self._report(
                logging.WARNING,
                "logexec: worker %d exited in the middle of sending a record; the incomplete "
                "record (%d of %d bytes) was discarded",
                connection.pid,
                connection.filled,
                needed,
            )
        self._forget(selector, connection)

    def _refuse(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        self._report(
            logging.WARNING,
            "logexec: refused a connection to the log listener that failed authentication "
            "(only the executor's own workers hold the key)",
        )
        self._forget(selector, connection)

    def _fail(self, selector: selectors.BaseSelector, connection: _Connection, problem: str) -> None:
        """Close one connection that broke the protocol; report it once; tell the worker."""
        if connection.closed:
            return
        self._report(
            logging.ERROR,
            "logexec: closed the connection of %s: %s; its later records go to its stderr",
            connection.describe(),
            problem,
        )
        if connection.ring is not None:
            # Asleep: the worker's next write tries to wake us, fails, and it learns.
            with contextlib.suppress(BaseException):
                connection.ring.set_awake_until(0)
        if connection.pid:
            with contextlib.suppress(BaseException):
                connection.socket.setblocking(False)
                connection.socket.send(_framing.GOODBYE + problem.encode("utf-8", "replace")[:1024])
        self._forget(selector, connection)

    def _connection_failed(
        self, selector: selectors.BaseSelector, connection: _Connection, what: str, error: BaseException
    ) -> None:
        """An unexpected error while handling one connection: report it, try again later;
        give the connection up only if it keeps failing."""
        connection.failures += 1
        if connection.closed:
            self._report_error(f"logexec: an unexpected error while {what}", error)
        elif connection.failures >= CONNECTION_FAILURES_TOLERATED:
            self._fail(
                selector,
                connection,
                f"{connection.failures} unexpected errors in a row while {what}, the last {_describe(error)}",
            )
        else:
            self._report_error(
                f"logexec: an unexpected error while {what} ({connection.describe()}); "
                "the listener goes on and tries again",
                error,
            )
            if connection.ring is None:
                # What it sent is still in its buffer; no new bytes may come to trigger a
                # look (a worker waiting for an answer), so look again on the next pass.
                self._retry.append(connection)

    def _forget(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        connection.closed = True
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(connection.socket)
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        with contextlib.suppress(ValueError):
            self._rings.remove(connection)
        self._release(connection)

    def _release(self, connection: _Connection) -> None:
        # The socket last: a peer that sees us hang up finds everything else let go.
        connection.closed = True
        _close_fds(connection.fds)
        connection.fds = []
        if connection.ring is not None:
            connection.ring.close()
            connection.ring = None
        connection.view.release()
        connection.socket.close()

    # Reports ---------------------------------------------------------------------------

    def _report(self, level: int, message: str, *args: object) -> None:
        """logexec's own reports: through the parent's logging, and never raising."""
        report(level, message, *args)

    def _report_error(self, message: str, error: BaseException) -> None:
        report(logging.ERROR, "%s: %s", message, _describe(error), exc_info=error)

    def abandon_in_child(self) -> None:
        """In a forked child: close this process's copies of the parent's sockets.

        Only descriptors: nothing on disk, nothing the parent sees. Without this a fork
        worker would keep the parent's ends of other workers' connections open, and a
        connection the parent closes would never reach EOF for its worker.
        """
        for sock in (self._server, self._wake_reader, self._wake_writer):
            if sock is not None:
                with contextlib.suppress(BaseException):
                    sock.close()
        for connection in list(self._connections):
            with contextlib.suppress(BaseException):
                connection.socket.close()
        if self._reserve_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._reserve_fd)


def report(level: int, message: str, *args: object, exc_info: BaseException | None = None) -> None:
    """Log one of logexec's own reports on the "logexec" logger; never raises.

    The parent's handlers are walked as ``_dispatch`` walks them for worker records, so one
    failing handler cannot hide the report from the others; should even that fail, the
    report goes to ``sys.stderr``.
    """
    try:
        if not _LOGGER.isEnabledFor(level):
            return
        info = (type(exc_info), exc_info, exc_info.__traceback__) if exc_info is not None else None
        record = _LOGGER.makeRecord(_LOGGER.name, level, __file__, 0, message, args, info)
        handle_safely(_LOGGER, record)
    except BaseException as error:
        with contextlib.suppress(BaseException):
            try:
                text = message % args
            except Exception:
                text = f"{message} {args!r}"
            if sys.stderr is not None:
                sys.stderr.write(f"{text} (and reporting it failed: {_describe(error)})\n")


def _stand_in(connection: _Connection, error: BaseException) -> logging.LogRecord:
    """The record dispatched in place of one that could not be decoded."""
    return _LOGGER.makeRecord(
        _LOGGER.name,
        logging.ERROR,
        __file__,
        0,
        "logexec: %s sent a record that could not be decoded (%s); this record stands in for it",
        (connection.describe(), _describe(error)),
        None,
    )


def _identify(record: logging.LogRecord) -> str:
    """Which record, for a report that says it was lost: its logger, pid and message."""
    try:
        message = str(record.msg)
    except Exception:
        message = "<unprintable>"
    if len(message) > 500:
        message = message[:500] + "..."
    return f"logger {record.name!r}, process {record.process}, message {message!r}"


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def _new_address() -> tuple[str | None, str]:
    """A private directory and the socket's path in it, or (None, an abstract name).

    ``mkdtemp`` makes the directory 0700: only this user can reach the socket. Where that
    path is too long for ``AF_UNIX`` (a long ``TMPDIR``), Linux's abstract namespace needs no
    path at all; it has no permissions, but no peer gets past the handshake without the key.
    Elsewhere (macOS) a directory in ``/tmp`` is short enough.
    """
    directory = tempfile.mkdtemp(prefix="logexec-")
    address = os.path.join(directory, "listener")
    if len(os.fsencode(address)) < _UNIX_PATH_LIMIT:
        return directory, address
    shutil.rmtree(directory, ignore_errors=True)
    if _ABSTRACT_NAMESPACE:
        return None, f"\0logexec-{os.getpid()}-{secrets.token_hex(16)}"
    directory = tempfile.mkdtemp(prefix="logexec-", dir="/tmp")
    address = os.path.join(directory, "listener")
    if len(os.fsencode(address)) < _UNIX_PATH_LIMIT:
        return directory, address
    shutil.rmtree(directory, ignore_errors=True)
    raise OSError(
        errno.ENAMETOOLONG,
        f"logexec found no directory short enough for its AF_UNIX socket (tried the temporary "
        f"directory {tempfile.gettempdir()!r} and /tmp); set TMPDIR to a shorter path",
    )


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# Room for one descriptor in the ancillary data of a hello. No CMSG_SPACE on Windows, where
# the portable transport carries no descriptor.
_FDS_SPACE = socket.CMSG_SPACE(array.array("i").itemsize) if hasattr(socket, "CMSG_SPACE") else 0
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

# Listeners not yet stopped. At interpreter exit the stdlib has joined its workers first
# (its exit hook runs before atexit), so draining them here loses nothing.
_live_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


@atexit.register
def _stop_live_listeners() -> None:
    for listener in list(_live_listeners):
        listener.stop()


def _forget_inherited_listeners() -> None:
    # A forked child is not the listeners' owner: it must neither drain them at its exit
    # (a task's child that calls sys.exit() would delete the parent's socket directory) nor
    # hold the parent's descriptors.
    for listener in list(_live_listeners):
        listener.abandon_in_child()
    _live_listeners.clear()


if hasattr(os, "register_at_fork"):  # no fork, hence no hook, on Windows
    os.register_at_fork(after_in_child=_forget_inherited_listeners)
