"""``LoggingInterpreterPoolExecutor``: the main interpreter's side, the executor and its reader."""

from __future__ import annotations

import sys

if sys.version_info < (3, 14):  # mypy checks on 3.11
    raise ImportError("logexec._interp needs CPython 3.14 or newer")
assert sys.version_info >= (3, 14)  # what makes mypy skip the rest (the `if` does not)

import contextvars
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent import interpreters
from concurrent.futures import Future, InterpreterPoolExecutor
from typing import Any, ParamSpec, TypeVar

from .. import _context
from .._channel import LevelTracker, report
from .._dispatch import Dispatcher, ForgetWhenDone, check_handlers
from .._records import decode_record
from . import _worker

T = TypeVar("T")
P = ParamSpec("P")

# Room for this many records on the queue before a logging interpreter waits for the reader
# (a slow main interpreter holds the writers back rather than letting memory grow).
QUEUE_SIZE = 16384
# The reader's polling when nothing is pending: records can then only come from threads
# that outlived their task.
IDLE_DELAY = 0.05


class LoggingInterpreterPoolExecutor(InterpreterPoolExecutor):
    """An ``InterpreterPoolExecutor`` whose interpreters' records are handled by the main one.

    Use it exactly like ``concurrent.futures.InterpreterPoolExecutor`` (CPython 3.14+):
    the same positional parameters, ``submit``, ``map``, ``shutdown`` and the ``with``
    statement. Each interpreter has its own ``logging``, without the application's
    configuration; here every record a task logs is sent to the main interpreter and
    handled by its logging, as if the call had been made there:
    ``logging.getLogger(record.name).handle(record)``, so dictConfig set-ups, per-logger
    handlers, filters, formatters and pytest's ``caplog`` apply unchanged.

    Args:
        max_workers: As in the stdlib: the number of interpreters (threads), or ``None``
            for its default.
        thread_name_prefix: As in the stdlib.
        initializer: As in the stdlib: called in each interpreter when it starts, after
            logexec's set-up, so it can log.
        initargs: The arguments of ``initializer``, a tuple.
        handlers: ``None`` (dispatch by logger name, the default) or a non-empty sequence
            of ``logging.Handler`` that receive every record instead.
        propagate_contextvars: Module-level ``contextvars.ContextVar`` objects whose values
            at ``submit`` are set in the interpreter while the task runs (parent-side
            filters always see the submitter's whole context).

    Raises:
        TypeError: A parameter of the wrong type, or a ``propagate_contextvars`` variable
            that is not a module-level attribute of an imported module; the message
            names the parameter and the value.
        ValueError: An empty ``handlers`` (that would drop every record), or
            ``max_workers`` not positive (the stdlib's check).

    When an interpreter starts, logexec's initializer runs first, then yours (so yours can
    log): one handler on its root logger and the main interpreter's levels. The main
    interpreter's current levels decide: records are checked against them again when
    handled, and a change reaches the interpreters with the tasks submitted after it.

    What ``result()`` guarantees: when ``future.result()`` returns or raises the task's
    exception, every record the task logged (from any thread of its interpreter) has been
    handled, in the ``contextvars`` context of the ``submit`` call. Records logged by a
    thread that outlives its task are handled before its interpreter is closed.

    Limits:

    - The initializer, its arguments, the task and its arguments must pickle, as for the
      stdlib's executor; ``propagate_contextvars`` variables must live in a module the
      interpreters can import (not ``__main__``).
    - Exceptions in records arrive rendered, as ``exc_text``; an argument or ``extra``
      value that will not pickle arrives as its ``repr()``.
    - Parent handlers run on the reader thread ("logexec-interpreters"): ``submit`` there
      raises ``RuntimeError``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        handlers: Iterable[logging.Handler] | None = None,
        propagate_contextvars: Iterable[contextvars.ContextVar[Any]] = (),
    ) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)):
            raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable or None, got {initializer!r}")
        if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        self._logexec_dispatcher = Dispatcher(check_handlers(handlers))
        self._logexec_variables = _context.locate_contextvars(propagate_contextvars)
        self._logexec_addresses = tuple(self._logexec_variables)
        # The stdlib's own default, made explicit: one answer queue per interpreter.
        workers = max_workers if max_workers is not None else min(32, (os.process_cpu_count() or 1) + 4)
        self._logexec_reader = _Reader(self._logexec_dispatcher, max(workers, 1))
        # The base every level update is relative to, fixed before any interpreter starts.
        self._logexec_levels = LevelTracker()
        link = _worker.Link(
            self._logexec_reader.records,
            self._logexec_reader.answers,
            self._logexec_reader.stopped,
            self._logexec_levels.base,
        )
        super().__init__(
            max_workers, thread_name_prefix, _worker.initialize, (link, initializer, tuple(initargs))
        )
        self._logexec_lock = threading.Lock()
        self._logexec_task_ids = itertools.count()
        # Dropped without shutdown(): the reader stops once the pending work is done and
        # every interpreter has said goodbye.
        weakref.finalize(self, self._logexec_reader.stop_when_idle)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in an interpreter, as the stdlib's ``submit``.

        Args:
            fn: A callable that pickles (a module-level function, not one of ``__main__``
                defined in an interactive session).
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            A ``Future``: when its ``result()`` returns or raises, every record the task
            logged has been handled by the main interpreter's logging.

        Raises:
            RuntimeError: After ``shutdown``, or when called on the reader thread (from a
                parent handler or filter of this executor).
            TypeError: A ``propagate_contextvars`` value that does not pickle.
        """
        reader = self._logexec_reader
        if threading.current_thread() is reader.thread:
            raise RuntimeError(
                "submit() was called on the logexec reader thread of the same executor (from "
                "a parent handler or filter); the task could not finish while the handler "
                "waits, since this thread must read its records: hand the work to another "
                "thread instead"
            )
        with self._logexec_lock:
            captured = _context.capture_values(self._logexec_variables)
            reader.start()
            levels = self._logexec_levels.update()
            task_id = next(self._logexec_task_ids)
            context = contextvars.copy_context()
            keep_context = len(context) > 0
            if keep_context:
                self._logexec_dispatcher.register(task_id, context)
            reader.task_submitted()
            try:
                future: Future[T] = super().submit(
                    _worker.run_task, task_id, self._logexec_addresses, captured, levels, fn, *args, **kwargs
                )
            except BaseException:
                reader.task_done(None)
                if keep_context:
                    self._logexec_dispatcher.forget(task_id)
                raise
        future.add_done_callback(reader.task_done)
        if keep_context:
            future.add_done_callback(ForgetWhenDone(self._logexec_dispatcher, task_id))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool, as the stdlib's ``shutdown``, and then the reader.

        Args:
            wait: Return only once every interpreter is closed and every record has been
                handled (records of threads that outlived their task included).
            cancel_futures: Cancel the futures that have not started, as in the stdlib.
        """
        reader = self._logexec_reader
        if wait and threading.current_thread() is reader.thread:
            wait = False  # the interpreters' last barriers wait for this very thread
        super().shutdown(wait=wait, cancel_futures=cancel_futures)
        # Joined: every interpreter is closed, its last barrier answered; nothing more can
        # come, whatever the count of goodbyes says.
        reader.stop_when_idle(closed=wait)
        if wait:
            # Every interpreter is closed: each said goodbye after its last barrier.
            reader.join()


class _Reader:
    """The main interpreter's thread that reads the records queue, dispatches and answers.

    It holds no reference to the executor. It stops once told to (shutdown, the executor was
    dropped, or the main thread has ended) and nothing can still put a record: no task
    pending, every interpreter gone (each says goodbye when closed, after its last barrier).
    """

    def __init__(self, dispatcher: Dispatcher, workers: int) -> None:
        self._dispatcher = dispatcher
        self.records = interpreters.create_queue(QUEUE_SIZE)
        self.stopped = interpreters.create_queue()
        self.answers = interpreters.create_queue()
        # Each interpreter takes one answer queue when it starts; it comes back on goodbye.
        self._answer_queues: dict[int, interpreters.Queue] = {}
        for _ in range(workers):
            queue = interpreters.create_queue()
            self._answer_queues[queue.id] = queue
            self.answers.put_nowait(queue)
        self._lock = threading.Lock()
        self._pending = 0
        self._live = 0
        self._stopping = False
        self._closed = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            # Not a daemon: a daemon thread frozen by the interpreter's finalization inside a
            # queue call holds the queues' lock, and finalization then waits for it for ever
            # (measured: a script that never called shutdown() hung at exit). At exit the
            # pool's own exit hook closes every interpreter first (each waits for this thread
            # to answer its last barrier); then, the main thread gone and nothing pending,
            # this thread ends and the interpreter's join of it returns.
            # In an empty context of its own: a record of no task is dispatched in this
            # thread's context, which must be nobody's (3.14 threads may inherit their
            # starter's: see _dispatch.dispatching_thread). Not a daemon: see _run.
            thread = threading.Thread(
                target=contextvars.Context().run, args=(self._run,), name="logexec-interpreters", daemon=False
            )
            thread.start()
            self.thread = thread

    def task_submitted(self) -> None:
        with self._lock:
            self._pending += 1

    def task_done(self, _future: Future[Any] | None) -> None:
        with self._lock:
            self._pending -= 1

    def stop_when_idle(self, closed: bool = False) -> None:
        with self._lock:
            self._stopping = True
            self._closed = self._closed or closed
            if self.thread is None:
                self.stopped.put_nowait(1)

    def join(self) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def _idle_and_told(self) -> bool:
        with self._lock:
            told = self._stopping or not threading.main_thread().is_alive()
            return self._closed or (told and self._pending == 0 and self._live == 0)

    def _run(self) -> None:
        get = self.records.get_nowait
        empty = interpreters.QueueEmpty
        handle = self._handle
        delay = _worker.FIRST_DELAY
        while True:
            try:
                item = get()
            except empty:
                if self._idle_and_told():
                    break
                time.sleep(delay)
                delay = min(delay * 2, _worker.LAST_DELAY if self._pending else IDLE_DELAY)
                continue
            delay = _worker.FIRST_DELAY
            handle(item)
        # Told, and idle: whatever an interpreter puts from now on goes to its stderr.
        self.stopped.put_nowait(1)
        while True:
            try:
                item = get()
            except empty:
                break
            handle(item)

    def _handle(self, item: object) -> None:
        try:
            if type(item) is bytes:
                try:
                    task_id, record = decode_record(item)
                except Exception as error:
                    report(
                        logging.ERROR, "logexec: a record from an interpreter could not be rebuilt: %s", error
                    )
                    return
                self._dispatcher.dispatch(task_id, record)
            elif type(item) is tuple:
                self._control(item)
            else:
                # UNBOUND: the interpreter that put it was closed before it was read.
                report(
                    logging.ERROR,
                    "logexec: a record was lost: its interpreter was closed before the record was read (%r)",
                    item,
                )
        except BaseException as error:  # dispatch reports its own; this is a last resort
            report(logging.ERROR, "logexec: an item from an interpreter could not be handled", exc_info=error)

    def _control(self, item: tuple[int, ...]) -> None:
        kind, queue_id = item[0], item[1]
        if kind == _worker.HELLO:
            with self._lock:
                self._live += 1
            return
        queue = self._answer_queues[queue_id]
        queue.put_nowait(item[2])
        if kind == _worker.GOODBYE:
            # The interpreter is closing. Its queue is not handed on (a new owner could
            # take its answer for its own): a fresh one takes its place for a new interpreter.
            with self._lock:
                self._live -= 1
            fresh = interpreters.create_queue()
            self._answer_queues[fresh.id] = fresh
            self.answers.put_nowait(fresh)
