"""The parent side of the channel: one thread that reads every worker's connection.

The listener owns an ``AF_UNIX`` socket in a private (0700) directory (see ``_socket``: a
short one where the temporary directory's path is too long for ``AF_UNIX``).
Each worker connects once, proves it knows the executor's random key (challenge and HMAC
answer), and from then on writes frames (see ``_framing``), either on the connection or
into a shared-memory ring it handed over with its hello (see ``_ring``). The thread waits on
all connections at once, reads the rings, and handles records in the order each worker
wrote them.

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
held by the guards (``_guard``) and tested by injecting a failure into each of those calls in
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

The guard that keeps this is one shape, in one place: ``_guard.ListenerCore`` (its
``_connection_failed`` and ``_loop_failed``, and ``report``); see its docstring.

The listener's parts, one concern each: ``_guard`` (the shared state and the guard),
``_accept`` (accepting, the handshake, the descriptor reserve), ``_read`` (the read loop,
frames, barriers, the rings' polling), and this module (binding, starting, stopping, the
final drain). ``Listener`` is the class that assembles them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import selectors
import shutil
import socket
import threading
import time
import weakref
from typing import Any

from .._dispatch import dispatching_thread
from . import _portable, _socket, _transports
from ._accept import _open_reserve
from ._guard import _ACCEPT, _WAKE, LOOP_ERROR_FIRST_PAUSE, report
from ._read import Reading

# After the workers have exited, how long in all the final drain waits for connections that
# are still open (held by a process a task forked) before it closes them. One deadline for
# the whole drain, not per event: a grandchild that keeps logging must not hold it forever.
DRAIN_SECONDS = 2.0
# At the give-up pass, how long to wait for more data on a connection before closing it.
GIVE_UP_SECONDS = 0.2
# ... and at most this long in all: a process that never stops sending (a grandchild that
# keeps logging) must not hold the shutdown forever, while a slow handler still gets the
# records already sent (a few seconds of them).
GIVE_UP_LIMIT_SECONDS = 5.0


class Listener(Reading):
    """Receives every worker's records and hands them to a ``Dispatcher``."""

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
                directory, address = _socket._new_address()
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
        directory, address = _portable.new_address(_socket._new_address)
        server: _portable.Server | None = None
        try:
            server = _portable.Server(address, self._key, report, self._refusals, self._uid)
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
            thread = dispatching_thread(self._run, "logexec-listener")
            try:
                if isinstance(self._server, _portable.Server):
                    self._server.start()  # its accept thread, started when ours is (fork)
                thread.start()
            except RuntimeError as error:
                failure: RuntimeError | None = error
            else:
                failure = None
                self._thread = self._own_thread = thread
        if failure is not None:
            self.stop()
            raise RuntimeError(
                f"logexec could not start its log listener thread ({failure}); the pool's "
                "workers cannot report their records and will fail to start"
            ) from failure

    @property
    def thread(self) -> threading.Thread | None:
        """The listener thread, once started.

        Only the thread of our own: a listener that could not start is finished by
        ``stop()`` on the caller's thread, which must not then pass for the listener's (a
        front refuses work from the listener thread, for its parent handlers).
        """
        return self._own_thread

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
            if thread is self._own_thread:
                # _stopped is set just before the thread returns, so it may still be alive
                # (under load, for a while): join it, so that no thread of ours outlives
                # shutdown(); a fork pool made next would fork a multi-threaded process
                # (3.12+ counts the OS threads and warns; under -W error it fails).
                thread.join()

    def _wake(self) -> None:
        writer = self._wake_writer
        if writer is not None:
            with contextlib.suppress(OSError, ValueError):
                writer.send(b"\0")

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
                # Room again for connections held in the backlog (_accept.MAX_HANDSHAKES).
                self._update_hold(selector)
            except BaseException as error:
                self._loop_failed("draining the workers' connections", error)
        if self._connections:
            self._give_up_on_open_connections(selector)

    def _handshaking(self) -> bool:
        """Whether the portable transport has handshakes under way (see ``_portable``)."""
        return isinstance(self._server, _portable.Server) and self._server.handshaking

    def _give_up_on_open_connections(self, selector: selectors.BaseSelector) -> None:
        # Take what they have already written, without waiting for more, then close them.
        deadline = time.monotonic() + GIVE_UP_LIMIT_SECONDS
        for connection in list(self._connections):
            if connection.ring is not None:
                # Asleep: the process's next write tries to wake us, fails, and it learns.
                with contextlib.suppress(BaseException):
                    connection.ring.set_awake_until(0)
            with contextlib.suppress(BaseException):
                connection.socket.setblocking(False)
                # Everything readable now, and on as long as data keeps arriving: a slow
                # handler must not cost the records already sent (one read per pass lost them
                # on the portable transport, where a read returns one message). Bounded by
                # GIVE_UP_SECONDS of no new data, not by a count of reads, and by
                # GIVE_UP_LIMIT_SECONDS for the whole pass.
                while (
                    not connection.closed
                    and time.monotonic() < deadline
                    and _readable(connection.socket, GIVE_UP_SECONDS)
                ):
                    self._read(selector, connection)
            with contextlib.suppress(BaseException):
                self._read_ring(selector, connection)
        pids = sorted(connection.pid for connection in self._connections if connection.pid)
        if pids:
            self._report(
                logging.WARNING,
                "logexec: %d connection(s) to the log listener were still open %.1f s after the "
                "workers exited (pids %s: still sending, e.g. from an exit hook, or held by a process "
                "a task forked); "
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
            self._refusals.summarize()
        finally:
            self._stopped.set()

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


def _readable(stream: Any, timeout: float) -> bool:
    """Whether a read on ``stream`` would return data (or EOF) within ``timeout`` seconds."""
    if isinstance(stream, _portable.StreamConnection):
        return stream.wait_readable(timeout)
    return bool(select.select([stream], [], [], timeout)[0])
