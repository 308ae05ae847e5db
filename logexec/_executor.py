"""``LoggingProcessPoolExecutor``: a ``ProcessPoolExecutor`` whose workers log through the parent.

Data flow::

   parent process                                   worker processes (spawn | fork | forkserver)
   ──────────────────────────────────────────────   ─────────────────────────────────────────────
   submit(fn, *args)                                 initializer (ours, then the user's):
     │ task id; copy_context() kept by task id         • connect to the listener, answer challenge
     ▼                                                 • every logger: no handlers, no filters,
   ProcessPoolExecutor machinery ── call item ────▶      propagate = True
                                                       • root: one QueueHandler → own ring/connection
                                                       • mirror the parent's levels
   listener thread ("logexec-listener")              run_task(task id, fn, ...):
     • per worker: a shared-memory ring ◀─── frames ── • each log call: frame published before
       and an AF_UNIX connection (wake-ups,              it returns (record tagged by task id)
       barriers, EOF; the frames where no ring)
     • rebuild the record
     • context.run(dispatch) in the submitter's        • after fn: a barrier, if it logged,
       context: getLogger(name).handle(record)           and wait for the answer
       or the explicit handlers                                │
     • answer barriers ──────────────────────── ack ──▶ ◀──────┘
   future.result() ◀──── result ───────────────────── (sent after the barrier is answered)

This front is a thin adapter over the channel's seam (``logexec._channel``, whose docstring
is the architecture): a ``LogChannel`` whose **listener** owns a socket in a private
directory and reads every worker's connection and ring; a dead worker is an EOF on its own
connection and nothing else (and the pool's manager thread is woken to notice it). The
**worker side** is the seam's ``initialize`` (the initializer) and ``run_task`` (the task
wrapper). The record policy is ``logexec._records``. The **dispatcher** (``_dispatch``)
hands rebuilt records to the parent's logging, inside the submitter's context
(``_context``).

Lifecycle: ``__init__`` fixes the initializer and its arguments, as the stdlib requires.
The socket is bound on ``__enter__`` or the first ``submit``, before any worker starts,
and the listener thread is started then too, except under fork: there it starts right
after the first ``submit`` has forked the workers, because forking while another thread
runs can deadlock the child (3.12+ warns about it).

The listener's life follows the workers, not this object. Users drop executors without
``shutdown()`` (``list(Executor().map(f, xs))``, ``del executor``, a function that returns
only futures), and the stdlib still finishes the pending work, in its manager thread,
which exits only once every worker has been joined. So the first ``submit`` starts a
"logexec-lifecycle" thread that waits for the manager thread to end and then stops the
listener, which reads every connection to its end. ``shutdown(wait=True)`` does the same
on the caller's thread. Neither the listener nor that thread holds the executor.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import multiprocessing
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

from . import _compat, _context, _crash
from ._channel import (
    LevelTracker,
    LogChannel,
    WorkerExit,
    initialize,
    run_task,
)
from ._dispatch import Dispatcher, ForgetWhenDone, check_handlers

T = TypeVar("T")
# submit() is typed as typeshed types Executor.submit, so that a type checker matches the
# arguments against fn's parameters.
P = ParamSpec("P")


class LoggingProcessPoolExecutor(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` whose workers' records are handled by the parent's logging.

    Use it exactly like ``ProcessPoolExecutor``: the same positional parameters, ``submit``,
    ``map``, ``shutdown``, the ``with`` statement, task exceptions and ``BrokenProcessPool``.
    Every record logged in a worker is sent to this process and handled by its logging
    configuration, as if the call had been made here:
    ``logging.getLogger(record.name).handle(record)``, so dictConfig set-ups, per-logger
    handlers, filters and pytest's ``caplog`` apply unchanged.

    Args:
        max_workers: As in the stdlib: the number of worker processes, a positive int, or
            ``None`` for the machine's CPU count (at most 61 on Windows).
        mp_context: As in the stdlib: a ``multiprocessing`` context (its start method is
            the workers'), or ``None`` for the stdlib's default.
        initializer: As in the stdlib: called in each worker when it starts, after
            logexec's own set-up, so it can log.
        initargs: The arguments of ``initializer``, a tuple.
        max_tasks_per_child: As in the stdlib, which has it from 3.11 (earlier, passing it
            fails as the stdlib fails): a worker is replaced after this many tasks, without
            losing a record.
        handlers: ``None`` (dispatch by logger name, the default) or a non-empty sequence
            of ``logging.Handler`` that receive every worker record instead, each
            respecting its own level, and never root's. ``[logging.NullHandler()]`` drops
            them on purpose.
        propagate_contextvars: Module-level ``contextvars.ContextVar`` objects whose values
            at ``submit`` are set in the worker while the task runs. (Parent-side filters
            always see the submitter's whole context, with or without this.)

    Raises:
        ValueError: ``max_workers`` is not positive, or ``handlers`` is empty (that would
            drop every record).
        TypeError: A parameter of the wrong type (``max_workers`` not an int,
            ``initializer`` not callable, ``initargs`` not a tuple, ``mp_context`` not a
            context, ``handlers`` not handlers, a ``propagate_contextvars`` item not a
            ``ContextVar``), or a ``propagate_contextvars`` variable that is not a
            module-level attribute of an imported module (a worker could not import it).
            The message names the parameter and the value.

    Platforms: CPython 3.10 to 3.15, under every start method the platform has. On x86-64
    Linux records travel through a shared-memory ring per worker; on other POSIX systems
    through the worker's ``AF_UNIX`` connection; where there is no ``AF_UNIX`` (Windows)
    through a ``multiprocessing.connection`` connection: the same guarantees each time
    (``_transports``). ``LOGEXEC_TRANSPORT=ring|socket|portable`` forces one
    (``LOGEXEC_SHARED_MEMORY=0`` still means ``socket``). Tested on Linux only so far.

    When a worker starts, logexec's initializer runs first, then yours (so yours can log).
    It removes every handler and filter the worker inherited (under fork, all of the
    parent's), sets ``propagate`` back to true, puts one ``QueueHandler`` on the root
    logger, and applies the parent's logger levels and ``logging.disable``, so that records
    the parent would not handle are not even made. The parent's current levels decide:
    each record is checked against them again when it is handled, and levels changed in
    the parent reach the workers with the tasks submitted after the change (a level
    lowered while a task runs does not make that task produce the records it would now
    allow).

    Lifecycle: the executor may be used without ``with`` or ``shutdown()`` and dropped, as
    the stdlib allows; its pending work still runs, and every record of it is handled,
    because the parent's listener lives until the pool's workers have exited.

    What ``result()`` guarantees: when ``future.result()`` returns or raises the task's
    exception (and likewise for ``map``, ``as_completed`` and ``wait``), every record the
    task logged has already been handled by the parent's handlers, inside the
    ``contextvars`` context of the ``submit`` call. A worker killed, even by ``SIGKILL``,
    loses no record whose log call had returned; the pool then breaks as the stdlib's does
    (``BrokenProcessPool``), and ``shutdown`` does not hang. That ``BrokenProcessPool``
    carries a note per dead worker (PEP 678; before 3.11, in its message): its pid, the
    signal or exit code it ended with, the task it was running if it had logged in it, and
    its last records (see docs/failures.md). Breaking waits up to 0.25 s for other workers
    killed at the same time, and up to 2 s for the listener to read a dead worker's end.

    Limits:

    - A record whose log call had not returned when its worker died is not delivered.
    - Exceptions arrive rendered, as ``exc_text``, not as ``exc_info``; an argument, an
      ``extra`` value or an exception that will not pickle arrives as its ``repr()``.
    - Worker records are made by the worker's record factory, not the parent's.
    - A process forked by a task that outlives the pool is waited for 2 s after the
      workers exit (one deadline in all), then given up on, with a warning naming it.
    - Each worker costs this process one file descriptor more than the stdlib's pool.
    - If the parent dies, records not yet handled die with it; the workers' later records
      go to their stderr.
    - Parent handlers and filters run on the listener thread, which must keep reading for
      a task to finish: ``submit`` (and ``map``) called there raises ``RuntimeError`` at
      once; hand such work to another thread. Waiting there on a future submitted from
      elsewhere cannot be detected and blocks until its ``timeout``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        handlers: Iterable[logging.Handler] | None = None,
        propagate_contextvars: Iterable[contextvars.ContextVar[Any]] = (),
    ) -> None:
        _check_max_workers(max_workers)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable or None, got {initializer!r}")
        if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        checked_handlers = check_handlers(handlers)
        self._logexec_variables = _context.locate_contextvars(propagate_contextvars)
        self._logexec_addresses = tuple(self._logexec_variables)
        if mp_context is None:
            # The stdlib's own default; made explicit so we know the start method.
            if max_tasks_per_child is not None and sys.version_info >= (3, 11):
                mp_context = multiprocessing.get_context("spawn")
            else:
                mp_context = multiprocessing.get_context()
        elif not callable(getattr(mp_context, "get_start_method", None)):
            raise TypeError(f"mp_context must be a multiprocessing context, got {mp_context!r}")
        self._logexec_forks = mp_context.get_start_method() == "fork"
        self._logexec_dispatcher = Dispatcher(checked_handlers)
        # What the listener tells of dead workers, for the notes of a broken pool (_crash).
        self._logexec_crashes = _crash.CrashLog()
        # The channel's parent end (see logexec._channel for the seam).
        self._logexec_listener = LogChannel(
            self._logexec_dispatcher, _WakeManager(weakref.ref(self), self._logexec_crashes)
        )
        self._logexec_config = self._logexec_listener.config
        self._logexec_lock = threading.Lock()
        self._logexec_shutdown = False
        self._logexec_started = False
        # The listener thread could not start on __enter__: each submit raises it (the
        # stdlib's submit raises when its manager thread cannot start; __enter__ never does).
        self._logexec_start_error: RuntimeError | None = None
        # Whether a lifecycle thread watches the pool's manager thread (see the docstring).
        self._logexec_watch = _Watch()
        self._logexec_task_ids = itertools.count()
        # Levels changed in the parent after the workers started travel with later tasks, as
        # changes from these base levels, which every worker starts from (see LevelsUpdate).
        self._logexec_levels = LevelTracker()
        self._logexec_config.levels = self._logexec_levels.base
        extra = {} if max_tasks_per_child is None else {"max_tasks_per_child": max_tasks_per_child}
        super().__init__(
            max_workers,
            mp_context,
            initialize,
            (self._logexec_config, initializer, tuple(initargs)),
            **extra,
        )
        # Dropped before any submit: no worker ever ran and there is no manager thread to
        # wait for, so stop the listener here. After a submit the lifecycle thread does it.
        weakref.finalize(self, _stop_if_unwatched, self._logexec_listener, self._logexec_watch)

    def __enter__(self) -> LoggingProcessPoolExecutor:
        with self._logexec_lock:
            if not self._logexec_started and not self._logexec_shutdown:
                try:
                    self._start_channel()
                except RuntimeError as error:
                    self._logexec_start_error = error
        return self

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a worker, as ``ProcessPoolExecutor.submit``.

        The submitter's ``contextvars`` context is kept for the task's records, and the
        parent's current logger levels go with the task if they changed.

        Args:
            fn: A picklable callable (under spawn and forkserver, importable by name).
            *args: Its positional arguments (picklable).
            **kwargs: Its keyword arguments (picklable).

        Returns:
            A ``Future``: when its ``result()`` returns or raises, every record the task
            logged has been handled by the parent's logging.

        Raises:
            RuntimeError: After ``shutdown``; when called on the listener thread (from a
                parent handler or filter of this executor, whose records that thread must
                read); or when a thread of the pool cannot start.
            TypeError: A ``propagate_contextvars`` value that does not pickle.
            concurrent.futures.process.BrokenProcessPool: The pool is broken (a worker
                died abruptly), as with the stdlib.
        """
        if threading.current_thread() is self._logexec_listener.thread:
            # A parent handler runs on the listener thread, which must keep reading for the
            # task's records and its end-of-task answer: waiting on that task from here
            # would deadlock, so refuse at once rather than hang.
            raise RuntimeError(
                "submit() was called on the logexec listener thread of the same executor "
                "(from a parent handler or filter); the task could not finish while the "
                "handler waits, since this thread must read its records: hand the work to "
                "another thread (e.g. a queue or a separate executor) instead"
            )
        # Held until the task is accepted and the listener is watched, as the stdlib holds its
        # _shutdown_lock: a concurrent shutdown() comes either before (submit raises) or after
        # (the lifecycle thread stops the listener once the accepted task has run).
        with self._logexec_lock:
            if self._logexec_shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            captured = _context.capture_values(self._logexec_variables)
            if self._logexec_start_error is not None:
                raise self._logexec_start_error
            if not self._logexec_started:
                self._start_channel()
            levels = self._logexec_levels.update()
            task_id = next(self._logexec_task_ids)
            context = contextvars.copy_context()
            # An empty context is what the listener thread has anyway: skip the bookkeeping.
            keep_context = len(context) > 0
            if keep_context:
                self._logexec_dispatcher.register(task_id, context)
            try:
                future: Future[T] = super().submit(
                    run_task, task_id, self._logexec_addresses, captured, levels, fn, *args, **kwargs
                )
            except BaseException as error:
                if keep_context:
                    self._logexec_dispatcher.forget(task_id)
                if isinstance(error, BrokenProcessPool):
                    # Broken earlier (a worker died while idle, say): say by whom.
                    _crash.add_notes(error, self._logexec_crashes.notes)
                if _compat.manager_failed_to_start(self):
                    # gh-109047: the stdlib raises this RuntimeError and leaves the workers it
                    # started waiting for ever (under fork, the interpreter's exit waits for
                    # them). Break the pool as a dead worker would, then stop the listener.
                    self._break_pool("the pool's manager thread could not start")
                else:
                    self._start_threads()
                raise
            self._start_threads()
        if keep_context:
            future.add_done_callback(ForgetWhenDone(self._logexec_dispatcher, task_id))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the pool, as ``ProcessPoolExecutor.shutdown``, and then the listener.

        Args:
            wait: Return only once the pending work is done, the workers have exited and
                every record they logged has been handled. With ``False`` the listener
                stops by itself once the workers exit.
            cancel_futures: Cancel the futures that have not started, as in the stdlib.

        Raises:
            RuntimeError: As the stdlib raises it (e.g. ``wait=True`` from a done-callback
                on the pool's own manager thread); the pool and the listener go on.
        """
        with self._logexec_lock:
            self._logexec_shutdown = True
        if wait and threading.current_thread() is self._logexec_listener.thread:
            # A parent handler shutting the pool down while it handles a worker's record:
            # waiting here would wait for the workers, which wait for this very thread.
            wait = False
        # The stdlib's own shutdown, exactly: from a done-callback on its manager thread
        # with wait=True it raises, as the stdlib's does, and the pool goes on; the
        # listener must go on with it, so it is stopped only after a shutdown that joined.
        try:
            super().shutdown(wait=wait, cancel_futures=cancel_futures)
        except RuntimeError:
            # The stdlib's shutdown raises "cannot join thread before it is started" when
            # its manager thread could not start; its workers were stopped by then
            # (_break_pool), so the listener is stopped all the same.
            if _compat.manager_failed_to_start(self):
                self._logexec_listener.stop(wait=wait)
            raise
        if wait or not self._logexec_watch.started:
            # Joined (or no worker ever ran): every record has reached the kernel; read it.
            self._logexec_listener.stop(wait=wait)
        if wait:
            # The stdlib's shutdown(wait=True) leaves none of its threads behind; ours must
            # not either: a fork pool made next would fork a multi-threaded process (3.12+
            # warns, and the child may inherit a held lock). The lifecycle thread has only
            # the listener's stop() left to return from, done just above.
            self._logexec_watch.join()

    def _start_executor_manager_thread(self) -> None:
        # The stdlib's own step of submit, under its shutdown lock, which its manager thread
        # takes before it can break the pool: hooked here, the notes cannot miss a worker
        # that dies at once (see _compat.note_when_broken; tests/test_compat.py pins both).
        super()._start_executor_manager_thread()
        _compat.note_when_broken(
            self, _CrashNotes(self._logexec_crashes), _crash.add_notes, _crash.report_failure
        )

    def _start_threads(self) -> None:
        """After the pool's submit: our threads; if one cannot start, the pool breaks."""
        try:
            if self._logexec_forks:
                # Under fork the first submit has just forked every worker; only now may
                # our threads run (see the module docstring).
                self._logexec_listener.start()
            if not self._logexec_watch.started:
                self._watch_workers()
        except RuntimeError:
            # A thread limit or interpreter finalization: the stdlib's submit raises the
            # RuntimeError when its manager thread cannot start, and so does ours for ours;
            # the workers must not be left behind waiting for work (or for the listener).
            self._break_pool("a logexec thread could not start")
            raise

    def _break_pool(self, cause: str) -> None:
        """Fail the pending work with BrokenProcessPool, stop every worker, then the listener."""
        # Later submits raise BrokenProcessPool, as the stdlib's broken pool does.
        _compat.break_pool(self, cause)
        # The workers have exited (or were told to): read what they wrote, and stop.
        self._logexec_listener.stop()

    def _start_channel(self) -> None:
        self._logexec_listener.open()
        if not self._logexec_forks:
            self._logexec_listener.start()
        self._logexec_started = True

    def _watch_workers(self) -> None:
        """Start the thread that stops the listener once the pool's workers have exited."""
        with self._logexec_watch.lock:
            if self._logexec_watch.started:
                return
            manager = _compat.manager_thread(self)
            if manager is None:
                return  # submit failed before the pool started; the next one tries again
            _compat.note_when_broken(
                self, _CrashNotes(self._logexec_crashes), _crash.add_notes, _crash.report_failure
            )
            # Not a daemon: at interpreter exit the stdlib finishes pending work and joins
            # its manager threads, then the interpreter joins this one, which reads the
            # last records before logging shuts down.
            thread = threading.Thread(
                target=_stop_after,
                args=(manager, self._logexec_listener),
                name="logexec-lifecycle",
                daemon=False,
            )
            try:
                thread.start()
            except RuntimeError as error:
                # No thread to be had (a thread limit, or interpreter finalization): the
                # caller breaks the pool, as the stdlib's submit fails when its own
                # manager thread cannot start.
                raise RuntimeError(
                    f"logexec could not start its lifecycle thread ({error}); the pool is broken"
                ) from error
            self._logexec_watch.started = True
            self._logexec_watch.thread = thread


class _Watch:
    """Whether the lifecycle thread runs; shared with the finalizer, which cannot hold self."""

    __slots__ = ("lock", "started", "thread")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False
        self.thread: threading.Thread | None = None

    def join(self) -> None:
        """Wait for the lifecycle thread to end, unless this is it (a handler it runs)."""
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


def _stop_after(manager: threading.Thread, listener: LogChannel) -> None:
    manager.join()
    # 3.10 and 3.11: a manager killed by a feeder thread that could not start.
    _compat.break_if_manager_died(manager)
    listener.stop()


def _stop_if_unwatched(listener: LogChannel, watch: _Watch) -> None:
    if not watch.started:
        listener.stop(wait=False)


class _CrashNotes:
    """Makes a broken pool's notes (see _compat.note_when_broken), holding no executor."""

    __slots__ = ("_crashes",)

    def __init__(self, crashes: _crash.CrashLog) -> None:
        self._crashes = crashes

    def __call__(self, exit_codes: _compat.ExitCodes, work: _compat.PendingWork) -> Sequence[str]:
        # Each call item is run_task(task_id, addresses, captured, levels, fn, *args).
        tasks = {
            args[0]: (args[4], args[5:], kwargs)
            for function, args, kwargs in work
            if function is run_task and len(args) >= 5
        }
        return self._crashes.make_notes(exit_codes, tasks)


class _WakeManager:
    """Tells the stdlib's manager thread that a worker's connection ended (see _compat)."""

    __slots__ = ("_crashes", "_executor")

    def __init__(self, executor: weakref.ref[LoggingProcessPoolExecutor], crashes: _crash.CrashLog) -> None:
        # A weak reference: the listener must not keep the executor alive.
        self._executor = executor
        self._crashes = crashes

    def __call__(self, exits: Sequence[WorkerExit]) -> bool:
        # First, for a broken pool's notes: its last records, before the manager is woken.
        self._crashes.add(exits)
        # Which workers does not matter here: the manager looks at every sentinel again.
        executor = self._executor()
        return executor is None or _compat.wake_executor_manager(executor)


def _check_max_workers(max_workers: object) -> None:
    if max_workers is None:
        return
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(f"max_workers must be an int or None, got {max_workers!r}")
    if max_workers <= 0:
        raise ValueError(f"max_workers must be greater than 0, got {max_workers}")
