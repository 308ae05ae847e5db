"""The one place where logexec reads state that has no public accessor.

``logging`` offers no public way to list existing loggers, to read the level given to
``logging.disable``, to learn that a level changed, or to change a logger's handlers under
its own lock; ``ProcessPoolExecutor`` none to learn
when its workers have all exited. Each lives in a private attribute unchanged from 3.10 to
3.15; the tests in ``tests/test_compat.py`` pin every one of them on every Python we support.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import struct
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from typing import Any

# What note_when_broken hands its annotate: the dead workers' exit codes by pid, and the
# pool's pending work as (function, args, kwargs) of each call it was given.
PendingWork = list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
# exit_codes(settle): the dead workers' codes, having waited up to settle s for more to end.
ExitCodes = Callable[[float], dict[int, int]]
Annotate = Callable[[ExitCodes, PendingWork], Sequence[str]]
AddNotes = Callable[[BaseException, Sequence[str]], None]


def existing_loggers() -> list[logging.Logger]:
    """Every logger created so far, root first, skipping placeholders."""
    manager = logging.root.manager
    # list() first: another thread may create a logger while we iterate.
    named = [logger for logger in list(manager.loggerDict.values()) if isinstance(logger, logging.Logger)]
    return [logging.root, *named]


def disabled_level() -> int:
    """The level most recently passed to ``logging.disable`` (0 when none is in force)."""
    level: int = logging.root.manager.disable
    return level


def explicit_levels() -> dict[str, int]:
    """The level of root and of every logger whose level was set explicitly."""
    levels = {"": logging.root.level}
    for logger in existing_loggers()[1:]:
        if logger.level != logging.NOTSET:
            levels[logger.name] = logger.level
    return levels


# How a POSIX ``multiprocessing.connection.Connection`` frames a message under 2 GiB on its
# descriptor: a 4-byte big-endian length, then the bytes (``Connection._send_bytes``).
_MESSAGE_HEADER = struct.Struct("!i")


def connection_message(payload: bytes | memoryview) -> bytes:
    """The bytes ``send_bytes(payload)`` writes on a POSIX connection (under 2 GiB).

    For a writer that must know how much of a message went (``_worker.Channel._write``):
    ``send_bytes`` cannot say how much it wrote before a signal handler's exception.
    """
    return _MESSAGE_HEADER.pack(len(payload)) + payload


def add_handler_first(logger: logging.Logger, handler: logging.Handler) -> None:
    """Put ``handler`` first among ``logger``'s handlers, in a new list, under logging's lock.

    ``Logger.callHandlers`` walks ``logger.handlers`` without a lock, so a handler that
    another thread removes in place meanwhile (``removeHandler``; Dask's forward_logging
    does that on a worker's event loop) makes the walk skip the handler after it: a record
    silently lost to that one. Nothing can be removed before the first, and a walk in
    progress keeps the old list, undisturbed by this change or by ``remove_handler``.
    """
    with _logging_lock():
        logger.handlers = [handler, *(other for other in logger.handlers if other is not handler)]


def remove_handler(logger: logging.Logger, handler: logging.Handler) -> None:
    """Take ``handler`` off ``logger`` in a new list (see ``add_handler_first``)."""
    with _logging_lock():
        logger.handlers = [other for other in logger.handlers if other is not handler]


def _logging_lock() -> threading.RLock:
    # The lock addHandler and removeHandler take (_acquireLock() before 3.13, the same lock).
    lock: threading.RLock = getattr(logging, "_lock")  # noqa: B009  # private: no stub
    return lock


def wake_executor_manager(executor: object) -> bool:
    """Make a ``ProcessPoolExecutor``'s manager thread look at its workers again.

    CPython's manager thread waits on the sentinels of the workers it knew when it last
    woke. ``submit`` wakes it *before* spawning a new worker on demand (spawn and
    forkserver), so a worker started by the last submit is not watched: if it is killed,
    the pool never notices and ``result()`` hangs (measured here on 3.11 and 3.13: 6-7 hangs
    in 10 with a plain ``ProcessPoolExecutor``). The listener sees the dead worker's
    connection end, and calls this so that the manager collects the sentinels afresh.

    Returns False, having done nothing, when the executor's shutdown lock is busy; the
    caller tries again later. Do not change this to a blocking acquire: from 3.12 the
    manager thread holds that lock while it joins the workers, and a worker still in its
    initializer waits for the listener, so a listener blocked here deadlocks shutdown.
    """
    lock = getattr(executor, "_shutdown_lock", None)
    if lock is None:
        return True
    if not lock.acquire(blocking=False):
        return False
    # Under the lock, as the stdlib does it, so that shutdown cannot close the wake-up pipe
    # underneath us.
    try:
        # Shutting down or broken, the manager no longer waits to be told of new workers,
        # and may no longer drain its wake-up pipe: a write to a full one blocks for ever
        # (CPython's own test_gh105829 fills it). Do not change this to waking regardless.
        if getattr(executor, "_shutdown_thread", False) or getattr(executor, "_broken", False):
            return True
        wakeup = getattr(executor, "_executor_manager_thread_wakeup", None)
        if wakeup is not None:
            try:
                wakeup.wakeup()
            except (OSError, ValueError):
                pass  # closed by a shutdown that is already under way
    finally:
        lock.release()
    return True


def manager_thread(executor: object) -> threading.Thread | None:
    """The thread that runs a ``ProcessPoolExecutor``'s workers, once ``submit`` started it.

    It exits only after every worker has been joined: on shutdown, on a broken pool, and
    when the executor was dropped without ``shutdown()`` (the stdlib finishes the pending
    work first). So its end is when the log listener may stop.
    """
    thread = getattr(executor, "_executor_manager_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


def manager_failed_to_start(executor: object) -> bool:
    """Whether ``submit`` made the pool's manager thread but could not start it.

    A thread limit, or interpreter finalization (gh-109047), makes ``Thread.start`` raise
    ``RuntimeError``; the stdlib's ``submit`` raises it, with the workers it already
    started left waiting for work that will never come.
    """
    thread = manager_thread(executor)
    return thread is not None and thread.ident is None


# How long break_pool waits for the terminated workers to exit. SIGTERM ends a worker
# at once unless a task blocks it; one that outlives this is the manager's to join.
BREAK_WAIT_SECONDS = 10.0


def break_pool(executor: object, cause: str) -> None:
    """Break a ``ProcessPoolExecutor`` as its manager thread does when a worker dies.

    Pending futures fail with ``BrokenProcessPool``, later submits raise it, and every
    worker is terminated. Used when a thread the pool needs cannot start. A running
    manager does it itself once it sees its workers die (so that nothing here races with
    it); a manager that never ran, or died of an exception (3.10 and 3.11 have no
    gh-109047 guard around the queue's feeder thread), has its ``terminate_broken`` called
    here, on its thread object, which does not need the thread to run.
    """
    thread = manager_thread(executor)
    if thread is not None and thread.is_alive():
        terminate_workers(executor)
    elif thread is not None and callable(getattr(thread, "terminate_broken", None)):
        thread.terminate_broken([cause])  # type: ignore[attr-defined]
    else:
        terminate_workers(executor)


def terminate_workers(executor: object) -> None:
    """Terminate the pool's workers and wait (bounded) until they have exited, unreaped."""
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            process.terminate()
    # Wait on the sentinels rather than join(): the manager thread reaps them, and two
    # threads reaping one pid leave one of them with a Process that never learns its exit.
    sentinels = []
    for process in processes:
        with contextlib.suppress(ValueError, AttributeError):
            sentinels.append(process.sentinel)
    deadline = time.monotonic() + BREAK_WAIT_SECONDS
    while sentinels and time.monotonic() < deadline:
        ready = multiprocessing.connection.wait(sentinels, deadline - time.monotonic())
        sentinels = [sentinel for sentinel in sentinels if sentinel not in ready]


def note_when_broken(
    executor: object, annotate: Annotate, add_notes: AddNotes, on_error: Callable[[BaseException], None]
) -> bool:
    """Have the ``BrokenProcessPool`` of a breaking pool carry ``annotate``'s notes.

    The stdlib's manager thread breaks the pool in ``terminate_broken``: it makes one
    ``BrokenProcessPool`` and sets it on every pending future, whose waiters may print it
    at once; notes added afterwards would race with them. So that method is wrapped, on
    the thread object only: first ``annotate`` gets a way to read the dead workers' exit
    codes (from the pool's processes, as the manager itself reads them; workers killed
    together may end a moment apart, so it may look twice) and the pending work, then, while
    the stdlib's own code runs, each pending future's ``set_exception`` adds the notes to
    the exception before storing it. Returns False (nothing done) when the pool has no
    manager thread yet or no such method. Should making the notes fail, ``on_error`` is
    told, and the pool breaks all the same, without them.
    """
    thread = manager_thread(executor)
    original = getattr(thread, "terminate_broken", None)
    if thread is None or not callable(original) or "terminate_broken" in vars(thread):
        return False
    # Held weakly: the wrapper lives in the thread's own __dict__, and a strong bound method
    # would make thread -> wrapper -> thread a cycle, keeping the pool's queues (and their
    # semaphores) alive until the garbage collector runs, where the stdlib frees them when
    # the pool is dropped; the resource tracker then reports them as leaked.
    original_ref = weakref.WeakMethod(original)
    del original
    processes: dict[int, Any] = getattr(thread, "processes", None) or {}
    pending: object = getattr(thread, "pending_work_items", None)
    if not isinstance(pending, dict):
        return False
    work_items: dict[int, Any] = pending

    def terminate_broken(*args: Any, **kwargs: Any) -> Any:
        hooked: list[Future[Any]] = []
        try:
            items = list(work_items.values())
            work = [(item.fn, tuple(item.args), dict(item.kwargs)) for item in items]
            notes = annotate(lambda settle: exit_codes_of(list(processes.items()), settle), work)
            noting = _NotingSetException(notes, add_notes)
            for item in items:
                future = item.future
                future.set_exception = noting.bind(future)
                hooked.append(future)
        except Exception as error:  # the notes are a courtesy: the pool must break regardless
            on_error(error)
        try:
            method = original_ref()
            # The thread calls this on itself, so it is alive and so is its method.
            return None if method is None else method(*args, **kwargs)
        finally:
            for future in hooked:
                vars(future).pop("set_exception", None)

    thread.terminate_broken = terminate_broken  # type: ignore[attr-defined]
    return True


# How long a worker whose sentinel is ready may take to become reapable: its descriptors
# close before the kernel makes it a zombie, so its exit code can lag its sentinel.
REAP_WAIT_SECONDS = 1.0


def exit_codes_of(processes: list[tuple[int, Any]], settle: float) -> dict[int, int]:
    """The exit code of each process that has ended (its sentinel is ready), by pid.

    With ``settle``, waits that long for more to end: workers killed together end a
    moment apart, and the pool breaks on the first.
    """
    by_sentinel = {}
    for pid, process in processes:
        with contextlib.suppress(ValueError, AttributeError):
            by_sentinel[process.sentinel] = (pid, process)
    ended = set(multiprocessing.connection.wait(list(by_sentinel), 0)) if by_sentinel else set()
    deadline = time.monotonic() + settle
    while len(ended) < len(by_sentinel) and time.monotonic() < deadline:
        waiting = [sentinel for sentinel in by_sentinel if sentinel not in ended]
        ended.update(multiprocessing.connection.wait(waiting, max(0.0, deadline - time.monotonic())))
    codes: dict[int, int] = {}
    deadline = time.monotonic() + REAP_WAIT_SECONDS
    for sentinel in ended:
        pid, process = by_sentinel[sentinel]
        # On the manager thread, which joins them next anyway (one thread reaps).
        process.join(max(0.0, deadline - time.monotonic()))
        if process.exitcode is not None:
            codes[pid] = process.exitcode
    return codes


class _NotingSetException:
    """Adds the notes once to the shared ``BrokenProcessPool``, then stores it as usual."""

    def __init__(self, notes: Sequence[str], add_notes: AddNotes) -> None:
        self._notes = notes
        self._add_notes = add_notes
        self._noted: list[BaseException] = []

    def bind(self, future: Future[Any]) -> Callable[[BaseException], None]:
        def set_exception(exception: BaseException) -> None:
            if isinstance(exception, BrokenProcessPool) and not any(
                exception is noted for noted in self._noted
            ):
                self._noted.append(exception)
                self._add_notes(exception, self._notes)
            Future.set_exception(future, exception)

        return set_exception


def break_if_manager_died(manager: threading.Thread) -> None:
    """After the manager thread ended: if it died of an exception, break its pool.

    A manager that ends normally has joined every worker. On 3.10 and 3.11 a feeder thread
    that cannot start kills the manager with ``RuntimeError`` instead (no gh-109047 guard),
    leaving the futures pending and the workers waiting for ever: the stdlib pool hangs.
    """
    processes = getattr(manager, "processes", None) or {}
    if not any(process.is_alive() for process in list(processes.values())):
        return
    terminate_broken = getattr(manager, "terminate_broken", None)
    if callable(terminate_broken):
        terminate_broken(["the pool's manager thread ended with an error (see the traceback above)"])


class LevelWatch:
    """Tells in O(1) whether any logger's level, or ``logging.disable``, may have changed.

    Every ``Logger.setLevel`` and ``logging.disable`` call clears the level caches of all
    loggers (``Manager._clear_cache``), root's included. A private key of ours in root's
    cache is therefore gone after any such call: one dict look-up per ``submit`` while
    nothing changes. (A level assigned to ``logger.level`` directly is missed, as logging's
    own cache misses it.)
    """

    def __init__(self) -> None:
        self._key = object()
        self.arm()

    def arm(self) -> None:
        """Start watching from now. Arm *before* reading the levels, so that a change made
        while they are read is seen next time rather than lost."""
        cache = getattr(logging.root, "_cache", None)
        if isinstance(cache, dict):
            cache[self._key] = True

    def changed(self) -> bool:
        cache = getattr(logging.root, "_cache", None)
        # Without the cache (a future logging), report a change every time: correct, slower.
        return not isinstance(cache, dict) or self._key not in cache
