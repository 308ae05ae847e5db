"""Parent-side dispatch: hand a rebuilt worker record to the parent's logging.

Shared by every transport (the process pool's listener and the Dask adapter), so that a
record is handled the same way whichever way it travelled.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any


def dispatching_thread(target: Callable[[], object], name: str) -> threading.Thread:
    """A daemon thread for ``target``, run in a context of its own, empty.

    A record with no task context (logged by a worker thread that was not running a task)
    is dispatched in the dispatching thread's own context, which must be nobody's. From 3.14
    a new thread may start in a copy of its starter's context (``sys.flags.
    thread_inherit_context``, on by default in free-threaded builds), and these threads are
    started by whoever submits first: such records would meet that submitter's context.
    """
    return threading.Thread(target=contextvars.Context().run, args=(target,), name=name, daemon=True)


# The lists of the capture_records blocks open in a context, innermost last; None when
# none is (most contexts: the default, so that nothing is stored until a block opens).
Captures = tuple[list[logging.LogRecord], ...]
_CAPTURES: contextvars.ContextVar[Captures | None] = contextvars.ContextVar("logexec_captures", default=None)


@contextlib.contextmanager
def capture_records() -> Iterator[list[logging.LogRecord]]:
    """Collect the worker records of every task submitted from inside the block.

    Every record of every task submitted inside the ``with`` block, from this context
    (this thread, this asyncio task: other threads and other callers have contexts of
    their own and are not included), is appended to the yielded list as the parent
    handles it, in addition to its normal handling, in each task's order. When a task's
    ``result()`` returns (or raises its exception), its records are in the list. Records
    are appended whether or not the parent's levels and handlers keep them: the workers
    already apply the parent's levels, so records below them are not even made.

    Works with every logexec front (the executor, the joblib backend, Dask), since each
    hands records to the parent inside the submitter's ``contextvars`` context. Blocks
    nest: a record goes to the list of every block open at submit, inner and outer. A task
    submitted inside the block and still running after it keeps appending to the list.

    Yields:
        A new list of ``logging.LogRecord``, filled as the tasks' records are handled.

    Raises:
        Nothing of its own; an exception raised in the block propagates unchanged.

    Example::

        with logexec.capture_records() as records:
            executor.submit(job, 42).result(timeout=60)
        log_text = "\n".join(record.getMessage() for record in records)
    """
    records: list[logging.LogRecord] = []
    token = _CAPTURES.set((*(_CAPTURES.get() or ()), records))
    try:
        yield records
    finally:
        _CAPTURES.reset(token)


def captures_of(context: contextvars.Context) -> Captures | None:
    """The capture lists open in ``context`` (a submitter's copy), or None.

    Read once per task, at submit, so that dispatching a record pays nothing when no
    capture is open (the hook for a front: ``Dispatcher.register`` does this for it).
    """
    return context.get(_CAPTURES)


def append_captured(captures: Captures, record: logging.LogRecord) -> None:
    for records in captures:
        records.append(record)  # list.append is atomic: other threads read these lists


def check_handlers(handlers: Iterable[object] | None) -> tuple[logging.Handler, ...] | None:
    """Validate the ``handlers=`` option: None, or a non-empty iterable of ``logging.Handler``.

    An empty one is refused rather than given a meaning: records sent to no handler are
    silently dropped, which is never what ``handlers=[]`` (often a list that a config
    failed to fill) was meant to say. To drop worker records on purpose, pass
    ``[logging.NullHandler()]``; to use the parent's own configuration, pass ``None``.
    """
    if handlers is None:
        return None
    if isinstance(handlers, (str, bytes, logging.Handler)) or not isinstance(handlers, Iterable):
        raise TypeError(f"handlers must be None or a sequence of logging.Handler, got {handlers!r}")
    checked: list[logging.Handler] = []
    for index, handler in enumerate(handlers):
        if not isinstance(handler, logging.Handler):
            raise TypeError(f"handlers[{index}] must be a logging.Handler, got {handler!r}")
        checked.append(handler)
    if not checked:
        raise ValueError(
            f"handlers must be None or contain at least one logging.Handler, got {handlers!r}: "
            "with no handler every worker record would be dropped (pass None to use the "
            "parent's logging configuration, or [logging.NullHandler()] to drop them on purpose)"
        )
    return tuple(checked)


class Dispatcher:
    """Hands records to the parent's logger tree, or to an explicit list of handlers.

    By default a record goes to ``logging.getLogger(record.name).handle(record)``, exactly
    as if the call had been made in the parent, so per-logger handlers, ``propagate=False``,
    handler levels, filters, dictConfig and pytest's caplog all apply. With ``handlers`` it
    goes to exactly those handlers, each respecting its level, and never to root's.

    Each record runs inside the ``contextvars.Context`` of the ``submit`` call that made its
    task, so filters that read context variables see the submitter's values, and is
    appended to the lists of the ``capture_records`` blocks open in that context: the
    hook any front gets by registering its tasks here (``register``). A front that
    dispatches in a context of its own (the joblib backend) calls ``captures_of`` once per
    task and ``append_captured`` per record. A record with no task (``task_id`` None:
    logged outside any task's context) runs in the calling thread's context, which
    ``dispatching_thread`` keeps empty, and is captured by no block.
    """

    def __init__(self, handlers: tuple[logging.Handler, ...] | None = None) -> None:
        self._handlers = handlers
        # Loggers are never removed from logging's manager, so caching them is safe and
        # skips getLogger's module lock on every record.
        self._loggers: dict[str, tuple[logging.Logger, bool]] = {}
        # By task id: the submitter's context and the capture lists open in it (or None).
        self._contexts: dict[int, tuple[contextvars.Context, Captures | None]] = {}
        # Guards _contexts: submit and done-callbacks run on other threads than dispatch.
        self._contexts_lock = threading.Lock()
        # Reports failures of handlers that raise instead of calling handleError.
        self._error_reporter = logging.Handler()

    def register(self, task_id: int, context: contextvars.Context) -> None:
        # The captures are looked up here, once per task, so dispatch pays one test of None.
        entry = (context, captures_of(context))
        with self._contexts_lock:
            self._contexts[task_id] = entry

    def forget(self, task_id: int) -> None:
        with self._contexts_lock:
            self._contexts.pop(task_id, None)

    def forget_all(self) -> None:
        with self._contexts_lock:
            self._contexts.clear()

    def dispatch(self, task_id: int | None, record: logging.LogRecord) -> None:
        """Handle one record in its submitter's context; never raises.

        Whatever the parent's filters and handlers raise is reported through
        ``handleError``, as logging reports it in-process, and the next record is handled
        normally.
        """
        entry = self._contexts.get(task_id) if task_id is not None else None
        try:
            if entry is None:
                self._deliver(record)
            else:
                context, captures = entry
                if captures is not None:
                    append_captured(captures, record)
                context.run(self._deliver, record)
        except Exception:
            # A logger filter, or a custom Logger class, that raised: in-process the log
            # call would have raised; here nobody waits for it, so report it as logging
            # reports a failing handler.
            self._error_reporter.handleError(record)

    def _deliver(self, record: logging.LogRecord) -> None:
        entry = self._loggers.get(record.name)
        if entry is None:
            entry = self._logger_for(record.name)
        logger, standard = entry
        # The parent's levels and disabled flags (isEnabledFor reads both) now decide, as
        # they would for a call made here: the worker filtered with the levels it last
        # received, which may be older, and it ignores the disabled flags it inherited.
        if not logger.isEnabledFor(record.levelno):
            return
        handlers = self._handlers
        if handlers is not None:
            _call_handlers(handlers, record)
        elif standard:
            handle_safely(logger, record)
        else:
            logger.handle(record)  # a custom Logger class: its own rules apply

    def _logger_for(self, name: str) -> tuple[logging.Logger, bool]:
        # A worker's root logger is named "root"; map it to the parent's root explicitly.
        logger = logging.getLogger() if name == logging.root.name else logging.getLogger(name)
        kind = type(logger)
        standard = kind.handle is _STANDARD_HANDLE and kind.callHandlers is _STANDARD_CALL_HANDLERS
        entry = (logger, standard)
        self._loggers[name] = entry
        return entry


# Reports, as logging itself does (a traceback on stderr), what a handler could not.
_ERROR_REPORTER = logging.Handler()


class ForgetWhenDone:
    """Done-callback that drops a task's context once its records are all handled."""

    __slots__ = ("_dispatcher", "_task_id")

    def __init__(self, dispatcher: Dispatcher, task_id: int) -> None:
        self._dispatcher = dispatcher
        self._task_id = task_id

    def __call__(self, future: Future[Any]) -> None:
        # A broken pool (loky's TerminatedWorkerError is one too) fails the future while
        # the dead worker's last records may still be unread; they keep their context until
        # the listener stops.
        if not future.cancelled() and isinstance(future.exception(), BrokenProcessPool):
            return
        self._dispatcher.forget(self._task_id)


_STANDARD_HANDLE = logging.Logger.handle
_STANDARD_CALL_HANDLERS = logging.Logger.callHandlers
_STANDARD_FILTER = logging.Logger.filter


def handle_safely(logger: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.handle`` as documented, except that one failing handler cannot stop the rest.

    Do not change this back to ``logger.handle(record)``: there, a handler whose ``emit``
    raises (instead of calling ``handleError``) aborts the walk, and every handler after it,
    on this logger and its parents, silently misses the record. A logger filter that raises
    propagates, as it does from ``Logger.handle``.
    """
    if logger.disabled:
        return
    # Logger.filter with no filters passes every record unchanged; this runs once per record
    # on the listener thread, so the call is skipped unless it could say no (a filter, or a
    # class with a filter() of its own).
    if logger.filters or type(logger).filter is not _STANDARD_FILTER:
        verdict: object = logger.filter(record)
        if not verdict:
            return
        if isinstance(verdict, logging.LogRecord):  # 3.12+: a filter may return a new record
            record = verdict
    found = 0
    current: logging.Logger | None = logger
    while current is not None:
        handlers = current.handlers
        if handlers:
            found += len(handlers)
            # _call_handlers inlined: one call less per logger with handlers, per record.
            for handler in handlers:
                if record.levelno >= handler.level:
                    try:
                        handler.handle(record)
                    except Exception:
                        _report_handler_error(handler, record)
        current = current.parent if current.propagate else None
    if not found and logging.lastResort is not None and record.levelno >= logging.lastResort.level:
        _call_handlers((logging.lastResort,), record)


def _call_handlers(handlers: Iterable[logging.Handler], record: logging.LogRecord) -> None:
    for handler in handlers:
        if record.levelno >= handler.level:
            try:
                handler.handle(record)
            except Exception:
                _report_handler_error(handler, record)


def _report_handler_error(handler: logging.Handler, record: logging.LogRecord) -> None:
    # Reported the way logging reports its own handlers' errors.
    try:
        handler.handleError(record)
    except Exception:
        # Its handleError fails too: the other handlers must still get the record, so
        # report this one as logging would, to stderr.
        _ERROR_REPORTER.handleError(record)
