"""What runs inside each interpreter: the set-up, the handler on root, the task bracket.

Each interpreter has its own ``logging`` (its own root, no handlers), so ``initialize``,
logexec's initializer, puts one ``InterpreterHandler`` on its root and mirrors the main
interpreter's levels; the user's initializer runs after it, so that it can log.

A record travels as ``bytes`` (the record codec of ``logexec._records``) on one
``concurrent.interpreters`` queue shared by every interpreter of the executor. An item on
such a queue stays bound to the interpreter that put it: once that interpreter is closed,
the item reads as ``UNBOUND`` and its data is gone. So nothing may be left unread when an
interpreter closes, and a task may not return before its records are handled. Both are
barriers: ``run_task`` ends with one if anything was logged since the last (a marker on the
records queue, answered by the main interpreter's reader through this interpreter's own
answer queue once everything before it is handled), and an ``atexit`` callback, which runs
when the pool closes the interpreter (after its non-daemon threads are joined), sends a
last one that also says goodbye.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 14):  # mypy checks on 3.11
    raise ImportError("logexec._interp needs CPython 3.14 or newer")
assert sys.version_info >= (3, 14)  # what makes mypy skip the rest (the `if` does not)

import atexit
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.interpreters import Queue, QueueEmpty, QueueFull
from typing import Any

from .. import _context
from .._channel import Levels, LevelsUpdate, WorkerLevels, current_levels
from .._records import encode_values, record_values

# Control items on the records queue are tuples of ints (shareable without pickling); a
# record is bytes.
HELLO = 0
BARRIER = 1
GOODBYE = 2

# Polling: the queues have no blocking wait that wakes on a put, so waiting is polling,
# from a short sleep up to a longer one.
FIRST_DELAY = 0.00002
LAST_DELAY = 0.002


class Link:
    """What each interpreter receives from the executor, pickled into it at its creation.

    ``records``: the queue every interpreter writes to. ``answers``: a queue of answer
    queues, one taken by each interpreter. ``stopped``: never read, only counted; an item
    in it means the reader has stopped, so nothing would read a record put after.
    The main interpreter's levels are taken when the link is pickled, so an interpreter
    mirrors the levels in force at its creation. ``base``: the levels the executor fixed
    when it was made, which every ``LevelsUpdate`` is relative to (see ``_channel``'s
    ``LevelsUpdate``: a task carries only the loggers that differ from them). Both go to
    the channel's ``WorkerLevels``, as a process pool's worker's do.
    """

    def __init__(
        self, records: Queue, answers: Queue, stopped: Queue, base: Levels, levels: Levels | None = None
    ) -> None:
        self.records = records
        self.answers = answers
        self.stopped = stopped
        self.base = base
        self.levels = levels

    def __reduce__(self) -> tuple[Any, ...]:
        return (Link, (self.records, self.answers, self.stopped, self.base, current_levels()))


class _State:
    """This interpreter's end: set up by ``initialize``, one per interpreter."""

    def __init__(self, link: Link, answers: Queue, levels: WorkerLevels) -> None:
        self.records = link.records
        self.stopped = link.stopped
        self.answers = answers
        self.answers_id: int = answers.id
        # The task running now, if any (one at a time per interpreter). A record carries it
        # only if it was logged in that task's context (_TASK), as in the process pool: a
        # plain thread the task started, or one an earlier task left running, logs in no
        # task's context, and its records meet no submitter's values.
        self.task_id: int | None = None
        # Whether anything was put since the last barrier (a flag, not a count: a record
        # put while a barrier is sent is either before its marker or flushed by the next).
        self.dirty = False
        self.barriers = 0
        self.levels = levels
        self.told_stderr = False


_state: _State | None = None
# The task whose context this is: set by run_task in the task's thread, inherited by what it
# runs in that context (asyncio, copy_context().run, and threads where they inherit it).
_TASK: contextvars.ContextVar[int | None] = contextvars.ContextVar("logexec_interpreter_task", default=None)


class InterpreterHandler(logging.Handler):
    """The only handler on an interpreter's root logger: each record onto the records queue."""

    def __init__(self, state: _State) -> None:
        super().__init__()
        self._state = state

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)

    def handle(self, record: logging.LogRecord) -> Any:
        # Handler.handle takes the handler's lock around emit; the queue has its own lock,
        # and this runs on every log call, so the lock is skipped.
        if self.filters:
            verdict: Any = self.filter(record)
            if not verdict:
                return verdict
            if isinstance(verdict, logging.LogRecord):
                record = verdict
        state = self._state
        try:
            task_id = _TASK.get()
            if task_id != state.task_id:
                task_id = None  # a thread that is not the running task's
            payload = encode_values(record_values(record, task_id))
        except Exception:
            self.handleError(record)
            return True
        if state.stopped.qsize():
            self._to_stderr(record)
            return True
        if not _put(state, payload):
            self._to_stderr(record)
            return True
        state.dirty = True
        return True

    def _to_stderr(self, record: logging.LogRecord) -> None:
        # The main interpreter's reader has stopped: the record must not vanish.
        stream = sys.stderr
        if stream is None:
            return
        try:
            if not self._state.told_stderr:
                self._state.told_stderr = True
                stream.write(
                    "logexec: the executor's reader has stopped; this interpreter's records "
                    "now go to its stderr\n"
                )
            stream.write(f"{_STDERR_FORMATTER.format(record)}\n")
            stream.flush()
        except Exception:
            self.handleError(record)


_STDERR_FORMATTER = logging.Formatter(logging.BASIC_FORMAT)


def initialize(
    link: Link, user_initializer: Callable[..., object] | None, user_initargs: tuple[Any, ...]
) -> None:
    """The pool's initializer, in each new interpreter: set up, then the user's initializer."""
    global _state
    try:
        answers: Queue = link.answers.get_nowait()  # type: ignore[assignment]  # a queue put there
    except QueueEmpty as error:
        raise RuntimeError(
            "logexec: no answer queue was left for a new interpreter (more interpreters than "
            "the executor's max_workers?)"
        ) from error
    state = _State(link, answers, WorkerLevels(link.base, link.levels))
    logging.getLogger().addHandler(InterpreterHandler(state))
    _state = state
    _put(state, (HELLO, state.answers_id))
    # Runs when the pool closes this interpreter, after its non-daemon threads are joined.
    atexit.register(_goodbye, state)
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
    """Run one task; return (or raise) only after the main interpreter handled its records."""
    state = _state
    if state is None:
        raise RuntimeError(
            "logexec's task wrapper ran in an interpreter that logexec's initializer did not "
            "set up; submit tasks through LoggingInterpreterPoolExecutor"
        )
    state.levels.apply(levels)
    state.task_id = task_id
    token = _TASK.set(task_id)
    try:
        if captured is not None:
            return _context.call_with_values(propagated, captured, fn, *args, **kwargs)
        return fn(*args, **kwargs)
    finally:
        _TASK.reset(token)
        state.task_id = None
        if state.dirty:
            _barrier(state, BARRIER)


def _goodbye(state: _State) -> None:
    _barrier(state, GOODBYE)


def _barrier(state: _State, kind: int) -> None:
    """Put a marker after everything this interpreter put, and wait until it is answered."""
    if state.stopped.qsize():
        return
    state.dirty = False
    state.barriers += 1
    number = state.barriers
    if not _put(state, (kind, state.answers_id, number)):
        return
    get = state.answers.get_nowait
    delay = FIRST_DELAY
    while True:
        try:
            answer = get()
        except QueueEmpty:
            if state.stopped.qsize():
                return  # the reader stopped: nothing will answer
            time.sleep(delay)
            delay = min(delay * 2, LAST_DELAY)
            continue
        if answer == number:
            return


def _put(state: _State, item: object) -> bool:
    """Put ``item`` on the records queue, waiting while it is full; False if the reader stopped."""
    put = state.records.put_nowait
    delay = FIRST_DELAY
    while True:
        try:
            put(item)
            return True
        except QueueFull:  # the reader is behind: wait for room (a slow parent holds us back)
            if state.stopped.qsize():
                return False
            time.sleep(delay)
            delay = min(delay * 2, LAST_DELAY)
