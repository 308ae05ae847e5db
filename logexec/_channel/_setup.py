"""What runs in each worker around the user's code: the set-up, the handler, the task bracket.

``initialize`` is the pool's initializer (logexec's, before the user's): it connects the
worker's end of the channel (``_worker.Channel``), clears every handler and filter the worker
inherited, puts the one ``WorkerHandler`` on root and mirrors the parent's levels.
``run_task`` brackets each task: it applies newer levels, runs the task under its task id,
and returns only once the parent has handled every record the task logged (the barrier).

A record carries the task id only if it was logged in the task's context: by the task's
thread, an asyncio task it runs, or a thread it starts in its context (``asyncio.to_thread``,
``copy_context().run``, and from 3.14 a thread that inherits its starter's context), and
only while that task runs. Records of other threads (a heartbeat, a thread an earlier task
left running) carry none, so the parent dispatches them in no submitter's context: where
in-process a thread would not see the caller's context variables, the parent's filters do
not see them either.
"""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from typing import Any

from .. import _compat, _context
from . import _framing
from ._worker import Channel, Levels, LevelsUpdate, WorkerConfig, current_levels, level_changes


class WorkerHandler(logging.handlers.QueueHandler):
    """The only handler on a worker's root logger.

    It is a real ``QueueHandler`` (code that checks for one finds it); its "queue" is the
    worker's private connection and ``prepare`` turns a record into a wire frame.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__(channel)  # type: ignore[arg-type]  # a queue in all but type
        self._channel = channel
        self._told_stderr = False
        channel.fallback = self._to_stderr

    def prepare(self, record: logging.LogRecord) -> Any:
        return _framing.encode_record(record, _task_of_caller(self._channel))

    def emit(self, record: logging.LogRecord) -> None:
        # For callers of emit() itself; log calls take handle() below.
        self._channel.put(_framing.encode_record(record, _task_of_caller(self._channel)), record)

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
        # _task_of_caller inlined: this runs on every log call.
        task_id = _TASK.get()
        if task_id != channel.task_id:
            task_id = None
        try:
            frame = _framing.encode_record(record, task_id)
        except Exception as error:
            self._encode_again(record, error, task_id)
            return True
        channel.put(frame, record)
        return True

    def _encode_again(self, record: logging.LogRecord, error: Exception, task_id: int | None) -> None:
        """After ``encode_record`` raised, which it is built never to do by itself."""
        try:
            frame = _framing.encode_record(record, task_id)
        except Exception:
            # A fault of ours: say so the way logging does (a traceback on stderr), and
            # keep the record on stderr too.
            self.handleError(record)
            self._to_stderr(record)
            return
        # Encoding is deterministic, so what raised the first time was a signal handler
        # (a timeout that raises): the record goes out whole, and the task gets its
        # exception, as it would have without logexec.
        self._channel.put(frame, record)
        raise error

    def _to_stderr(self, record: logging.LogRecord) -> None:
        # The parent cannot be reached. The record must not vanish, so it goes to this
        # worker's stderr, whole, after a one-time notice that says why.
        stream = sys.stderr
        if stream is None:
            return
        try:
            if not self._told_stderr:
                self._told_stderr = True
                reason = self._channel.closed_reason
                if reason:
                    why = f"the parent closed its log connection: {reason}"
                else:
                    why = "cannot reach the parent process (it exited or its listener stopped)"
                stream.write(
                    f"logexec: worker {os.getpid()} {why}; this worker's records now go to its stderr\n"
                )
            stream.write(f"{_STDERR_FORMATTER.format(record)}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


_STDERR_FORMATTER = logging.Formatter(logging.BASIC_FORMAT)

# The task whose context this is, set by run_task in the task's thread. A context variable,
# not the process's current task: a thread that does not run in the task's context (a
# heartbeat, a thread an earlier task left running) must not take the id of whichever task
# runs meanwhile (issue 25).
_TASK: contextvars.ContextVar[int | None] = contextvars.ContextVar("logexec_task", default=None)


def _task_of_caller(channel: Channel) -> int | None:
    """The id of the task running now, if the caller is in its context; else None."""
    task_id = _TASK.get()
    # A thread started in a task's context keeps it after the task returns, and a process
    # forked by a task keeps it too (its channel has no task): neither is that task's now.
    return task_id if task_id == channel.task_id else None


# The channel of this worker process, set by initialize().
_channel: Channel | None = None
# The version of the parent's levels this worker applied last (see LevelsUpdate; -1: none,
# and the levels it started with are not the base), and the loggers whose level
# apply_levels set, so that a level the parent unsets is unset here too.
_levels_version = 0
_levels_set: set[str] = set()
# The base levels (WorkerConfig.levels) that every LevelsUpdate is relative to, and the
# loggers the last update applied changed: one it no longer names goes back to its base.
_base_levels: dict[str, int] = {}
_levels_changed: set[str] = set()


def initialize(
    config: WorkerConfig,
    user_initializer: Callable[..., object] | None,
    user_initargs: tuple[Any, ...],
) -> None:
    """Worker initializer: connect, reset logging, then run the user's initializer."""
    global _channel, _levels_version
    channel = Channel(config)
    channel.connect()
    # Under fork this thread's context came from the thread that forked, which may be a
    # task of another pool's worker: that task id is not one of ours.
    _TASK.set(None)
    _reset_logging()
    # A worker forked by a worker (a pool made in a task) inherits its level bookkeeping,
    # which belongs to the other pool: its versions would hide this pool's first updates.
    _levels_set.clear()
    _levels_changed.clear()
    _base_levels.clear()
    if config.pickled and config.start_levels is not None:
        start = config.start_levels
        apply_levels(start)
    else:
        # Under fork the levels came with the process; remember which were set, so that
        # an update that unsets one unsets it here too.
        start = current_levels()
        _levels_set.update(start[0])
    base = start if config.levels is None else config.levels
    _base_levels.update(base[0])
    # The levels now may differ from the base (changed since the pool was made): those
    # loggers are the ones the first update must put right, whatever it names. And if they
    # differ at all, whichever version comes first, version 0 included, is applied.
    _levels_changed.update(level_changes(base, start))
    _levels_version = 0 if start == base else -1
    logging.getLogger().addHandler(WorkerHandler(channel))
    _channel = channel
    if user_initializer is not None:
        user_initializer(*user_initargs)


def run_task(
    task_id: int,
    propagated: tuple[_context.VarAddress, ...],
    captured: _context.CapturedValues | None,
    levels: LevelsUpdate | None,
    fn: Callable[..., Any],
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Run one task; return only after the parent has handled the task's records."""
    global _levels_version
    channel = _channel
    if channel is None:
        raise RuntimeError(
            "logexec's task wrapper ran in a process that logexec's initializer did not set "
            "up; submit tasks through LoggingProcessPoolExecutor"
        )
    # Any other version, older ones too: an update is complete by itself, and the joblib
    # front's concurrent calls may each carry their own.
    if levels is not None and levels[0] != _levels_version:
        _levels_version = levels[0]
        _apply_update(levels)
    if logging.getLoggerClass() not in _PLAIN_CLASSES:
        # Unpickling this task's function imported a module that set a Logger class.
        _neutralize_logger_classes()
    channel.begin_task(task_id)
    # Set in this thread's own context, so that call_with_values's new context copies it.
    token = _TASK.set(task_id)
    try:
        if captured is not None:
            return _context.call_with_values(propagated, captured, fn, *args, **kwargs)
        return fn(*args, **kwargs)
    finally:
        _TASK.reset(token)
        channel.end_task()


def _after_fork_in_child() -> None:
    if _channel is not None:
        _channel.after_fork_in_child()


if hasattr(os, "register_at_fork"):  # no fork, hence no hook, on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)


# The handlers _reset_logging took off the inherited loggers, alive for the worker's life.
_dropped_handlers: list[logging.Handler] = []


def _reset_logging() -> None:
    # Under fork every logger arrives with the parent's handlers, filters and disabled flags;
    # writing through them would put a second writer on the parent's files, and filtering
    # here would apply them twice. The parent applies its own configuration on dispatch.
    for logger in _compat.existing_loggers():
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            # Kept, neither closed nor flushed: collecting an inherited FileHandler would warn
            # "unclosed file" under -X dev, and its stream's finalizer (as would close()) flushes
            # a buffer the parent also holds, writing those bytes twice. A forked worker ends
            # with os._exit, so they are never finalized, as in the stdlib's pool.
            _dropped_handlers.append(handler)
        for log_filter in list(logger.filters):
            logger.removeFilter(log_filter)
        logger.propagate = True
        # Under fork a logger arrives disabled if it was at the fork; the parent may enable
        # it later, and nothing tells the worker. The parent's flags decide at dispatch.
        logger.disabled = False
    _neutralize_logger_classes()


def apply_levels(levels: Levels) -> None:
    """Mirror the parent's levels; a logger the parent no longer sets goes back to NOTSET."""
    logger_levels, disabled = levels
    for name in _levels_set - set(logger_levels):
        logging.getLogger(name or None).setLevel(logging.NOTSET)
    for name, level in logger_levels.items():
        logging.getLogger(name or None).setLevel(level)
    _levels_set.clear()
    _levels_set.update(logger_levels)
    logging.disable(disabled)


def _apply_update(update: LevelsUpdate) -> None:
    """Bring the levels to the parent's as of the update: the base, with its changes."""
    _, changes, disabled = update
    # Only the loggers this update or the last one names: the rest are at their base.
    for name in _levels_changed.difference(changes):
        logging.getLogger(name or None).setLevel(_base_levels.get(name, logging.NOTSET))
    for name, level in changes.items():
        logging.getLogger(name or None).setLevel(level)
    _levels_changed.clear()
    _levels_changed.update(changes)
    logging.disable(disabled)


# Logger classes whose handle/callHandlers are logging's own: the worker's records take the
# standard path to the root handler, and the class's own rules apply once, in the parent.
_PLAIN_CLASSES: set[type[logging.Logger]] = {logging.Logger, logging.RootLogger}
_PLAIN_VERSIONS: dict[type[logging.Logger], type[logging.Logger]] = {}


def _plain_version(cls: type[logging.Logger]) -> type[logging.Logger]:
    """``cls`` with logging's own ``handle`` and ``callHandlers``: everything else kept."""
    if cls.handle is logging.Logger.handle and cls.callHandlers is logging.Logger.callHandlers:
        _PLAIN_CLASSES.add(cls)
        return cls
    plain = _PLAIN_VERSIONS.get(cls)
    if plain is None:
        namespace = {
            "handle": logging.Logger.handle,
            "callHandlers": logging.Logger.callHandlers,
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
        }
        plain = _PLAIN_VERSIONS[cls] = type(cls.__name__, (cls,), namespace)
        _PLAIN_CLASSES.add(plain)
    return plain


def _neutralize_logger_classes() -> None:
    # A Logger subclass that overrides handle() (to enrich, route or drop records) would
    # run here and again in the parent, whose dispatch calls the parent logger's handle().
    # Run it once, in the parent, where the configuration lives: here, each logger keeps
    # its class in all but those two methods (isinstance and its other methods still hold).
    for logger in _compat.existing_loggers():
        cls = type(logger)
        if cls not in _PLAIN_CLASSES:
            try:
                logger.__class__ = _plain_version(cls)
            except TypeError:
                pass  # a class whose layout forbids it (__slots__): leave it as it is
    logger_class = logging.getLoggerClass()
    if logger_class not in _PLAIN_CLASSES:
        logging.setLoggerClass(_plain_version(logger_class))
