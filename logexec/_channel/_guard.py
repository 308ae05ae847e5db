"""The listener's state, and the one shape in which it survives a failure.

The listener is one class assembled from its concerns, each in a module of its own:

* this module's ``ListenerCore``: the state every part shares, and the guard;
* ``_accept``'s ``Accepting``: accepting connections, the handshake, the descriptor reserve;
* ``_read``'s ``Reading``: the read loop over connections and rings, frames and barriers;
* ``_listener``'s ``Listener``: binding, starting, stopping and the final drain.

The guard has one shape (see "Failure handling" in ``_listener``, the invariant it keeps):
every call into somebody else's code or bytes is wrapped as ::

    try:
        ...  # the call
    except BaseException as error:  # see "Failure handling" in _listener
        self._connection_failed(selector, connection, "what it was doing", error)

or, around the loop itself, ``self._loop_failed(what, error)``. Both report once, through
``report`` (which itself never raises), and go on; a connection that keeps failing is given
up (``_fail``: closed, reported with its worker's pid, the worker told why), never the thread.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence

from .._dispatch import Dispatcher, handle_safely
from . import _framing, _portable, _ring, _socket

# Bytes asked of the kernel per read. Large reads carry many records per system call;
# beyond this the gain is gone and the buffer only costs memory.
READ_SIZE = 1 << 17
# Unexpected errors in a row on one connection before it is given up (its worker then
# falls back to its stderr): one may be passing, one that repeats would repeat forever.
CONNECTION_FAILURES_TOLERATED = 3
# How soon such a connection is looked at again.
RETRY_SECONDS = 0.05
# After an unexpected error in the loop itself, pause before going on (doubling up to the
# maximum) so that an error that repeats cannot spin a core or flood the reports.
LOOP_ERROR_FIRST_PAUSE = 0.01
LOOP_ERROR_MAX_PAUSE = 1.0

_LOGGER = logging.getLogger("logexec")
# How many of a worker's last records its WorkerExit carries (for a crash's notes), and
# from how many of the last bytes of each buffer read they are taken (see _read).
RECENT_RECORDS = 10
RECENT_TAIL_BYTES = 64 * 1024


# What a connection is: a socket, or a multiprocessing connection dressed as one (_portable).
_Stream = socket.socket | _portable.StreamConnection


class _Connection:
    """One worker's connection and its receive buffer."""

    __slots__ = (
        "accepted",
        "barriers",
        "buffer",
        "challenge",
        "closed",
        "failures",
        "fds",
        "filled",
        "last_task",
        "pid",
        "recent",
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
        # Barriers answered on this connection: the worker counts them too (barrier_ack).
        self.barriers = 0
        # Descriptors received before the hello was complete, and the ring made of one.
        self.fds: list[int] = []
        self.ring: _ring.RingReader | None = None
        # For the notes of a crash (WorkerExit): its last records, kept as they came (to
        # be formatted only if it dies), and the task id of the last one.
        self.recent: collections.deque[logging.LogRecord] = collections.deque(maxlen=RECENT_RECORDS)
        self.last_task: int | None = None

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


class WorkerExit:
    """What the listener knows of a worker whose connection ended: its pid, and how it ended.

    ``cut_off`` is how many bytes of a frame it was still writing (0: it ended between
    records; more: it died in the middle of one, whose log call had not returned). How the
    process itself ended (its exit code) is its pool's to tell, not the listener's.
    ``records`` are its last records (at most ``RECENT_RECORDS``, oldest first), all
    handled by now, and ``last_task`` the task id of the last one (None if it logged none):
    what a front needs to say what a dead worker was doing.
    """

    __slots__ = ("cut_off", "last_task", "pid", "records")

    def __init__(
        self,
        pid: int,
        cut_off: int,
        records: Sequence[logging.LogRecord] = (),
        last_task: int | None = None,
    ) -> None:
        self.pid = pid
        self.cut_off = cut_off
        self.records = tuple(records)
        self.last_task = last_task

    def __repr__(self) -> str:
        return f"WorkerExit(pid={self.pid}, cut_off={self.cut_off})"


# Told, on the listener thread, of workers whose connections ended; returns False to be
# told again later (the exits told so far, and any since), True once it has heard them.
OnWorkerExit = Callable[[Sequence[WorkerExit]], bool]


class ListenerCore:
    """The listener's state, and the guard every part of it goes through."""

    def __init__(
        self, dispatcher: Dispatcher, key: bytes, on_worker_exit: OnWorkerExit | None = None
    ) -> None:
        self._dispatcher = dispatcher
        self._key = key
        # Called when a worker's connection ends; returns False to be called again later.
        self._on_worker_exit = on_worker_exit
        # The exits it has not heard of yet (see _notify_worker_exit).
        self._worker_exits: list[WorkerExit] = []
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
        # Accepting waits while MAX_HANDSHAKES connections are in their handshake (_accept).
        self._accept_held = False
        # Peers refused at the door, reported once per kind (see _socket.Refusals).
        self._refusals = _socket.Refusals(report)
        # Whose connections are heard at all (see _socket.foreign_peer); -1: no uids here.
        self._uid = os.geteuid() if hasattr(os, "geteuid") else -1
        self._thread: threading.Thread | None = None
        # The thread start() made (not a caller that ran the loop itself): stop() joins it.
        self._own_thread: threading.Thread | None = None
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

    def _loop_failed(self, what: str, error: BaseException) -> None:
        """Report an unexpected error of the loop itself; pause a little; go on."""
        self._report_error(f"logexec: an unexpected error in the log listener while {what}", error)
        # Back off so that an error that repeats every pass cannot spin.
        time.sleep(self._loop_pause)
        self._loop_pause = min(self._loop_pause * 2, LOOP_ERROR_MAX_PAUSE)

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

    def _report(self, level: int, message: str, *args: object) -> None:
        """logexec's own reports: through the parent's logging, and never raising."""
        report(level, message, *args)

    def _report_error(self, message: str, error: BaseException) -> None:
        report(logging.ERROR, "%s: %s", message, _describe(error), exc_info=error)


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


def _describe(error: BaseException) -> str:
    try:
        return f"{type(error).__name__}: {error}"
    except Exception:
        return type(error).__name__


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
