"""``logexec.Pool``: a ``multiprocessing.pool.Pool`` whose workers log through the parent.

A front over the channel's seam (``logexec._channel``), as ``_executor`` is::

   parent process                                     pool workers (spawn | fork | forkserver)
   ────────────────────────────────────────────────   ─────────────────────────────────────────
   Pool(...): LogChannel opened; the stdlib pool       initializer: logexec's ``initialize``
     starts its workers with ``initialize`` and          (connect, reset logging, levels), then
     the channel's config as their initializer           the user's
   apply_async / map / imap / ... (func, ...):
     task id → submitter's context (if not empty)
     func becomes _Task(task id, ..., func) ─────────▶  each call of func (an item of a map
                                                         chunk, or an apply) runs in run_task:
   listener thread ◀───────────────── records ───────   every record sent before its call
     handles each record, answers barriers ─── ack ─▶   returns; a barrier before the result
   get() / callback / map returns ◀───── result ─────   (sent only after the answer)

Only public behaviour of ``multiprocessing.pool`` is used: every public submission method
is overridden to wrap ``func``, ``apply`` goes through ``apply_async``, and the pool is
given a context (its documented ``context=`` parameter) whose ``Process`` also records
each worker the pool makes, so that the channel can be stopped once they have all exited.

Lifecycle: the listener starts once the pool's first workers exist (under fork it must not
run while they are forked: the stdlib pool forks its first workers in ``__init__``, before
its own threads start). ``terminate()`` and ``join()`` stop it after the pool has joined
its workers, reading every connection to its end. A pool dropped without either is
terminated by the stdlib's finalizer; a thread then waits for its workers to exit and stops
the listener. At interpreter exit, pools still running are terminated first (as the stdlib
does a moment later), then the listener drains.
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.pool
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.context import BaseContext
from typing import Any

from .. import _context
from .._channel import (
    LevelsUpdate,
    LevelTracker,
    LogChannel,
    initialize,
    report,
    run_task,
)
from .._crash import MapCall, Task
from .._dispatch import Dispatcher, check_handlers
from ._deaths import Deaths, reporting_process


class _Task:
    """A pool task's ``func``, run inside logexec's task bracket in the worker (picklable)."""

    __slots__ = ("captured", "func", "levels", "propagated", "task_id")

    def __init__(
        self,
        task_id: int,
        propagated: tuple[_context.VarAddress, ...],
        captured: _context.CapturedValues | None,
        levels: LevelsUpdate | None,
        func: Callable[..., Any],
    ) -> None:
        self.task_id = task_id
        self.propagated = propagated
        self.captured = captured
        self.levels = levels
        self.func = func

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Task, (self.task_id, self.propagated, self.captured, self.levels, self.func))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # One bracket per call: a map's item is handed back only after its records are.
        return run_task(self.task_id, self.propagated, self.captured, self.levels, self.func, *args, **kwargs)


class _Chunk:
    """One chunk of a map or starmap: the calls of ``func`` on its items, in one bracket."""

    __slots__ = ("func", "star")

    def __init__(self, func: Callable[..., Any], star: bool) -> None:
        self.func = func
        self.star = star

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Chunk, (self.func, self.star))

    def __call__(self, chunk: list[Any]) -> list[Any]:
        if self.star:
            return list(itertools.starmap(self.func, chunk))
        return list(map(self.func, chunk))


class _Flattened:
    """A map's callback, given the items' results rather than the chunks'."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[Any], object]) -> None:
        self._callback = callback

    def __call__(self, chunks: list[list[Any]]) -> None:
        self._callback(list(itertools.chain.from_iterable(chunks)))


class FlatResult:
    """What ``map_async`` and ``starmap_async`` return: the stdlib's result, by item."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def get(self, timeout: float | None = None) -> list[Any]:
        return list(itertools.chain.from_iterable(self._inner.get(timeout)))

    def wait(self, timeout: float | None = None) -> None:
        self._inner.wait(timeout)

    def ready(self) -> bool:
        return bool(self._inner.ready())

    def successful(self) -> bool:
        return bool(self._inner.successful())


class Workers:
    """Every process a pool made, so that the channel outlives the last of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: list[multiprocessing.process.BaseProcess] = []

    def add(self, process: multiprocessing.process.BaseProcess) -> None:
        with self._lock:
            # Drop those that ended, so that a long-lived pool keeps a short list.
            self._processes = [p for p in self._processes if not _ended(p)]
            self._processes.append(process)

    def wait_all_ended(self) -> None:
        """Return once every process made so far has ended (the pool makes no more by then)."""
        while True:
            with self._lock:
                alive = [p for p in self._processes if not _ended(p)]
                self._processes = alive
            if not alive:
                return
            sentinels = []
            for process in alive:
                try:
                    sentinels.append(process.sentinel)
                except ValueError:  # closed: it ended
                    continue
            if sentinels:
                multiprocessing.connection.wait(sentinels, timeout=1.0)


def _ended(process: multiprocessing.process.BaseProcess) -> bool:
    try:
        if process.pid is None:
            return False  # made, not yet started
        return multiprocessing.connection.wait([process.sentinel], timeout=0) != []
    except ValueError:  # closed by its owner: it ended
        return True


class PoolContext:
    """The real context, except that ``Process`` records each worker (see ``Workers``) and
    reports it if it dies abruptly (see ``_deaths``)."""

    def __init__(self, real: Any, workers: Workers, deaths: Deaths) -> None:
        self._logexec_real = real
        self._logexec_workers = workers
        self._logexec_deaths = deaths

    def Process(self, *args: Any, **kwargs: Any) -> Any:  # the stdlib's name
        process = reporting_process(self._logexec_real.Process, self._logexec_deaths, *args, **kwargs)
        self._logexec_workers.add(process)
        return process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logexec_real, name)


class Pool(multiprocessing.pool.Pool):
    """A ``multiprocessing.pool.Pool`` whose workers' records are handled by the parent's logging.

    Use it exactly like the stdlib's ``Pool`` (same positional parameters, methods and
    ``with``, which terminates on exit). Every record logged in a worker is handled here,
    as ``logging.getLogger(record.name).handle(record)``, or by ``handlers=``.

    Keyword-only options, as for ``LoggingProcessPoolExecutor``: ``handlers`` (None, or a
    non-empty sequence of ``logging.Handler`` that receive every worker record instead) and
    ``propagate_contextvars`` (module-level ``ContextVar`` objects whose values at
    submission are set in the worker while the task runs).

    Guarantees: when a result is handed to the caller (``get()``, ``map`` returning,
    ``imap`` yielding, a callback running), every record the task logged (for ``map``, the
    item's call) has been handled, in the submitter's ``contextvars`` context. Workers
    replaced after ``maxtasksperchild`` tasks lose nothing. A worker killed by a signal
    loses no record whose log call had returned; as in the stdlib, the pool replaces it
    and the task it was running never completes (use ``get(timeout=...)``); the death is
    logged on the "logexec" logger at ERROR, naming the worker, how it ended, its task and
    its last records (docs/failures.md). After
    ``terminate()`` or ``close()`` and ``join()``, every record any worker logged has been
    handled.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        handlers: Iterable[logging.Handler] | None = None,
        propagate_contextvars: Iterable[contextvars.ContextVar[Any]] = (),
    ) -> None:
        # The stdlib's __del__ reads what its __init__ sets first: bad arguments caught here,
        # before it runs, must not make the collection of this object raise.
        self._logexec_entered = False
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be a callable or None, got {initializer!r}")
        if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        real = real_context(context)
        self._logexec_variables = _context.locate_contextvars(propagate_contextvars)
        self._logexec_addresses = tuple(self._logexec_variables)
        self._logexec_dispatcher = Dispatcher(check_handlers(handlers))
        self._logexec_workers = Workers()
        # The tasks not yet done, by task id: a dead worker's report names the one it ran.
        self._logexec_pending: dict[int, Task | MapCall] = {}
        self._logexec_deaths = Deaths(self._logexec_pending)
        self._logexec_channel = LogChannel(self._logexec_dispatcher, self._logexec_deaths.heard)
        self._logexec_lock = threading.Lock()
        self._logexec_task_ids = itertools.count()
        # For the chunk size of map and starmap, as the stdlib computes it.
        self._logexec_processes = processes if processes is not None else os.cpu_count() or 1
        # Levels changed after the workers started travel with later tasks, as the changes
        # from these base levels, which every worker starts from (see LevelsUpdate).
        self._logexec_levels = LevelTracker()
        channel = self._logexec_channel
        config = channel.open()
        config.levels = self._logexec_levels.base
        # Made before the stdlib's finalizer, so that (CPython calls the callbacks of an
        # object's weak references newest first) it runs after that one has terminated
        # the workers of a pool dropped while running; it waits for them in any case.
        finalizer = weakref.finalize(
            self, _stop_when_ended, channel, self._logexec_workers, self._logexec_deaths
        )
        # At interpreter exit the exit hook below terminates and drains instead (no thread
        # can start by then).
        finalizer.atexit = False
        self._logexec_entered = True
        try:
            super().__init__(
                processes,
                initialize,
                (config, initializer, tuple(initargs)),
                maxtasksperchild,
                PoolContext(real, self._logexec_workers, self._logexec_deaths),
            )
            # Under fork the first workers were forked just now, before any thread of ours.
            channel.start()
        except BaseException:
            channel.stop()
            raise
        _live_pools.add(self)

    def __del__(self) -> None:
        if self._logexec_entered:
            # Before the stdlib's finalizer (a weak reference's callback, run after __del__)
            # terminates the workers of a pool dropped while running: their SIGTERM is ours.
            self._logexec_deaths.terminating = True
            super().__del__()

    # -- submission: each func runs in the task bracket ---------------------------------

    def apply(
        self, func: Callable[..., Any], args: Iterable[Any] = (), kwds: Mapping[str, Any] = {}
    ) -> Any:  # the stdlib's signature
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., Any],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},  # the stdlib's signature
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        task, forget = self._logexec_wrap(func, (func, tuple(args), dict(kwds)))
        return _forgotten_when_done(
            forget,
            callback,
            error_callback,
            lambda done, failed: super(Pool, self).apply_async(task, args, kwds, done, failed),
        )

    def map(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = None
    ) -> list[Any]:
        values: list[Any] = self.map_async(func, iterable, chunksize).get()
        return values

    def map_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        return self._logexec_map(func, iterable, chunksize, callback, error_callback, star=False)

    def starmap(
        self, func: Callable[..., Any], iterable: Iterable[Iterable[Any]], chunksize: int | None = None
    ) -> list[Any]:
        values: list[Any] = self.starmap_async(func, iterable, chunksize).get()
        return values

    def starmap_async(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[Any], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> Any:
        return self._logexec_map(func, iterable, chunksize, callback, error_callback, star=True)

    def _logexec_map(
        self,
        func: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int | None,
        callback: Callable[[Any], object] | None,
        error_callback: Callable[[BaseException], object] | None,
        *,
        star: bool,
    ) -> Any:
        # The chunks are made here, as the stdlib makes them, and each runs as one task in
        # one bracket: the stdlib hands a map's results back only once they are all in, so
        # a barrier per chunk keeps the rule at a fraction of a barrier per item's cost.
        # A list or tuple is sliced as it is (the stdlib does not copy it either).
        items = iterable if isinstance(iterable, (list, tuple)) else list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(items), self._logexec_processes * 4)
            chunksize += 1 if extra else 0
        elif chunksize < 1:
            raise ValueError(f"chunksize must be a positive int or None, got {chunksize!r}")
        chunks = [items[start : start + chunksize] for start in range(0, len(items), chunksize or 1)]
        task, forget = self._logexec_wrap(
            _Chunk(func, star), MapCall("starmap" if star else "map", func, items)
        )
        flat_callback = None if callback is None else _Flattened(callback)
        inner = _forgotten_when_done(
            forget,
            flat_callback,
            error_callback,
            lambda done, failed: super(Pool, self).map_async(task, chunks, 1, done, failed),
        )
        return FlatResult(inner)

    def imap(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = 1) -> Any:
        task, forget = self._logexec_wrap(func, MapCall("imap", func, None))
        return _forget_when_dropped(
            lambda: super(Pool, self).imap(task, iterable, 1 if chunksize is None else chunksize), forget
        )

    def imap_unordered(
        self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int | None = 1
    ) -> Any:
        task, forget = self._logexec_wrap(func, MapCall("imap_unordered", func, None))
        return _forget_when_dropped(
            lambda: super(Pool, self).imap_unordered(task, iterable, 1 if chunksize is None else chunksize),
            forget,
        )

    # -- the end: the channel stops once the workers are gone ---------------------------

    def terminate(self) -> None:
        # The stdlib's terminate stops the workers with SIGTERM: not deaths to report.
        self._logexec_deaths.terminating = True
        super().terminate()
        # The stdlib's terminate joins every worker it had: read what they wrote, then stop.
        self._logexec_stop()

    def join(self) -> None:
        super().join()
        self._logexec_stop()

    def _logexec_stop(self) -> None:
        _live_pools.discard(self)
        self._logexec_workers.wait_all_ended()
        self._logexec_channel.stop()
        # Every worker was joined and every connection read: what is left is reported.
        self._logexec_deaths.finish()

    def _logexec_wrap(
        self, func: Callable[..., Any], call: Task | MapCall
    ) -> tuple[_Task | Callable[..., Any], _Forget | None]:
        if isinstance(func, _Task):
            return func, None  # already wrapped (a stdlib method calling another)
        if not callable(func):
            raise TypeError(f"func must be callable, got {func!r}")
        if threading.current_thread() is self._logexec_channel.thread:
            raise RuntimeError(
                "a task was submitted to a logexec.Pool on its own listener thread (from a "
                "parent handler or filter); the task could not finish while the handler "
                "waits, since this thread must read its records: hand the work to another "
                "thread instead"
            )
        with self._logexec_lock:
            captured = _context.capture_values(self._logexec_variables)
            levels = self._logexec_levels.update()
            task_id = next(self._logexec_task_ids)
        context = contextvars.copy_context()
        # An empty context is what the listener thread has anyway: skip the bookkeeping.
        dispatcher = None
        if len(context) > 0:
            dispatcher = self._logexec_dispatcher
            dispatcher.register(task_id, context)
        self._logexec_pending[task_id] = call
        forget = _Forget(self._logexec_pending, dispatcher, task_id)
        return _Task(task_id, self._logexec_addresses, captured, levels, func), forget


class _Forget:
    """Drops a done task: from the pending tasks, and its context from the dispatcher."""

    __slots__ = ("_dispatcher", "_pending", "_task_id")

    def __init__(
        self, pending: dict[int, Task | MapCall], dispatcher: Dispatcher | None, task_id: int
    ) -> None:
        self._pending = pending
        self._dispatcher = dispatcher
        self._task_id = task_id

    def __call__(self, *_: object) -> None:
        self._pending.pop(self._task_id, None)
        if self._dispatcher is not None:
            self._dispatcher.forget(self._task_id)


def _forgotten_when_done(
    forget: _Forget | None,
    callback: Callable[[Any], object] | None,
    error_callback: Callable[[BaseException], object] | None,
    submit: Callable[[Any, Any], Any],
) -> Any:
    if forget is None:
        return submit(callback, error_callback)

    def done(value: Any) -> None:
        forget()
        if callback is not None:
            callback(value)

    def failed(error: BaseException) -> None:
        forget()
        if error_callback is not None:
            error_callback(error)

    try:
        return submit(done, failed)
    except BaseException:
        forget()
        raise


def _forget_when_dropped(submit: Callable[[], Any], forget: _Forget | None) -> Any:
    # An imap iterator has no callback: its task is forgotten when the iterator goes.
    try:
        iterator = submit()
    except BaseException:
        if forget is not None:
            forget()
        raise
    if forget is not None:
        weakref.finalize(iterator, forget).atexit = False
    return iterator


def real_context(context: Any) -> BaseContext:
    """The stdlib context behind ``context`` (None: the default; a logexec context: its own)."""
    if context is None:
        return multiprocessing.get_context()
    inner = getattr(context, "_logexec_real", None)
    if inner is not None:
        return real_context(inner)
    if not callable(getattr(context, "get_start_method", None)) or not callable(
        getattr(context, "Process", None)
    ):
        raise TypeError(f"context must be a multiprocessing context or None, got {context!r}")
    return context  # type: ignore[no-any-return]


def _stop_when_ended(channel: LogChannel, workers: Workers, deaths: Deaths) -> None:
    # Runs where the pool was collected, perhaps on one of its own threads: wait elsewhere.
    threading.Thread(
        target=_stop_after, args=(channel, workers, deaths), name="logexec-pool-lifecycle", daemon=True
    ).start()


def _stop_after(channel: LogChannel, workers: Workers, deaths: Deaths) -> None:
    workers.wait_all_ended()
    channel.stop()
    deaths.finish()


# Pools not yet joined or terminated, for the exit hook below.
_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()


@atexit.register
def _terminate_live_pools() -> None:
    # Registered after the listener's own exit hook, so it runs before it: the stdlib would
    # terminate these pools only after that hook had stopped their listeners.
    for pool in list(_live_pools):
        try:
            pool.terminate()
        except Exception as error:  # the next pools must still be terminated and drained
            report(logging.WARNING, "logexec could not terminate a Pool at exit: %r", error)
