"""The worker side: the initializer, the task wrapper and the handler on root.

Each worker process holds one private, authenticated connection to the parent's
listener (see ``_listener``) and, where it can, a shared-memory ring beside it (see
``_ring``). A log call encodes the record and, before it returns, either publishes it in
the ring or writes it to the connection. Either way the frame is in kernel-owned memory
that the parent holds too, so it survives the worker being killed a moment later.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys
import threading
from typing import Any, Callable

from . import _compat, _context, _ring, _transport


class WorkerConfig:
    """What a worker needs to reach its parent, and the parent's logging levels.

    The executor fills in ``address`` when it binds the listener, before any worker
    starts. Levels are captured when the config is pickled, which for spawn and forkserver
    happens as each worker starts, so a worker mirrors the levels in force at its start.
    Under fork nothing is pickled and the worker inherits the parent's loggers as they are.
    """

    def __init__(
        self, key: bytes, address: str = "", levels: tuple[dict[str, int], int] | None = None
    ) -> None:
        self.key = key
        self.address = address
        self.levels = levels

    def __reduce__(self) -> tuple[Any, ...]:
        levels = (_compat.explicit_levels(), _compat.disabled_level())
        return (WorkerConfig, (self.key, self.address, levels))


class Channel:
    """The worker's end of its connection; also the "queue" of its ``QueueHandler``."""

    def __init__(self, config: WorkerConfig) -> None:
        self._config = config
        self._socket: socket.socket | None = None
        # None when frames go through the connection (see _ring.enabled).
        self._ring: _ring.RingWriter | None = None
        # The ring while it can be written without any check (not forked, not broken):
        # the one attribute the hot path looks at.
        self._ready_ring: _ring.RingWriter | None = None
        # Set in a child forked from this worker (see _after_fork_in_child).
        self._forked = False
        # One lock for the socket: a task's threads may log while its barrier is sent.
        self._lock = threading.Lock()
        self._broken = False
        self.task_id: int | None = None
        self.records_in_task = 0

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self._config.address)
            challenge = _receive_exactly(sock, _transport.CHALLENGE_SIZE)
            proof = _transport.answer_challenge(self._config.key, challenge)
            ring = self._open_ring()
            if ring is None:
                sock.sendall(proof + _transport.HELLO_TAIL.pack(os.getpid(), _transport.VIA_CONNECTION))
            else:
                hello = proof + _transport.HELLO_TAIL.pack(os.getpid(), _transport.VIA_RING)
                assert ring.fd is not None
                try:
                    # One sendmsg carries the hello and the descriptor (a hello of this
                    # size is never split by a stream socket's first write).
                    sent = socket.send_fds(sock, [hello], [ring.fd])
                    if sent != len(hello):
                        sock.sendall(hello[sent:])
                finally:
                    ring.close_fd()
        except BaseException:
            sock.close()
            raise
        self._socket = sock
        self._ring = self._ready_ring = ring
        self._forked = False
        self._broken = False

    def put_nowait(self, frame: bytes) -> None:
        """Write one framed record; returns only once the bytes are in the kernel."""
        with self._lock:
            ring = self._ready_ring
            if ring is None:
                self._prepare_slow_path()
                ring = self._ready_ring  # a child forked by a task has a new one now
            try:
                if ring is None:
                    self._socket.sendall(frame)  # type: ignore[union-attr]  # checked above
                elif not ring.write(frame):  # nearly every call: a copy, no system call
                    ring.write_waiting(frame)
            except OSError:
                self._break()
                raise
            self.records_in_task += 1

    def _prepare_slow_path(self) -> None:
        if self._forked:
            # A process forked by a task inherited this object. Writing to the inherited
            # connection or ring would interleave its frames with the worker's, so it
            # gets a connection of its own.
            self._reconnect_after_fork()
        if self._broken or self._socket is None:
            raise ConnectionError("the parent's log listener is unreachable")

    def _break(self) -> None:
        self._broken = True
        self._ready_ring = None

    def _wake(self) -> None:
        # Any byte will do: the listener sleeps on the connection and then reads the ring.
        assert self._socket is not None
        self._socket.send(b"w")

    def _open_ring(self) -> _ring.RingWriter | None:
        if not _ring.enabled():
            return None
        try:
            return _ring.RingWriter(self._wake, self._check_parent)
        except OSError:
            # No memfd here (a sandbox, an old kernel, a descriptor limit): the connection
            # carries the frames instead, at the cost of a system call per record.
            return None

    def _check_parent(self) -> None:
        # Peek, never read: the bytes waiting may be a barrier's answer for another thread.
        assert self._socket is not None
        try:
            if not self._socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT):
                raise ConnectionError("the parent's log listener closed the connection")
        except (BlockingIOError, InterruptedError):
            pass

    def begin_task(self, task_id: int) -> None:
        self.task_id = task_id
        self.records_in_task = 0

    def end_task(self) -> None:
        """Wait until the parent has handled every record this task logged."""
        task_id, self.task_id = self.task_id, None
        if not self.records_in_task or task_id is None or self._broken or self._socket is None:
            return
        self.records_in_task = 0
        try:
            with self._lock:
                barrier = _transport.encode_barrier(task_id)
                if self._ring is not None:
                    # Behind the task's records in the ring, and a wake-up every time: a
                    # barrier waits for the listener, so it must not wait for a missed one.
                    self._ring.write_waiting(barrier, always_wake=True)
                else:
                    self._socket.sendall(barrier)
            # Only the task's thread reads, so no lock: other threads may log meanwhile.
            _receive_exactly(self._socket, len(_transport.BARRIER_ACK))
        except (OSError, EOFError):
            # The parent is gone or its listener stopped; the result can still be sent.
            self._break()

    def after_fork_in_child(self) -> None:
        # Another thread may have held the lock at the fork; in the child it never will
        # be released. A fork hook rather than an os.getpid() check per record: that check
        # is a system call on every log call.
        self._lock = threading.Lock()
        self._forked = True
        self._ready_ring = None

    def _reconnect_after_fork(self) -> None:
        if self._socket is not None:
            # Closing our copy does not affect the worker that owns the connection.
            self._socket.close()
            self._socket = None
        if self._ring is not None:
            self._ring.detach()  # the worker that owns it keeps writing there
            self._ring = None
        self.task_id = None
        self.records_in_task = 0
        self.connect()


class WorkerHandler(logging.handlers.QueueHandler):
    """The only handler on a worker's root logger.

    It is a real ``QueueHandler`` (code that checks for one finds it); its "queue" is the
    worker's private connection and ``prepare`` turns a record into a wire frame.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)  # type: ignore[arg-type]  # a queue in all but type
        self._channel = channel
        self._told_stderr = False

    def prepare(self, record: logging.LogRecord) -> Any:
        return _transport.encode_record(record, self._channel.task_id)

    def handle(self, record: logging.LogRecord) -> Any:
        # Handler.handle also takes the handler's lock around emit(). The one thing that
        # must not interleave, the write, has the channel's lock already, and this runs on
        # every log call, so the handler lock is skipped; and QueueHandler.emit's
        # prepare() and enqueue() are done here directly, a call each cheaper.
        if self.filters:
            verdict: Any = self.filter(record)
            if not verdict:
                return verdict
            if isinstance(verdict, logging.LogRecord):  # 3.12+: a filter may swap the record
                record = verdict
        channel = self._channel
        try:
            channel.put_nowait(_transport.encode_record(record, channel.task_id))
        except Exception:
            self.handleError(record)
        return True

    def handleError(self, record: logging.LogRecord) -> None:
        # The only failure left after prepare() is an unreachable parent. The record must
        # not vanish, so it goes to this worker's stderr, whole, after a one-time notice.
        stream = sys.stderr
        if stream is None:
            return
        try:
            if not self._told_stderr:
                self._told_stderr = True
                stream.write(
                    f"logexec: worker {os.getpid()} cannot reach the parent process (it exited or "
                    "its listener stopped); this worker's records now go to its stderr\n"
                )
            stream.write(f"{_STDERR_FORMATTER.format(record)}\n")
            stream.flush()
        except Exception:
            super().handleError(record)


_STDERR_FORMATTER = logging.Formatter(logging.BASIC_FORMAT)

# The channel of this worker process, set by initialize().
_channel: Channel | None = None


def initialize(
    config: WorkerConfig,
    user_initializer: Callable[..., object] | None,
    user_initargs: tuple[Any, ...],
) -> None:
    """Worker initializer: connect, reset logging, then run the user's initializer."""
    global _channel
    channel = Channel(config)
    channel.connect()
    _reset_logging(config.levels)
    logging.getLogger().addHandler(WorkerHandler(channel))
    _channel = channel
    if user_initializer is not None:
        user_initializer(*user_initargs)


def run_task(
    task_id: int,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run one task; return only after the parent has handled the task's records."""
    channel = _channel
    if channel is None:
        raise RuntimeError(
            "logexec's task wrapper ran in a process that logexec's initializer did not set "
            "up; submit tasks through LoggingProcessPoolExecutor"
        )
    channel.begin_task(task_id)
    try:
        if captured is not None:
            return _context.call_with_values(propagated, captured, fn, *args, **kwargs)
        return fn(*args, **kwargs)
    finally:
        channel.end_task()


def _after_fork_in_child() -> None:
    if _channel is not None:
        _channel.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reset_logging(levels: tuple[dict[str, int], int] | None) -> None:
    # Under fork every logger arrives with the parent's handlers and filters; writing
    # through them would put a second writer on the parent's files, and filtering here
    # would apply them twice. The parent applies its own configuration on dispatch.
    for logger in _compat.existing_loggers():
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        for log_filter in list(logger.filters):
            logger.removeFilter(log_filter)
        logger.propagate = True
    if levels is None:
        return
    logger_levels, disabled = levels
    for name, level in logger_levels.items():
        logging.getLogger(name or None).setLevel(level)
    logging.disable(disabled)


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError("the parent's log listener closed the connection")
        data += chunk
    return data
