"""The Dask worker side: the task wrapper, the per-task collector and the lease on logging.

A Dask worker is shared: other executors, other clients and Dask itself run tasks and log
in the same process, on several threads at once. So nothing here is installed for longer
than a task of ours runs, and nothing here reads or writes another task's records:

* ``run_task`` runs the user's function in a fresh ``contextvars.Context`` holding a
  ``_Collector`` for this task. The collector is the only place the task's records go.
* ``_TaskHandler`` is one handler on the worker's root logger. It hands a record to the
  collector of the context it was logged in, and ignores records logged anywhere else
  (another executor's task, another client's task, Dask's own threads).
* ``_LoggingLease`` adds that handler and lowers the levels the driver asked for while at
  least one of our tasks runs on this worker, and puts everything back when the last one
  ends. Between tasks, and after ``shutdown``, the worker's logging is exactly as we found it.

The task's records travel back *with its outcome*, as one bytes object (a pickled list of
individually pickled records), so the driver can handle them before it completes the
task's future: "result means handled".
"""

from __future__ import annotations

import contextvars
import logging
import os
import pickle
import sys
import threading
from typing import Any, Callable, Optional

from . import _context, _transport

# The levels the driver had at submit: its explicit logger levels, and logging.disable's.
Levels = tuple[dict[str, int], int]

# What a task sends back: (value or None, error or None, records). ``error`` is Dask's own
# serialized form of the exception, (exception bytes, traceback bytes or None), which the
# driver turns back into the exception with its traceback. ``records`` is one bytes object.
Outcome = tuple[Any, Optional[tuple[bytes, Optional[bytes]]], bytes]

# The task whose records a log call belongs to. Set only inside run_task's own context, so
# it is unset in every thread that is not running one of our tasks.
_COLLECTOR: contextvars.ContextVar[_Collector] = contextvars.ContextVar("logexec_dask_collector")

_STDERR_FORMATTER = logging.Formatter(logging.BASIC_FORMAT)


class _Collector:
    """The records of one running task, as wire values, in the order they were logged."""

    __slots__ = ("_disabled", "_effective", "_levels", "closed", "lock", "records", "task_id")

    def __init__(self, task_id: int, levels: Levels) -> None:
        self.task_id = task_id
        self._levels, self._disabled = levels
        # The driver's effective level per logger name, computed once per name.
        self._effective: dict[str, int] = {}
        self.records: list[tuple[Any, ...]] = []
        # Guards records and closed against a thread of the task that logs while the task
        # returns: its record is either in the outcome or reported, never silently lost.
        self.lock = threading.Lock()
        self.closed = False

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


class _TaskHandler(logging.Handler):
    """The handler on a worker's root logger while any of our tasks runs there."""

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the collector is per task and list.append is atomic.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        collector = _COLLECTOR.get(None)
        if collector is None:
            return  # not logged inside one of our tasks: not ours to take
        try:
            if not collector.wants(record):
                return
            # Merge the message and render the exception now, while args and exc_info
            # still hold the values of the moment of the call.
            values = _transport.record_values(record, collector.task_id)
            with collector.lock:
                if not collector.closed:
                    collector.records.append(values)
                    return
            # A thread that inherited the task's context logged after the task returned.
            # Its outcome is gone; keep the record rather than drop it.
            _write_to_stderr(record, "logged after its logexec task had returned")
        except Exception:
            # Never raise into the task (record_values itself does not, but be sure).
            _write_to_stderr(record, "could not be collected")


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
                logging.getLogger().addHandler(self._handler)
            self._apply_levels()
            return lease

    def release(self, lease: int) -> None:
        with self._lock:
            self._leases.pop(lease, None)
            self._apply_levels()
            if not self._leases and self._handler is not None:
                logging.getLogger().removeHandler(self._handler)
                self._handler = None

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


def run_task(
    task_id: int,
    levels: Levels,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    /,
    *args: Any,
) -> Outcome:
    """Run one task on a Dask worker; return its outcome together with its records.

    Never raises because of the user's function: its exception is part of the outcome,
    so the records logged before it still reach the driver.
    """
    collector = _Collector(task_id, levels)
    lease = _LEASE.acquire(levels[0])
    try:
        return contextvars.copy_context().run(_collect, collector, propagated, captured, fn, args, kwargs)
    finally:
        collector.closed = True
        _LEASE.release(lease)


def _collect(
    collector: _Collector,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Outcome:
    _COLLECTOR.set(collector)
    value: Any = None
    error: tuple[bytes, bytes | None] | None = None
    try:
        if captured is not None:
            value = _context.call_with_values(propagated, captured, fn, *args, **kwargs)
        else:
            value = fn(*args, **kwargs)
    except BaseException as exception:  # as ProcessPoolExecutor's workers do
        error = _serialize_error(exception)
    with collector.lock:
        collector.closed = True
        collected, collector.records = collector.records, []
    # Each record is pickled alone, so that one bad value costs only its own repr (and, in
    # the driver, only its own record). The list then travels as one bytes object: do not
    # change this to return the list itself, because Dask serializes each element of a
    # returned list as a frame of its own, which made the transfer ten times slower.
    records = pickle.dumps(
        [_transport.encode_values(values) for values in collected], _transport.PICKLE_PROTOCOL
    )
    return value, error, records


def records_of(outcome: Outcome) -> bytes:
    """Runs where an outcome is held, when the outcome as a whole could not be sent."""
    return outcome[2]


def _serialize_error(exception: BaseException) -> tuple[bytes, bytes | None]:
    # Dask's own serialization of a task's exception (tblib for the traceback, a repr for
    # what will not pickle, truncation of huge messages), so the driver sees the same
    # exception that Client.submit would have raised.
    try:
        from distributed.core import error_message

        message: Any = error_message(exception)
        exception_bytes = getattr(message["exception"], "data", message["exception"])
        traceback = message.get("traceback")
        traceback_bytes = getattr(traceback, "data", traceback) if traceback is not None else None
    except Exception as problem:  # never lose the records over the error's own transport
        # Only type names here: the exception's own __repr__ may be what failed.
        substitute = RuntimeError(
            f"the task raised {type(exception).__qualname__}, which could not be sent to the "
            f"driver ({type(problem).__qualname__} while serializing it)"
        )
        return pickle.dumps(substitute), None
    return bytes(exception_bytes), None if traceback_bytes is None else bytes(traceback_bytes)


def _depth(name: str) -> tuple[int, str]:
    return (name.count(".") + bool(name), name)


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
