"""What runs in each worker around the user's code: the set-up, the handler, the task bracket.

``initialize`` is the pool's initializer (logexec's, before the user's): it connects the
worker's end of the channel (``_worker.Channel``), clears every handler and filter the worker
inherited, puts the one ``WorkerHandler`` on root and mirrors the parent's levels
(``WorkerLevels``, which the interpreter front uses too). ``run_task`` brackets each task:
it applies newer levels, runs the task under its task id, and returns only once the parent
has handled every record the task logged (the barrier).

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


# The channel of this worker process and its levels, set by initialize(). A worker forked
# by a worker (a pool made in a task) gets levels of its own there: those it inherits
# belong to the other pool, whose versions would hide this pool's first updates.
_channel: Channel | None = None
_levels: WorkerLevels | None = None


class WorkerLevels:
    """A worker's mirror of the parent's levels: where it started, and each update after.

    The one place a worker applies levels, for every front (the interpreter front too).
    ``base`` is what every ``LevelsUpdate`` is relative to (``WorkerConfig.levels``; None:
    the start levels serve). ``start``, the parent's levels when the worker started, are
    applied at once; None keeps the levels the worker has (under fork, inherited).
    ``apply(update)`` applies any version other than the one applied last, older ones too:
    an update is complete against the base, and a task runs at the levels in force when it
    was submitted (the joblib front's concurrent calls may each carry their own).
    """

    __slots__ = ("_base", "_base_disabled", "_changed", "version")

    def __init__(self, base: Levels | None, start: Levels | None) -> None:
        if start is None:
            start = current_levels()
        else:
            for name, level in start[0].items():
                logging.getLogger(name or None).setLevel(level)
            logging.disable(start[1])
        if base is None:
            base = start
        self._base = dict(base[0])
        self._base_disabled = base[1]
        # The loggers the last update left off the base: one the next update no longer
        # names goes back to its base. The levels now may differ from the base (changed
        # since the pool was made): those loggers are the ones the first update must put
        # right, whatever it names.
        self._changed = set(level_changes(base, start))
        # The version applied last. If the start differs from the base at all, whichever
        # version comes first, version 0 ("the base") included, is applied.
        self.version = 0 if start == base else -1

    def apply(self, update: LevelsUpdate | None) -> None:
        """Bring the levels to the parent's as of ``update`` (None: the base's)."""
        if update is None:
            # The parent is at the base: a worker that started elsewhere (a replacement
            # started while the parent's levels were changed for a while) goes back to it.
            update = (0, {}, self._base_disabled)
        if update[0] == self.version:
            return
        self.version, changes, disabled = update
        # Only the loggers this update or the last one names: the rest are at their base,
        # and setting a level clears every logger's cache, so each costs the whole table.
        for name in self._changed.difference(changes):
            logging.getLogger(name or None).setLevel(self._base.get(name, logging.NOTSET))
        for name, level in changes.items():
            logging.getLogger(name or None).setLevel(level)
        self._changed = set(changes)
        logging.disable(disabled)


def initialize(
    config: WorkerConfig,
    user_initializer: Callable[..., object] | None,
    user_initargs: tuple[Any, ...],
) -> None:
    """Worker initializer: connect, reset logging, then run the user's initializer."""
    global _channel, _levels
    channel = Channel(config)
    channel.connect()
    # Under fork this thread's context came from the thread that forked, which may be a
    # task of another pool's worker: that task id is not one of ours.
    _TASK.set(None)
    _reset_logging()
    # Under fork nothing was pickled: the levels came with the process.
    _levels = WorkerLevels(config.levels, config.start_levels if config.pickled else None)
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
    channel = _channel
    if channel is None or _levels is None:
        raise RuntimeError(
            "logexec's task wrapper ran in a process that logexec's initializer did not set "
            "up; submit tasks through LoggingProcessPoolExecutor"
        )
    _levels.apply(levels)
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
