"""The worker's end of the channel: its connection to the parent, and the config to reach it.

The initializer, the task wrapper and the handler on root that use it are in ``_setup``.

Each worker process holds one private, authenticated connection to the parent's
listener (see ``_listener``) and, where it can, a shared-memory ring beside it (see
``_ring``). A log call encodes the record and, before it returns, either publishes it in
the ring or writes it to the connection. Either way the frame is in kernel-owned memory
that the parent holds too, so it survives the worker being killed a moment later.

A log call never raises into the task and never loses its record: if the parent cannot be
reached (it exited, or it closed this worker's connection for a reason it sends along), the
record goes to this worker's stderr, after a one-time notice that says why.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from .. import _compat
from . import _framing, _portable, _ring, _transports

# The parent's levels: explicitly set logger levels by name ("" for root), and the level
# given to logging.disable.
Levels = tuple[dict[str, int], int]
# Levels changed in the parent after its workers' base levels were fixed (WorkerConfig's
# ``levels``): (version, changes, disabled). ``changes`` holds only the loggers whose level
# differs from the base (NOTSET for one the parent unset), so a task carries what changed,
# never the whole table: with 2,000 configured loggers and one setLevel, one entry. Every
# task submitted after a change carries the update, and each worker applies it when its
# version is not the one it applied last; being relative to the one base every worker
# starts from, an update is complete by itself, whichever versions a worker saw before.
LevelsUpdate = tuple[int, dict[str, int], int]
# The worker's connection: a socket, or a multiprocessing connection dressed as one.
_Stream = socket.socket | _portable.StreamConnection


class WorkerConfig:
    """What a worker needs to reach its parent, and the parent's logging levels.

    The executor fills in ``address`` when it binds the listener, before any worker
    starts. ``levels`` are the base levels that ``LevelsUpdate`` are relative to: a front
    that sends updates fixes them in the parent (``levels = current_levels()``) before any
    worker starts; None means no base (the start levels serve). A worker starts with the
    levels in force when it starts, so that the user's initializer logs at those: captured
    when the config is pickled (``start_levels``), which for spawn and forkserver happens as
    each worker starts; under fork nothing is pickled (``pickled`` is False) and the worker
    keeps the levels it inherited.
    """

    def __init__(
        self,
        key: bytes,
        address: _portable.Address = "",
        levels: Levels | None = None,
        transport: str = "",
        pickled: bool = False,
        start_levels: Levels | None = None,
    ) -> None:
        self.key = key
        self.address = address
        self.levels = levels
        # The parent's choice (see _transports), filled in with the address; "" chooses here.
        self.transport = transport
        self.pickled = pickled
        self.start_levels = start_levels

    def __reduce__(self) -> tuple[Any, ...]:
        arguments = (self.key, self.address, self.levels, self.transport, True, current_levels())
        return (WorkerConfig, arguments)


def current_levels() -> Levels:
    """The parent's levels as a worker mirrors them."""
    return (_compat.explicit_levels(), _compat.disabled_level())


def level_changes(base: Levels, levels: Levels) -> dict[str, int]:
    """The loggers whose level in ``levels`` differs from ``base`` (NOTSET: no longer set)."""
    base_levels, current = base[0], levels[0]
    changes = {name: level for name, level in current.items() if base_levels.get(name) != level}
    for name in base_levels.keys() - current.keys():
        changes[name] = logging.NOTSET
    return changes


class ChannelClosed(ConnectionError):
    """The parent cannot be reached: it exited, or its listener closed this connection."""


# How many times a worker connects when the listener hangs up before its greeting. The
# listener does that only when sending the greeting failed unexpectedly (and reports it),
# never to refuse (a refusal says why): the next connection is greeted. Bounded, so that a
# listener that keeps failing ends in the initializer's error rather than a loop.
CONNECT_ATTEMPTS = 3


class _NoGreeting(EOFError):
    """The listener closed a new connection without greeting it (see CONNECT_ATTEMPTS)."""


class Channel:
    """The worker's end of its connection; also the "queue" of its ``QueueHandler``."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._socket: _Stream | None = None
        # None when frames go through the connection (see _ring.enabled).
        self._ring: _ring.RingWriter | None = None
        # The ring while it can be written without any check (not forked, not broken):
        # the one attribute the hot path looks at.
        self._ready_ring: _ring.RingWriter | None = None
        # Set in a child forked from this worker (see after_fork_in_child).
        self._forked = False
        # Serialises writers: a task's threads may log while its barrier is sent. Re-entrant
        # because a signal handler that logs may interrupt a log call on the same thread;
        # that nested call must not deadlock, nor write into the middle of the interrupted
        # frame, so it is parked in _deferred and the interrupted call sends it (_send).
        self._lock = threading.RLock()
        self._writing = False
        self._deferred: list[tuple[bytes, logging.LogRecord]] = []
        # Where a record goes when the parent cannot be reached (set by WorkerHandler).
        self.fallback: Callable[[logging.LogRecord], None] = _ignore
        self._broken = False
        # Why the parent closed the connection, if it said.
        self.closed_reason = ""
        self.task_id: int | None = None
        self.records_in_task = 0
        # Barriers sent on this connection: the listener numbers its answers the same way
        # (_framing.barrier_ack).
        self._barriers = 0

    def connect(self) -> None:
        for attempt in range(1, CONNECT_ATTEMPTS + 1):
            try:
                self._connect_once()
            except _NoGreeting:
                if attempt == CONNECT_ATTEMPTS:
                    raise
            else:
                return

    def _connect_once(self) -> None:
        transport = self._config.transport or _transports.choose()
        sock: _Stream
        if transport == _transports.PORTABLE:
            # The stdlib's handshake first (see _portable), then the same hello as below.
            sock = _portable.connect(self._config.address, self._config.key)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ring: _ring.RingWriter | None = None
        try:
            if isinstance(sock, socket.socket):
                sock.connect(self._config.address)
            try:
                greeting = _receive_exactly(sock, 1)
            except EOFError:
                raise _NoGreeting("the parent's log listener hung up before its greeting") from None
            if greeting != _framing.GREETING:
                raise ChannelClosed(
                    f"logexec: the parent refused this worker's log connection: {_read_reason(sock)}"
                )
            challenge = _receive_exactly(sock, _framing.CHALLENGE_SIZE)
            proof = _framing.answer_challenge(self._config.key, challenge)
            ring = self._open_ring() if transport == _transports.RING else None
            if ring is None:
                sock.sendall(proof + _framing.HELLO_TAIL.pack(os.getpid(), _framing.VIA_CONNECTION))
            else:
                hello = proof + _framing.HELLO_TAIL.pack(os.getpid(), _framing.VIA_RING)
                assert ring.fd is not None
                try:
                    # One sendmsg carries the hello and the descriptor (a hello of this
                    # size is never split by a stream socket's first write).
                    assert isinstance(sock, socket.socket)  # a ring implies the socket transport
                    sent = socket.send_fds(sock, [hello], [ring.fd])
                    if sent != len(hello):
                        sock.sendall(hello[sent:])
                finally:
                    ring.close_fd()
            answer = _receive_exactly(sock, 1)
            if answer == _framing.USE_CONNECTION and ring is not None:
                # The parent could not take the ring (short of descriptors or memory).
                ring.detach()
                ring = None
            elif answer not in (_framing.USE_RING, _framing.USE_CONNECTION):
                raise ChannelClosed(f"logexec: the parent refused this worker's hello: {_read_reason(sock)}")
        except BaseException:
            if ring is not None:
                ring.detach()
            sock.close()
            raise
        self._socket = sock
        self._ring = self._ready_ring = ring
        self._barriers = 0
        self._forked = False
        self._broken = False
        self.closed_reason = ""

    def put(self, frame: bytes, record: logging.LogRecord) -> None:
        """Send one framed record before returning; what cannot be sent goes to ``fallback``."""
        with self._lock:
            if self._writing:
                # Nested inside a write of this thread (a signal handler): see __init__.
                self._deferred.append((frame, record))
                return
            ring = self._ready_ring
            if ring is None:
                self._send(frame, record)
                return
            # Nearly every call: a copy into the ring, no system call. Flagged as a write
            # like any other, so that a signal handler's record waits its turn (see _send).
            self._writing = True
            mark = ring.end
            try:
                written = ring.write(frame)
            except OSError:
                self._break()
                self.fallback(record)
                written = True
            except BaseException:
                # A signal handler raised inside the copy (see _write): the frame went in
                # whole or not at all. Finish the job, then let the exception go on.
                self._writing = False
                if ring.end == mark:
                    self._send(frame, record)
                else:
                    self.records_in_task += 1
                    ring.settle()
                raise
            else:
                if written:
                    self.records_in_task += 1
            finally:
                self._writing = False
            if not written:
                self._send(frame, record)  # the ring is full: wait for room there
            elif self._deferred:
                self._send(None, None)

    def _send(self, frame: bytes | None, record: logging.LogRecord | None) -> None:
        """Write ``frame``, then whatever a nested call parked meanwhile. Holds the lock."""
        while True:
            self._writing = True
            try:
                if frame is not None and record is not None:
                    self._write_or_fall_back(frame, record)
                    frame = record = None
                while self._deferred:
                    self._write_or_fall_back(*self._deferred.pop(0))
            finally:
                self._writing = False
            # A call nested after the last look but before _writing was cleared parked its
            # record; one nested after the clear wrote it itself. So this look is the last.
            if not self._deferred:
                return

    def _write_or_fall_back(self, frame: bytes, record: logging.LogRecord) -> None:
        if self._broken and not self._forked:
            self.fallback(record)
            return
        try:
            self._write(frame)
        except (OSError, EOFError):  # EOFError: a forked child's reconnection was refused
            self._break()
            self.fallback(record)

    def _write(self, frame: bytes, *, barrier: bool = False) -> None:
        """Write the whole frame and count it; then raise what a signal handler raised meanwhile.

        A signal handler's exception (a ``signal.alarm`` timeout, Ctrl-C) surfaces between
        two bytecodes, or in a system call that the signal interrupted: halfway through a
        frame, it would leave the channel mid-frame for good. So it is held until the frame
        is complete, and how far the frame got is always read from state that each piece
        moves in the same step as it goes out, never from a local that the exception could
        skip: the ring's ``end``, or the counts that ``send`` returns, kept by C code
        (``list.extend`` over ``map``) before control is back where a handler could run.
        """
        ring = self._ready_ring
        if ring is None:
            self._prepare_slow_path()
            ring = self._ready_ring  # a child forked by a task has a new one now
        sock = self._socket
        assert sock is not None  # checked above
        view = memoryview(frame)
        send: Callable[[memoryview], int] = sock.send
        if isinstance(sock, _portable.StreamConnection):
            wire = sock.wire(frame)
            if wire is not None:
                # send_bytes cannot say how much of a message it wrote before a handler
                # raised: write the stdlib's messages on the descriptor ourselves.
                view = memoryview(wire)
                send = functools.partial(os.write, sock.fileno())
        size = len(view)
        mark = ring.end if ring is not None else 0
        sent: list[int] = []
        woken = not barrier
        interrupted: BaseException | None = None
        while True:
            try:
                if ring is not None:
                    done = ring.end - mark
                    if done < size and not (done == 0 and ring.write(frame)):
                        ring.write_waiting(view, start=ring.end - mark)
                    ring.settle()
                    if not woken:
                        # A barrier waits for the listener, so it must not wait for a
                        # missed wake-up. A wake-up cut short is simply sent again.
                        self._wake()
                        woken = True
                else:
                    done = sum(sent)
                    while done < size:
                        sent.extend(map(send, (view[done:],)))
                        done = sum(sent)
                break
            except (OSError, EOFError):
                raise
            except BaseException as error:
                if interrupted is None:
                    interrupted = error
        if barrier:
            self._barriers += 1
        else:
            self.records_in_task += 1
        if interrupted is not None:
            raise interrupted

    def _prepare_slow_path(self) -> None:
        if self._forked:
            # A process forked by a task inherited this object. Writing to the inherited
            # connection or ring would interleave its frames with the worker's, so it
            # gets a connection of its own.
            self._reconnect_after_fork()
        if self._broken or self._socket is None:
            raise ChannelClosed("the parent's log listener is unreachable")

    def _break(self) -> None:
        if not self._broken:
            self._broken = True
            self._ready_ring = None
            self.closed_reason = self._goodbye_reason()

    def _goodbye_reason(self) -> str:
        """What the parent said when it closed the connection, if it said anything."""
        sock = self._socket
        if sock is None:
            return ""
        try:
            if isinstance(sock, _portable.StreamConnection):
                data = sock.recv_now(_framing.REASON_LIMIT)
            else:
                data = sock.recv(_framing.REASON_LIMIT, socket.MSG_DONTWAIT)
        except (OSError, EOFError):
            return ""
        # A barrier's answer may come first; the goodbye is what follows its marker.
        marker = data.find(_framing.GOODBYE)
        if marker < 0:
            return ""
        return data[marker + 1 :].decode("utf-8", "replace")

    def _wake(self) -> None:
        # Any byte will do: the listener sleeps on the connection and then reads the ring.
        assert self._socket is not None
        self._socket.send(b"w")

    def _open_ring(self) -> _ring.RingWriter | None:
        try:
            return _ring.RingWriter(self._wake, self._check_parent)
        except OSError:
            # No memfd here (a sandbox, an old kernel, a descriptor limit): the connection
            # carries the frames instead, at the cost of a system call per record.
            return None

    def _check_parent(self) -> None:
        # Peek, never read: the bytes waiting may be a barrier's answer for another thread.
        # Only rings call this, and a ring implies the socket transport.
        assert isinstance(self._socket, socket.socket)
        try:
            data = self._socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if not data or data == _framing.GOODBYE:
            raise ChannelClosed("the parent's log listener closed the connection")

    def begin_task(self, task_id: int) -> None:
        self.task_id = task_id
        self.records_in_task = 0

    def end_task(self) -> None:
        """Wait until the parent has handled every record this task logged."""
        task_id, self.task_id = self.task_id, None
        with self._lock:
            if self._deferred and not self._writing:
                self._send(None, None)
            if not self.records_in_task or task_id is None or self._broken or self._socket is None:
                return
            self.records_in_task = 0
            barrier = _framing.encode_barrier(task_id)
            self._writing = True  # a signal handler's record waits until the barrier is out
            try:
                # Counts the barrier; behind the task's records in the ring, if any.
                self._write(barrier, barrier=True)
                expected = _framing.barrier_ack(self._barriers)
            except OSError:
                self._break()
                return
            finally:
                self._writing = False
            if self._deferred:
                self._send(None, None)
        try:
            # Only the task's thread reads, so no lock: other threads may log meanwhile.
            while True:
                answer = _receive_exactly(self._socket, 1)
                if answer == _framing.GOODBYE:
                    raise ChannelClosed(_read_reason(self._socket))
                if answer == expected:
                    break
                # The late answer to a barrier whose wait a signal handler's exception
                # interrupted: taking it for this one would return before our records
                # are handled.
        except (OSError, EOFError) as error:
            # The parent is gone or its listener stopped; the result can still be sent.
            self._break()
            if isinstance(error, ChannelClosed) and str(error):
                self.closed_reason = str(error)

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork; in the child it never will
        # be released. A fork hook rather than an os.getpid() check per record: that check
        # is a system call on every log call.
        self._lock = threading.RLock()
        self._writing = False
        self._deferred = []  # the worker's, not this child's
        self._forked = True
        self._ready_ring = None
        # The child is not running the worker's task: its records carry no task id, and
        # it owes no barrier.
        self.task_id = None
        self.records_in_task = 0

    def _reconnect_after_fork(self) -> None:
        if self._socket is not None:
            # Closing our copy does not affect the worker that owns the connection.
            self._socket.close()
            self._socket = None
        if self._ring is not None:
            self._ring.detach()  # the worker that owns it keeps writing there
            self._ring = None
        self.connect()


def _ignore(record: logging.LogRecord) -> None:
    """The fallback before a handler is attached: the channel is not in use yet."""


def _receive_exactly(sock: _Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the parent's log listener closed the connection")
        data += chunk
    return data


def _read_reason(sock: _Stream) -> str:
    """The text the parent sent after a refusal or goodbye, up to EOF (bounded)."""
    data = b""
    try:
        while len(data) < _framing.REASON_LIMIT:
            chunk = sock.recv(_framing.REASON_LIMIT - len(data))
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode("utf-8", "replace") or "no reason given"
