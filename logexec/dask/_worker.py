"""The Dask worker side: the task wrapper, the per-run batch and the lease on logging.

A Dask worker is shared: other executors, other clients and Dask itself run tasks and log
in the same process, on several threads at once. So nothing here is installed for longer
than a task of ours runs, and nothing here reads or writes another task's records:

* ``run_task`` runs the user's function in a fresh ``contextvars.Context`` holding a
  ``_Run`` for this attempt of this task. The run is the only place the task's records go.
* ``_TaskHandler`` is one handler on the worker's root logger. It hands a record to the
  run of the context it was logged in, and ignores records logged anywhere else (another
  executor's task, another client's task, Dask's own threads).
* ``_LoggingLease`` adds that handler and lowers the levels the driver asked for while at
  least one of our tasks runs on this worker, and puts everything back when the last one
  ends. Between tasks, and after ``shutdown``, the worker's logging is exactly as we found it.

Records travel *while the task runs*, as events on the executor's own Dask event topic
(``Worker.log_event``; the driver subscribes with ``Client.subscribe_topic``). A run keeps
at most one small batch: a record that comes after a quiet spell (nothing sent for
``FLUSH_INTERVAL``) is sent at once; otherwise records wait until the batch holds
``MAX_BATCH_RECORDS`` records or ``MAX_BATCH_BYTES`` bytes, or until ``FLUSH_INTERVAL`` after
the last send, whichever comes first. So a sparse log costs one event per record with no
added latency, and a busy one at most 1/``FLUSH_INTERVAL`` events a second beyond full batches.

Every event carries the run's id and the sequence number of its first record;
the run's last event also carries the run's total, and so does a successful result. The
driver completes the future only once it has handled that many records of the run:
"result means handled" is a count checked at the end, not a hope about timing.

One event looks like this (a list, because events must be msgpack-serializable)::

    [task id, run id, first sequence number, total or -1, pickled list of pickled records]

Each record is pickled alone, with ``logexec._records``' policy (an unpicklable ``extra`` value
becomes its ``repr()``), so one bad value costs only its own repr and never fails the task.
"""

from __future__ import annotations

import contextvars
import logging
import os
import pickle
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from .. import _compat, _context, _records

# The levels the driver had at submit: its explicit logger levels, and logging.disable's.
Levels = tuple[dict[str, int], int]

# A batch is sent when it holds this many records or this many bytes (pickled), whichever
# comes first. Measured on a loopback cluster (docs/dask.md): events of one record carry
# ~16k records/s through the scheduler, events of 50 ~110k, of 250 ~150k, and beyond that
# little changes; the driver's own handling (~75k/s) is then the bound. The byte cap also
# bounds what the scheduler keeps: it retains the last 1000 events of every topic (its
# ``distributed.admin.low-level-log-length``) until the executor shuts down.
MAX_BATCH_RECORDS = 256
MAX_BATCH_BYTES = 64 * 1024
# The longest a record waits in a batch that does not fill up, and the quiet spell after
# which a record is sent at once. Dask's own batched streams add a few milliseconds per hop
# (worker -> scheduler -> client); at 50 ms a steady trickle of records costs at most 20
# events a second per running task, and waits 25 ms on average.
FLUSH_INTERVAL = 0.05

# Events mark the end of a run with its total; -1 means "more may follow".
NOT_LAST = -1

# The run a log call belongs to. Set only inside run_task's own context, so it is unset in
# every thread that is not running one of our tasks.
_RUN: contextvars.ContextVar[_Run] = contextvars.ContextVar("logexec_dask_run")

_STDERR_FORMATTER = logging.Formatter(logging.BASIC_FORMAT)


class Sender(Protocol):
    """Where a run's events go: the worker's scheduler stream, or a test's list."""

    def send(self, event: list[Any]) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...


class _WorkerSender:
    """Sends events on the executor's topic through the worker's stream to the scheduler."""

    __slots__ = ("_log_event", "_loop", "_topic")

    def __init__(self, worker: Any, topic: str) -> None:
        self._loop = worker.loop
        self._log_event = worker.log_event
        self._topic = topic

    def send(self, event: list[Any]) -> None:
        # Always through the event loop's callback queue, even from the loop thread itself:
        # do not change this to calling log_event directly, because from the loop thread it
        # sends at once, ahead of batches another thread queued a moment earlier. The queue
        # keeps the worker's order (the driver re-orders by sequence number all the same).
        self._loop.add_callback(self._log_event, self._topic, event)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        # The loop's own timer, armed from the loop thread: no thread of ours on the worker.
        self._loop.add_callback(self._loop.call_later, delay, callback)


class _Run:
    """One attempt of one task: its pending batch and how many records it has sent."""

    __slots__ = (
        "_batch",
        "_batch_bytes",
        "_disabled",
        "_effective",
        "_last_sent",
        "_levels",
        "_sender",
        "_sent",
        "_taken",
        "_timer_armed",
        "closed",
        "lock",
        "run_id",
        "task_id",
    )

    def __init__(self, task_id: int, levels: Levels, sender: Sender) -> None:
        self.task_id = task_id
        # Tells this attempt from the others of the same task (Dask's retries, or a rerun
        # after a worker was lost); the driver numbers attempts in the order they appear.
        self.run_id = os.urandom(8).hex()
        self._levels, self._disabled = levels
        # The driver's effective level per logger name, computed once per name.
        self._effective: dict[str, int] = {}
        self._sender = sender
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._sent = 0
        # When the last event left (monotonic); a record after a quiet spell goes at once.
        self._last_sent = -FLUSH_INTERVAL
        self._timer_armed = False
        # Guards the batch against the task's threads and the flush timer. Re-entrant: a
        # filter or formatter on the worker that logs while we hold it must not deadlock.
        self.lock = threading.RLock()
        self.closed = False
        # The records already collected: a record may pass several filtered handlers.
        self._taken: weakref.WeakSet[logging.LogRecord] = weakref.WeakSet()

    def take(self, record: logging.LogRecord) -> bool:
        """True the first time this record is offered to the run, False after."""
        with self.lock:
            if record in self._taken:
                return False
            self._taken.add(record)
            return True

    def wants(self, record: logging.LogRecord) -> bool:
        """Would the driver's own logger have let this record through?

        The worker's loggers are lowered to the lowest level any running task asked for,
        so a record may get here that this task's driver would have dropped at source.
        """
        if record.levelno <= self._disabled:
            return False
        level = self._effective.get(record.name)
        if level is None:
            level = self._effective[record.name] = self._effective_level(record.name)
        return record.levelno >= level

    def _effective_level(self, name: str) -> int:
        # The same walk as Logger.getEffectiveLevel, over the driver's explicit levels.
        if name == logging.root.name:
            name = ""
        levels = self._levels
        while name:
            level = levels.get(name)
            if level:
                return level
            name = name.rpartition(".")[0]
        return levels.get("", logging.WARNING)

    def add(self, payload: bytes) -> bool:
        """Queue one pickled record; False if the run has already ended."""
        with self.lock:
            if self.closed:
                return False
            self._batch.append(payload)
            self._batch_bytes += len(payload)
            if self._timer_armed:
                # The timer will send this batch; only a full one goes sooner.
                if len(self._batch) >= MAX_BATCH_RECORDS or self._batch_bytes >= MAX_BATCH_BYTES:
                    self._send_batch(NOT_LAST)
                return True
            wait = self._last_sent + FLUSH_INTERVAL - time.monotonic()
            if wait <= 0 or len(self._batch) >= MAX_BATCH_RECORDS or self._batch_bytes >= MAX_BATCH_BYTES:
                self._send_batch(NOT_LAST)
            else:
                self._timer_armed = True
                self._sender.call_later(wait, self.flush_due)
            return True

    def flush_due(self) -> None:
        """The flush timer: send what waits, however little. Runs on the worker's loop."""
        try:
            with self.lock:
                self._timer_armed = False
                if self._batch and not self.closed:
                    self._send_batch(NOT_LAST)
        except Exception:
            pass  # the worker's loop is not ours to break; finish() sends whatever is left

    def finish(self, always: bool) -> int:
        """End the run: send the rest with the run's total, and return the total.

        With nothing left in the batch and ``always`` false, nothing is sent: a successful
        result carries the total itself, so a task that logged nothing pays nothing.
        """
        with self.lock:
            self.closed = True
            total = self._sent + len(self._batch)
            if self._batch or always:
                self._send_batch(total)
            return total

    def _send_batch(self, total: int) -> None:
        # Under the lock: the sequence numbers and the sending order agree.
        batch = self._batch
        first = self._sent
        self._sent += len(batch)
        self._batch = []
        self._batch_bytes = 0
        self._last_sent = time.monotonic()
        # One bytes object for the whole batch: msgpack carries it as it is, and the
        # driver unpickles a list of bytes (nothing else) before it rebuilds each record.
        records = pickle.dumps(batch, _records.PICKLE_PROTOCOL) if batch else b""
        try:
            self._sender.send([self.task_id, self.run_id, first, total, records])
        except Exception as error:
            # The worker is closing (its loop is gone). Never fail the task over it; the
            # driver's count will show these records missing.
            _write_problem(
                f"could not send {len(batch)} record(s) of a logexec task to the scheduler "
                f"({type(error).__name__}: {error})"
            )


class _TaskHandler(logging.Handler):
    """The handler on a worker's root logger while any of our tasks runs there."""

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: each run has its own.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        run = _RUN.get(None)
        if run is None:
            return  # not logged inside one of our tasks: not ours to take
        if not run.take(record):
            return  # already collected on another handler's way
        try:
            if not run.wants(record):
                return
            # Merge the message and render the exception now, while args and exc_info
            # still hold the values of the moment of the call.
            payload = _records.encode_values(_records.record_values(record, run.task_id))
            if run.add(payload):
                return
            # A thread that inherited the task's context logged after the task returned.
            # Its run has ended; keep the record rather than drop it.
            _write_to_stderr(record, "logged after its logexec task had returned")
        except Exception:
            # Never raise into the task (record_values itself does not, but be sure).
            _write_to_stderr(record, "could not be collected")


class _TaskRecordsOnlyToUs(logging.Filter):
    """On the worker's other handlers while a task of ours runs: drops that task's records.

    A worker imports the user's main module, so a module-level ``basicConfig`` or
    ``dictConfig`` gives it handlers of its own; a task's record reaching them as well as
    the driver would be written twice. Records logged outside our tasks pass untouched.
    """

    def __init__(self, collector: _TaskHandler) -> None:
        super().__init__()
        self._collector = collector

    def filter(self, record: logging.LogRecord) -> bool:
        if _RUN.get(None) is None:
            return True
        # A logger that does not propagate (dictConfig's "propagate": False) never reaches
        # our handler on the root: hand the record over here instead (once per record).
        self._collector.emit(record)
        return False


def _is_dask_logger(name: str) -> bool:
    # Dask's own loggers and their handlers are Dask's, not the user's: never filtered.
    return name == "distributed" or name.startswith("distributed.")


class _LoggingLease:
    """Installs the handler and the driver's levels while at least one task holds a lease.

    Levels are only ever lowered, to the lowest level asked for by a running task, and each
    task's collector filters by its own driver's levels, so two drivers with different
    levels do not see each other's choice. When the last lease ends, each level we changed
    goes back to what it was, unless someone else changed it in the meantime.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handler: _TaskHandler | None = None
        self._filter: _TaskRecordsOnlyToUs | None = None
        # The handlers we put that filter on, to take it off again.
        self._filtered: list[logging.Handler] = []
        self._leases: dict[int, dict[str, int]] = {}
        self._next_lease = 0
        # Logger name -> (level before we touched it, level we set).
        self._changed: dict[str, tuple[int, int]] = {}

    def acquire(self, levels: dict[str, int]) -> int:
        with self._lock:
            lease = self._next_lease
            self._next_lease += 1
            self._leases[lease] = levels
            if self._handler is None:
                self._handler = _TaskHandler()
                # First, in a new list: never skipped when another handler is removed
                # meanwhile (see _compat.add_handler_first).
                _compat.add_handler_first(logging.getLogger(), self._handler)
                self._filter = _TaskRecordsOnlyToUs(self._handler)
                self._filter_other_handlers(self._filter)
            self._apply_levels()
            return lease

    def release(self, lease: int) -> None:
        with self._lock:
            self._leases.pop(lease, None)
            self._apply_levels()
            task_filter = self._filter
            if not self._leases and self._handler is not None and task_filter is not None:
                _compat.remove_handler(logging.getLogger(), self._handler)
                self._handler = None
                for handler in self._filtered:
                    handler.removeFilter(task_filter)
                self._filtered = []
                self._filter = None

    def _filter_other_handlers(self, task_filter: _TaskRecordsOnlyToUs) -> None:
        # Every handler on the worker's loggers but ours and Dask's: on the root, and on
        # named loggers (a dictConfig may put handlers there). A handler shared with a
        # Dask logger stays unfiltered, since Dask's records must keep reaching it.
        dask_handlers: set[int] = set()
        others: dict[int, logging.Handler] = {}
        for logger in _compat.existing_loggers():
            for handler in list(logger.handlers):
                if handler is self._handler:
                    continue
                if _is_dask_logger(logger.name):
                    dask_handlers.add(id(handler))
                else:
                    others[id(handler)] = handler
        for key, handler in others.items():
            if key not in dask_handlers:
                handler.addFilter(task_filter)
                self._filtered.append(handler)

    def _apply_levels(self) -> None:
        wanted: dict[str, int] = {}
        for levels in self._leases.values():
            for name, level in levels.items():
                if name not in wanted or level < wanted[name]:
                    wanted[name] = level
        # Parents first, so that a child's comparison sees its parent's new level.
        for name in sorted(set(wanted) | set(self._changed), key=_depth):
            logger = logging.getLogger(name or None)
            if name in self._changed:
                original, ours = self._changed[name]
                if logger.level != ours:
                    # Someone else set this level while we held it: theirs wins.
                    del self._changed[name]
                    continue
            else:
                original = logger.level
            target = original
            if name in wanted:
                # The level this logger would have with its original setting.
                current = original
                if current == logging.NOTSET and logger.parent is not None:
                    current = logger.parent.getEffectiveLevel()
                if wanted[name] < current:
                    target = wanted[name]
            if target != logger.level:
                logger.setLevel(target)
            if target == original:
                self._changed.pop(name, None)
            else:
                self._changed[name] = (original, target)


_LEASE = _LoggingLease()

# What a successful task returns to Dask: its run id, how many records it sent, its value.
Outcome = tuple[str, int, Any]


def run_task(
    topic: str,
    task_id: int,
    levels: Levels,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    /,
    *args: Any,
) -> Outcome:
    """Run one attempt of a task on a Dask worker, its records sent on ``topic`` as it goes.

    The user's exception propagates, so that Dask sees an erred task (its dashboard, its
    ``retries``); the run's last event, with its total, is queued before it does.
    """
    from distributed import get_worker

    return execute(
        _WorkerSender(get_worker(), topic), task_id, levels, propagated, captured, fn, args, kwargs
    )


def execute(
    sender: Sender,
    task_id: int,
    levels: Levels,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Outcome:
    """``run_task`` with the sender given (tests run it in-process)."""
    run = _Run(task_id, levels, sender)
    lease = _LEASE.acquire(levels[0])
    try:
        try:
            value = contextvars.copy_context().run(_call, run, propagated, captured, fn, args, kwargs)
        except BaseException:
            # Always a last event, even with no records: it tells the driver that this
            # attempt ran, and how many records to wait for. Dask's error report leaves
            # the worker after it on the same ordered stream.
            run.finish(always=True)
            raise
        total = run.finish(always=False)
    finally:
        _LEASE.release(lease)
    return run.run_id, total, value


def _call(
    run: _Run,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    _RUN.set(run)
    if captured is not None:
        return _context.call_with_values(propagated, captured, fn, *args, **kwargs)
    return fn(*args, **kwargs)


def _depth(name: str) -> tuple[int, str]:
    return (name.count(".") + bool(name), name)


def _write_problem(problem: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(f"logexec: on Dask worker pid {os.getpid()}: {problem}\n")
        stream.flush()
    except Exception:
        pass


def _write_to_stderr(record: logging.LogRecord, problem: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(
            f"logexec: a record on Dask worker pid {os.getpid()} {problem}; it follows\n"
            f"{_STDERR_FORMATTER.format(record)}\n"
        )
        stream.flush()
    except Exception:
        pass
