"""The parent side of the channel: one thread that reads every worker's connection.

The listener owns an ``AF_UNIX`` socket in a private (0700) temporary directory. Each
worker connects once, proves it knows the executor's random key (challenge and HMAC
answer), and from then on writes frames (see ``_transport``). The thread waits on all
connections at once and handles records in the order each worker wrote them.

Why one connection per worker rather than one shared ``multiprocessing.Queue``:

* a shared queue has one write lock, which a killed writer can hold forever, and one pipe,
  which a frame cut off mid-write poisons for every other writer;
* ``Queue.put`` returns before the bytes leave the worker (a feeder thread writes later),
  so a crash loses records whose log call had already returned.

Here a killed worker is only an EOF on its own connection, a cut-off frame is only at the
end of that one connection, and a full socket blocks only the worker that filled it, which
is the backpressure that bounds memory when the parent's handlers are slow.
"""

from __future__ import annotations

import atexit
import contextlib
import hmac
import logging
import os
import selectors
import shutil
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable

from . import _transport
from ._dispatch import Dispatcher

# Bytes asked of the kernel per read. Large reads carry many records per system call;
# beyond this the gain is gone and the buffer only costs memory.
READ_SIZE = 1 << 17
# After the workers have exited, how long the final drain waits for a connection that is
# still open (held by a process a task forked) before it gives up on it.
DRAIN_GRACE_SECONDS = 2.0
# How soon to retry telling the pool that a worker's connection ended, when it was busy.
WORKER_EXIT_RETRY_SECONDS = 0.05

_LOGGER = logging.getLogger("logexec")


class _Connection:
    """One worker's connection and its receive buffer."""

    __slots__ = ("buffer", "challenge", "filled", "pid", "socket", "view")

    def __init__(self, sock: socket.socket, challenge: bytes) -> None:
        self.socket = sock
        self.challenge = challenge
        # 0 until the peer has authenticated.
        self.pid = 0
        # Received bytes not yet handled: view[:filled]. The buffer is reused for every
        # read (recv_into), because allocating a fresh large bytes object per recv costs
        # more than handling the records in it.
        self.buffer = bytearray(READ_SIZE)
        self.view = memoryview(self.buffer)
        self.filled = 0

    def resize(self, capacity: int) -> None:
        """Move the unhandled bytes into a buffer of ``capacity`` bytes."""
        pending = bytes(self.view[: self.filled])
        self.view.release()
        self.buffer = bytearray(capacity)
        self.view = memoryview(self.buffer)
        self.view[: len(pending)] = pending


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
        self._directory: str | None = None
        self._server: socket.socket | None = None
        self._wake_reader: socket.socket | None = None
        self._wake_writer: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._connections: list[_Connection] = []
        self._stopping = False
        self._closed = False
        self.address = ""

    # Lifecycle -------------------------------------------------------------------------

    def bind(self) -> str:
        """Create the socket workers connect to; idempotent. Returns its address."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the log listener was already stopped; create a new executor")
            if self._server is None:
                # mkdtemp makes the directory 0700: only this user can reach the socket.
                directory = tempfile.mkdtemp(prefix="logexec-")
                address = os.path.join(directory, "listener")
                server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    server.bind(address)
                    server.listen(socket.SOMAXCONN)
                    server.setblocking(False)
                except BaseException:
                    server.close()
                    shutil.rmtree(directory, ignore_errors=True)
                    raise
                self._wake_reader, self._wake_writer = socket.socketpair()
                self._directory, self._server, self.address = directory, server, address
                _live_listeners.add(self)
            return self.address

    @property
    def stop_requested(self) -> bool:
        return self._stopping or self._closed

    def start(self) -> None:
        """Start the listener thread; idempotent."""
        if self._thread is not None:
            return  # the usual case, on every submit under fork: no lock needed
        with self._lock:
            if self._thread is not None or self._stopping or self._server is None:
                return
            self._thread = threading.Thread(target=self._run, name="logexec-listener", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Handle everything the workers wrote, then stop. Call after the workers exited.

        Every connection is read to its end, so no record that reached the kernel is left
        behind. Idempotent and safe from any thread.
        """
        with self._lock:
            self._stopping = True
            thread = self._thread
            run_here = thread is None and self._server is not None and not self._closed
            if run_here:
                # Never started (a fork pool that was entered but never used, say): drain
                # what may be in the backlog on this thread instead.
                self._thread = threading.current_thread()
        if self._wake_writer is not None:
            with contextlib.suppress(OSError):
                self._wake_writer.send(b"\0")
        if run_here:
            self._run()
        elif thread is not None and thread is not threading.current_thread():
            thread.join()

    # The thread ------------------------------------------------------------------------

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._server is not None and self._wake_reader is not None
        selector.register(self._server, selectors.EVENT_READ, _ACCEPT)
        selector.register(self._wake_reader, selectors.EVENT_READ, _WAKE)
        try:
            while not self._stopping:
                # Normally wait without a timeout; only a worker-exit notice that could not
                # be delivered yet (see _compat.wake_executor_manager) makes us come back.
                timeout = WORKER_EXIT_RETRY_SECONDS if self._worker_exit_pending else None
                for key, _ in selector.select(timeout):
                    self._on_ready(selector, key.data)
                if self._worker_exit_pending:
                    self._notify_worker_exit()
            self._drain(selector)
        finally:
            self._close(selector)

    def _drain(self, selector: selectors.BaseSelector) -> None:
        # The workers have exited, so every connection ends with EOF once read to the end.
        # Connections still in the backlog are accepted first: a worker may have connected
        # and logged without ever being accepted.
        self._accept(selector)
        while self._connections:
            events = selector.select(timeout=DRAIN_GRACE_SECONDS)
            if not events:
                pids = sorted(connection.pid for connection in self._connections)
                _LOGGER.warning(
                    "logexec: %d connection(s) to the log listener were still open %.1f s after "
                    "the workers exited (pids %s; a process forked by a task may still hold "
                    "them); closing them, and records written to them later are lost",
                    len(pids),
                    DRAIN_GRACE_SECONDS,
                    pids,
                )
                return
            for key, _ in events:
                self._on_ready(selector, key.data)

    def _close(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            self._closed = True
        for connection in self._connections:
            connection.socket.close()
        self._connections.clear()
        selector.close()
        for sock in (self._server, self._wake_reader, self._wake_writer):
            if sock is not None:
                sock.close()
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
        self._dispatcher.forget_all()
        _live_listeners.discard(self)

    def _on_ready(self, selector: selectors.BaseSelector, data: object) -> None:
        if isinstance(data, _Connection):
            self._read(selector, data)
        elif data is _ACCEPT:
            self._accept(selector)
        else:
            assert self._wake_reader is not None
            self._wake_reader.recv(64)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        assert self._server is not None
        while True:
            try:
                sock, _ = self._server.accept()
            except (BlockingIOError, InterruptedError):
                return
            sock.setblocking(True)
            challenge = os.urandom(_transport.CHALLENGE_SIZE)
            try:
                sock.sendall(challenge)
            except OSError:
                sock.close()
                continue
            connection = _Connection(sock, challenge)
            self._connections.append(connection)
            selector.register(sock, selectors.EVENT_READ, connection)

    def _read(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        view = connection.view
        filled = connection.filled
        try:
            received = connection.socket.recv_into(view[filled:])
        except OSError:
            received = 0
        if not received:
            self._hang_up(selector, connection)
            return
        end = filled + received
        position = 0
        if not connection.pid:
            position = self._authenticate(selector, connection, end)
            if not position:
                return
        dispatch = self._dispatcher.dispatch
        decode = _transport.decode_record
        unpack = _transport.HEADER.unpack_from
        header_size = _transport.HEADER_SIZE
        needed = 0
        while end - position >= header_size:
            size, kind = unpack(view, position)
            start = position + header_size
            stop = start + size
            if stop > end:
                needed = stop - position
                break
            if kind == _transport.KIND_RECORD:
                task_id, record = decode(view[start:stop])
                dispatch(task_id, record)
            elif kind == _transport.KIND_BARRIER:
                self._answer_barrier(connection)
            else:
                self._protocol_error(selector, connection, f"unknown frame kind {kind}")
                return
            position = stop
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
        """Check the worker's proof; return where its frames start (0: not yet, or refused)."""
        if end < _transport.HELLO_SIZE:
            connection.filled = end
            return 0
        view = connection.view
        proof = bytes(view[: _transport.DIGEST_SIZE])
        expected = _transport.answer_challenge(self._key, connection.challenge)
        if not hmac.compare_digest(proof, expected):
            self._refuse(selector, connection)
            return 0
        connection.pid = _transport.PID.unpack_from(view, _transport.DIGEST_SIZE)[0]
        return _transport.HELLO_SIZE

    def _notify_worker_exit(self) -> None:
        if self._on_worker_exit is None:
            self._worker_exit_pending = False
            return
        try:
            self._worker_exit_pending = not self._on_worker_exit()
        except Exception:
            self._worker_exit_pending = False
            _LOGGER.exception("logexec: the worker-exit callback failed")

    def _answer_barrier(self, connection: _Connection) -> None:
        try:
            connection.socket.sendall(_transport.BARRIER_ACK)
        except OSError:
            pass  # the worker died while waiting; nobody is left to answer

    def _hang_up(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        if connection.pid:
            self._worker_exit_pending = True
            self._notify_worker_exit()
        if connection.filled and connection.pid:
            # The worker died in the middle of writing a frame. That record's log call had
            # not returned, so it was never promised; still, say so rather than drop it.
            needed = _transport.HEADER_SIZE
            if connection.filled >= needed:
                needed += _transport.HEADER.unpack_from(connection.view, 0)[0]
            _LOGGER.warning(
                "logexec: worker %d exited in the middle of sending a record; the incomplete "
                "record (%d of %d bytes) was discarded",
                connection.pid,
                connection.filled,
                needed,
            )
        self._forget(selector, connection)

    def _refuse(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        _LOGGER.warning(
            "logexec: refused a connection to the log listener that failed authentication "
            "(only the executor's own workers hold the key)"
        )
        self._forget(selector, connection)

    def _protocol_error(
        self, selector: selectors.BaseSelector, connection: _Connection, problem: str
    ) -> None:
        _LOGGER.error("logexec: closed the connection of worker %d: %s", connection.pid, problem)
        self._forget(selector, connection)

    def _forget(self, selector: selectors.BaseSelector, connection: _Connection) -> None:
        selector.unregister(connection.socket)
        connection.socket.close()
        connection.view.release()
        self._connections.remove(connection)


# Listeners not yet stopped. At interpreter exit the stdlib has joined its workers first
# (its exit hook runs before atexit), so draining them here loses nothing.
_live_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


@atexit.register
def _stop_live_listeners() -> None:
    for listener in list(_live_listeners):
        listener.stop()
