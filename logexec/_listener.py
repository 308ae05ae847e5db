"""The parent side of the channel: one thread that reads every worker's connection.

The listener owns an ``AF_UNIX`` socket in a private (0700) temporary directory. Each
worker connects once, proves it knows the executor's random key (challenge and HMAC
answer), and from then on writes frames (see ``_transport``), either on the connection or
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
"""

from __future__ import annotations

import array
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
import time
import weakref
from collections.abc import Callable

from . import _ring, _transport
from ._dispatch import Dispatcher

# Bytes asked of the kernel per read. Large reads carry many records per system call;
# beyond this the gain is gone and the buffer only costs memory.
READ_SIZE = 1 << 17
# After the workers have exited, how long the final drain waits for a connection that is
# still open (held by a process a task forked) before it gives up on it.
DRAIN_GRACE_SECONDS = 2.0
# How soon to retry telling the pool that a worker's connection ended, when it was busy.
WORKER_EXIT_RETRY_SECONDS = 0.05
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
# Room for one descriptor in the ancillary data of a hello.
_FDS_SPACE = socket.CMSG_SPACE(array.array("i").itemsize)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

_LOGGER = logging.getLogger("logexec")


class _Connection:
    """One worker's connection and its receive buffer."""

    __slots__ = ("buffer", "challenge", "fds", "filled", "pid", "ring", "socket", "view")

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
        # The connections whose frames come through a ring.
        self._rings: list[_Connection] = []
        # What the rings were last told: look again by this monotonic time; 0: asleep.
        self._promised = 0
        # Frames handled in the current pass over the rings.
        self._pass_records = 0
        self._pass_barriers = 0
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
            last_record = 0
            while not self._stopping:
                self._pass_records = self._pass_barriers = 0
                moved = self._read_rings(selector)
                now = time.monotonic_ns()
                timeout: float | None
                if moved and self._pass_records > POLL_RECORDS_PER_BARRIER * self._pass_barriers:
                    last_record = now
                    self._renew_promise(now)
                    # A good batch means the workers keep up with us: read on at once, or
                    # we sit idle while they wait. A small one: let the next batch gather.
                    timeout = 0.0 if moved >= BUSY_BYTES else POLL_SECONDS
                elif not moved and self._promised and now - last_record < _STAY_AWAKE_NS:
                    self._renew_promise(now)
                    timeout = POLL_SECONDS
                else:
                    # Nothing flows, or the records come a few per task and each task's
                    # barrier wakes us anyway: polling would only add empty looks.
                    timeout = self._sleep_timeout(selector)
                    if timeout == 0.0:
                        continue  # a frame came in while the rings were being marked asleep
                if self._worker_exit_pending:
                    # A worker-exit notice that could not be delivered yet (see
                    # _compat.wake_executor_manager) makes us come back.
                    timeout = (
                        WORKER_EXIT_RETRY_SECONDS
                        if timeout is None
                        else min(timeout, WORKER_EXIT_RETRY_SECONDS)
                    )
                events = selector.select(timeout)
                for key, _ in events:
                    self._on_ready(selector, key.data)
                if self._worker_exit_pending:
                    self._notify_worker_exit()
            self._drain(selector)
        finally:
            self._close(selector)

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
            assert connection.ring is not None
            connection.ring.set_awake_until(deadline_ns)

    def _read_rings(self, selector: selectors.BaseSelector) -> int:
        """Handle what every ring holds, one buffer each; return the most bytes one held."""
        moved = 0
        for connection in list(self._rings):
            moved = max(moved, self._read_ring(selector, connection))
        return moved

    def _read_ring(self, selector: selectors.BaseSelector, connection: _Connection) -> int:
        ring = connection.ring
        assert ring is not None
        filled = connection.filled
        try:
            received = ring.read_into(connection.view[filled:])
        except _ring.RingError as error:
            self._protocol_error(selector, connection, str(error))
            return 0
        if received:
            self._handle_frames(selector, connection, filled + received, 0)
        return received

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
            self._read_rings(selector)

    def _close(self, selector: selectors.BaseSelector) -> None:
        with self._lock:
            self._closed = True
        for connection in list(self._connections):
            self._release(connection)
        self._connections.clear()
        self._rings.clear()
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
        if connection.ring is not None:
            # Only wake-ups arrive here; the frames are in the ring.
            try:
                woken = connection.socket.recv(4096)
            except OSError:
                woken = b""
            if not woken:
                self._hang_up(selector, connection)
            return
        view = connection.view
        filled = connection.filled
        try:
            if connection.pid:
                received = connection.socket.recv_into(view[filled:])
            else:
                received = self._receive_hello(connection, view[filled:])
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
            if connection.ring is not None:
                connection.filled = 0  # anything after the hello is a wake-up
                return
        self._handle_frames(selector, connection, end, position)

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
        decode = _transport.decode_record
        unpack = _transport.HEADER.unpack_from
        header_size = _transport.HEADER_SIZE
        needed = records = barriers = 0
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
                records += 1
            elif kind == _transport.KIND_BARRIER:
                self._answer_barrier(connection)
                barriers += 1
            else:
                self._protocol_error(selector, connection, f"unknown frame kind {kind}")
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
        connection.pid, via = _transport.HELLO_TAIL.unpack_from(view, _transport.DIGEST_SIZE)
        fds, connection.fds = connection.fds, []
        if via == _transport.VIA_RING:
            problem = self._attach_ring(connection, fds)
        else:
            _close_fds(fds)
            problem = (
                ""
                if via == _transport.VIA_CONNECTION and not fds
                else f"unknown transport {via} in its hello"
            )
        if problem:
            self._protocol_error(selector, connection, problem)
            return 0
        return _transport.HELLO_SIZE

    def _attach_ring(self, connection: _Connection, fds: list[int]) -> str:
        """Map the ring that came with a hello; return what is wrong with it, or ""."""
        try:
            if len(fds) != 1:
                return f"a ring hello came with {len(fds)} descriptors"
            try:
                ring = _ring.RingReader(fds[0])
            except (OSError, ValueError, _ring.RingError) as error:
                return f"its shared-memory ring is unusable: {error}"
        finally:
            # The mapping stays. Closed before any hang-up: the peer may look at once.
            _close_fds(fds)
        connection.ring = ring
        ring.set_awake_until(self._promised)
        self._rings.append(connection)
        return ""

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
        if connection.ring is not None:
            # The worker is gone; what it published is still in the ring.
            while connection in self._rings and self._read_ring(selector, connection):
                pass
            if connection not in self._connections:
                return  # closed for a protocol error while draining
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
        self._release(connection)
        self._connections.remove(connection)
        if connection in self._rings:
            self._rings.remove(connection)

    def _release(self, connection: _Connection) -> None:
        # The socket last: a peer that sees us hang up finds everything else let go.
        _close_fds(connection.fds)
        connection.fds = []
        if connection.ring is not None:
            connection.ring.close()
            connection.ring = None
        connection.view.release()
        connection.socket.close()


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# Listeners not yet stopped. At interpreter exit the stdlib has joined its workers first
# (its exit hook runs before atexit), so draining them here loses nothing.
_live_listeners: weakref.WeakSet[Listener] = weakref.WeakSet()


@atexit.register
def _stop_live_listeners() -> None:
    for listener in list(_live_listeners):
        listener.stop()
