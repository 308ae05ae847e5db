"""The parent side of ``logexec.joblib``: one log channel for joblib's reusable loky executor.

joblib's ``loky`` backend keeps a single executor per process and reuses it (and its
workers) across ``Parallel`` calls for as long as the arguments it was made with stay equal;
it replaces it when they change, when it broke, or after it was shut down. So the channel is
a process-wide singleton too: one listener thread, one socket directory, one key, and one
``WorkerConfig`` object. The config is part of the executor's ``initargs``; being the same
object call after call, it compares equal and lets loky reuse its workers. Creating a
channel per ``Parallel`` call would change ``initargs`` and cost a new pool every call.

Lifetime: the listener runs while a logexec-configured loky executor may have workers.
When loky drops that executor (a ``Parallel`` call with other executor arguments, plain
``loky`` for instance, made it shut the executor down, which joins its workers first), the
executor's finalizer stops the listener; at interpreter exit the listener's own exit hook
does. A ``Parallel`` call never starts a thread or makes a directory of its own.

Routing: backends registered with different options (``handlers=``) share the channel, so
each batch's task id is mapped to the ``Dispatcher`` of the backend that submitted it, and
to the ``contextvars.Context`` of the ``Parallel`` call. Records with no task (a user
initializer's, or a thread's that outlived its batch) go by logger name.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

from .. import _crash
from .._channel import LevelsUpdate, LogChannel, WorkerExit, current_levels, initialize, level_changes
from .._dispatch import Captures, Dispatcher, ForgetWhenDone, append_captured, captures_of
from . import _compat as _joblib_compat
from ._worker import run_batch


class RoutingDispatcher(Dispatcher):
    """Sends each task's records to the dispatcher and context of the backend that made it."""

    def __init__(self) -> None:
        super().__init__(None)
        self._routes: dict[int, tuple[Dispatcher, contextvars.Context | None, Captures | None]] = {}

    def route(self, task_id: int, dispatcher: Dispatcher, context: contextvars.Context | None) -> None:
        # A plain dict: one item set, read or popped at a time is atomic, and this runs once
        # per batch on the submitting thread and once per record on the listener's.
        # The capture_records lists open in the caller's context, looked up once per batch.
        captures = captures_of(context) if context is not None else None
        self._routes[task_id] = (dispatcher, context, captures)

    def forget(self, task_id: int) -> None:
        self._routes.pop(task_id, None)

    def forget_all(self) -> None:
        self._routes.clear()

    def dispatch(self, task_id: int | None, record: logging.LogRecord) -> None:
        route = self._routes.get(task_id) if task_id is not None else None
        if route is None:
            super().dispatch(None, record)
            return
        dispatcher, context, captures = route
        if captures is not None:
            append_captured(captures, record)
        if context is None:
            dispatcher.dispatch(None, record)
        else:
            context.run(dispatcher.dispatch, None, record)


class Channel:
    """The listener, its key and address, and the task ids of every logexec batch."""

    def __init__(self) -> None:
        self.dispatcher = RoutingDispatcher()
        # What the listener tells of dead workers, for the notes of a broken pool; loky's own
        # manager thread watches its workers' sentinels.
        self.crashes = _crash.CrashLog()
        self.listener = LogChannel(self.dispatcher, self._heard)
        # The same config object for every executor this channel serves (see the docstring).
        self.config = self.listener.open()
        # The base levels every worker starts from, fixed now: each batch carries only the
        # loggers that differ from them (see LevelsUpdate), never the whole table.
        self.config.levels = self._levels = current_levels()
        self._levels_update: LevelsUpdate = (0, {}, self._levels[1])
        self._levels_lock = threading.Lock()
        # loky starts workers by fork+exec in C (or spawn, or forkserver; never a bare
        # fork), so the thread may run before the first worker exists.
        self.listener.start()
        self._task_ids = itertools.count()
        # The executor served last; a new one gets a finalizer (see serve()).
        self._served: weakref.ref[Any] | None = None
        self._token: object = None

    def levels_update(self) -> LevelsUpdate:
        """The parent's levels now, as changes from the base; a new version when they changed.

        Versions are this channel's, shared by every backend and ``Parallel`` call; a worker
        applies any version other than its last, so concurrent calls with different levels
        each run with their own (an update is complete by itself).
        """
        # Read in full once per call (not per batch), as before there were updates: a level
        # assigned to a logger's attribute directly is seen too.
        levels = current_levels()
        with self._levels_lock:
            if levels != self._levels:
                self._levels = levels
                assert self.config.levels is not None  # fixed in __init__
                changes = level_changes(self.config.levels, levels)
                self._levels_update = (self._levels_update[0] + 1, changes, levels[1])
            return self._levels_update

    def _heard(self, exits: Sequence[WorkerExit]) -> bool:
        self.crashes.add(exits)
        return True

    def note_breaks(self, executor: object) -> None:
        """Have loky's ``TerminatedWorkerError`` name the dead workers (see ``_crash``)."""
        _joblib_compat.note_when_broken(executor, self._notes, _crash.add_notes, _crash.report_failure)

    def _notes(self, exit_codes: Callable[[float], dict[int, int]], functions: list[Any]) -> Sequence[str]:
        tasks: dict[int, _crash.Task] = {}
        for function in functions:
            # Each call item is partial(run_batch, levels, task_id, batch) (LogexecBackend).
            arguments: tuple[Any, ...] = getattr(function, "args", ())
            if getattr(function, "func", None) is run_batch and len(arguments) == 3:
                tasks[arguments[1]] = _first_call(arguments[2])
        return self.crashes.make_notes(exit_codes, tasks)

    def next_task_id(self) -> int:
        return next(self._task_ids)  # itertools.count is atomic under the GIL

    def forget_when_done(self, future: Future[Any], task_id: int) -> None:
        """Drop the task's route once its future is done (its records are handled by then)."""
        future.add_done_callback(ForgetWhenDone(self.dispatcher, task_id))

    def serve(self, executor: object) -> None:
        """Follow ``executor``: stop the listener once loky has dropped it (see the docstring).

        Call through the module's ``serve``, which holds the lock.
        """
        if self._served is not None and self._served() is executor:
            return
        token = object()
        self._served, self._token = weakref.ref(executor), token
        finalizer = weakref.finalize(executor, _executor_dropped, self, token)
        # At interpreter exit the listener module's own hook stops the listener, after the
        # stdlib and loky have joined their workers.
        finalizer.atexit = False

    def is_serving(self, token: object) -> bool:
        return self._token is token


# The channel of this process, made on first use. An RLock because a finalizer may run
# (garbage collection) on a thread that holds it; _configuring counts the configure() calls
# in progress, during which loky may drop an executor only to make the next one with our
# config, so the channel must stay.
_lock = threading.RLock()
_channel: Channel | None = None
_configuring = 0


@contextmanager
def configuring() -> Iterator[Channel]:
    """The channel, kept alive while the caller configures loky's executor with it."""
    global _channel, _configuring
    with _lock:
        if _channel is None:
            _channel = Channel()
        _configuring += 1
        channel = _channel
    try:
        yield channel
    finally:
        with _lock:
            _configuring -= 1


def serve(channel: Channel, executor: object) -> None:
    """Make ``channel`` follow ``executor``, the pool loky returned to a configure() call."""
    with _lock:
        channel.serve(executor)


def stop() -> None:
    """Stop this process's channel now, if there is one; the next configure() makes a new one.

    Only once loky's executor has been shut down (its workers joined): for tests, and for
    programs that want no thread left behind before they fork.
    """
    global _channel
    with _lock:
        channel, _channel = _channel, None
    if channel is not None:
        channel.listener.stop()


def _executor_dropped(channel: Channel, token: object) -> None:
    # Runs wherever garbage collection ran, possibly on one of loky's threads while another
    # thread holds _lock and waits for that thread: take no lock here, hand over instead.
    threading.Thread(
        target=_stop_if_unused, args=(channel, token), name="logexec-joblib-stop", daemon=True
    ).start()


def _stop_if_unused(channel: Channel, token: object) -> None:
    global _channel
    with _lock:
        if _configuring or _channel is not channel or not channel.is_serving(token):
            return  # a newer logexec executor uses the channel
        _channel = None
    # loky shut the executor down (joining its workers) before dropping it, so every
    # connection ends and the listener drains to the end.
    channel.listener.stop()


def _reset_after_fork_in_child() -> None:
    # A child forked from this process must not inherit a lock held at the fork, nor use
    # the parent's listener (whose thread did not survive the fork).
    global _lock, _channel, _configuring
    _lock = threading.RLock()
    _channel = None
    _configuring = 0


if hasattr(os, "register_at_fork"):  # no fork, hence no hook, on Windows
    os.register_at_fork(after_in_child=_reset_after_fork_in_child)


def _first_call(batch: Any) -> _crash.Task:
    """The first call of a joblib batch (its ``items``: (function, args, kwargs) each)."""
    items = getattr(batch, "items", None)
    if isinstance(items, list) and items and isinstance(items[0], tuple) and len(items[0]) == 3:
        function, args, kwargs = items[0]
        if callable(function) and isinstance(args, (tuple, list)) and isinstance(kwargs, dict):
            return function, args, kwargs
    return batch, (), {}


def worker_initializer() -> Any:
    """The initializer loky runs in each new worker: logexec's, chaining the user's."""
    return initialize
