"""The listener's read loop: connections and rings in, records out to the dispatcher.

Rings are read by polling while records flow and by sleeping on the connections otherwise:
while runs of records come in, the listener looks again every ``POLL_SECONDS`` (for up to
``STAY_AWAKE_SECONDS`` after the last one) without being woken, and tells the writers so
(each ring's "awake until"), so a worker that logs steadily makes no system call at all.
When nothing comes, or only a record or two per task (each task's barrier wakes the
listener anyway, so polls would find nothing), it marks each ring asleep and the next frame
wakes it.

A frame is a record, rebuilt (``logexec._records``) and handed to the ``Dispatcher`` in the
order its worker wrote it, or a barrier, answered once everything before it on that
connection has been handled. A connection's end is its worker's exit, which the front hears
of through ``on_worker_exit``.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import time

from .. import _records
from . import _framing, _ring
from ._accept import Accepting
from ._guard import (
    _ACCEPT,
    _LOGGER,
    READ_SIZE,
    RECENT_TAIL_BYTES,
    RETRY_SECONDS,
    WorkerExit,
    _Connection,
    _describe,
)

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


class Reading(Accepting):
    """Reads connections and rings, handles frames, answers barriers: the listener's loop."""

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
        if self._worker_exits:
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
        if self._worker_exits:
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
        self._update_hold(selector)
        if not deadlines:
            return timeout
        soonest = max(0.0, min(deadlines))
        return soonest if timeout is None else min(timeout, soonest)

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

    def _handle_frames(
        self, selector: selectors.BaseSelector, connection: _Connection, end: int, position: int
    ) -> None:
        """Handle the whole frames in ``view[position:end]``; keep a cut-off one for later."""
        view = connection.view
        dispatch = self._dispatcher.dispatch
        decode = _records.decode_record
        unpack = _framing.HEADER.unpack_from
        header_size = _framing.HEADER_SIZE
        # Kept for a crash's notes, formatted only if it dies: the records of this buffer's
        # last RECENT_TAIL_BYTES (those before it would be pushed out of the ten kept anyway;
        # keeping only these saves the append, and keeping every record alive a little
        # longer). Cleared first when some are skipped, so that what is kept has no gap.
        remember = connection.recent.append
        tail = end - RECENT_TAIL_BYTES
        if position < tail:
            connection.recent.clear()
        task_id: int | None = None
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
                if stop > tail:
                    remember(record)
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
        if task_id is not None:
            connection.last_task = task_id
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

    def _answer_barrier(self, selector: selectors.BaseSelector, connection: _Connection) -> bool:
        """Answer a barrier; False if the connection had to be given up instead."""
        connection.barriers += 1
        answer = _framing.barrier_ack(connection.barriers)
        for attempt in range(2):
            try:
                connection.socket.sendall(answer)
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
            self._worker_exits.append(
                WorkerExit(connection.pid, connection.filled, connection.recent, connection.last_task)
            )
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

    def _notify_worker_exit(self) -> None:
        exits = self._worker_exits
        if self._on_worker_exit is None:
            exits.clear()
            return
        try:
            if self._on_worker_exit(tuple(exits)):
                exits.clear()
        except BaseException as error:
            exits.clear()
            self._report_error("logexec: the worker-exit callback failed", error)


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
