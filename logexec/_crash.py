"""What a broken pool says: the notes that name each dead worker, how it ended, and what it did.

The stdlib's ``BrokenProcessPool`` says only that "a process in the process pool was
terminated abruptly". The parent knows more: the listener hands over each dead worker's
last records and the task id of the last one (``WorkerExit``), and the pool knows each
worker's exit code and its pending work. ``CrashLog`` gathers the first as the listener
hears of them; when the pool breaks, ``notes`` turns both into one note per dead worker,
added to the exception (PEP 678 ``add_note``; before 3.11, appended to its message)::

    logexec: worker 4242 was killed by signal SIGKILL (9)
      running: tests.crash_tasks.log_then_die('SIGKILL', 'xxxx...xxxx', count=3)
      its last 3 records (oldest first):
        WARNING tests.crash: step 0 of 3 before SIGKILL
        ...

Nothing here runs per record: the listener keeps the last records as they came, and they
are formatted only when a pool breaks.
"""

from __future__ import annotations

import logging
import reprlib
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ._channel import WorkerExit, report

# At most this many record lines per worker, and this many characters of them in all.
MAX_RECORD_LINES = 10
MAX_RECORD_CHARS = 4096
# One record's line is cut here, so that one huge message cannot take the whole budget.
MAX_LINE_CHARS = 500
# The task's arguments, as shown: each cut by reprlib, all together at most this long.
MAX_ARGS_CHARS = 200
# How long the pool's breaking waits for the listener to hear of a dead worker's end (its
# last records are read by then). A worker that died before it connected is never heard
# of: the note then says its records are unknown.
LISTENER_WAIT_SECONDS = 2.0
# After the first dead worker, how long the others may take to be seen dead too: workers
# killed together (the OOM killer, a kill of the process group) end a moment apart.
SETTLE_SECONDS = 0.25

# Exits kept for the notes, the newest: workers that retire normally (max_tasks_per_child,
# loky's idle timeout) end too, and a long-lived pool must not keep every one of them.
MAX_EXITS_KEPT = 256

_REPR = reprlib.Repr()
_REPR.maxstring = 40
_REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4

# A task as the pool holds it: its function, positional and keyword arguments (the user's).
Task = tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any]]


class MapCall:
    """A task that calls ``fn`` on many items (a Pool's ``map``, ``imap``): named as such."""

    __slots__ = ("fn", "items", "method")

    def __init__(self, method: str, fn: Callable[..., Any], items: Sequence[Any] | None) -> None:
        self.method = method
        self.fn = fn
        self.items = items  # None: not known (an iterator, consumed as the pool goes)

    def describe(self) -> str:
        """``Pool.map of module.qualname over 1000 items: [0, 1, 2, 3, ...]``."""
        name = _name_of(self.fn)
        if self.items is None:
            return f"Pool.{self.method} of {name}"
        count = len(self.items)
        noun = "item" if count == 1 else "items"
        return f"Pool.{self.method} of {name} over {count} {noun}: {_cut(_safe_repr(self.items))}"


class CrashLog:
    """The exits the listener has heard of, by pid; and the notes of the pool's breaking."""

    def __init__(self) -> None:
        self._exits: dict[int, WorkerExit] = {}
        self._heard = threading.Condition(threading.Lock())
        # Set when the pool breaks: a later submit's BrokenProcessPool carries them too.
        self.notes: tuple[str, ...] = ()

    def add(self, exits: Iterable[WorkerExit]) -> None:
        """On the listener thread: remember each exit (told again is harmless)."""
        with self._heard:
            for worker_exit in exits:
                self._exits.pop(worker_exit.pid, None)  # a reused pid goes to the end
                self._exits[worker_exit.pid] = worker_exit
            while len(self._exits) > MAX_EXITS_KEPT:
                del self._exits[next(iter(self._exits))]  # dicts keep insertion order
            self._heard.notify_all()

    def wait_for(self, pids: Iterable[int], timeout: float) -> dict[int, WorkerExit]:
        """The exits of ``pids`` heard within ``timeout`` seconds (those heard of, if not all)."""
        wanted = set(pids)
        deadline = time.monotonic() + timeout
        with self._heard:
            while not wanted <= self._exits.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._heard.wait(left)
            return {pid: self._exits[pid] for pid in wanted if pid in self._exits}

    def make_notes(
        self, exit_codes: Callable[[float], Mapping[int, int]], tasks: Mapping[int, Task]
    ) -> tuple[str, ...]:
        """One note per dead worker, waiting (bounded) for the listener to hear of each.

        ``exit_codes(settle)`` reads the dead workers' exit codes by pid; it is read again,
        allowing ``SETTLE_SECONDS`` for more to end, so that workers killed together are
        all named though the pool noticed one first. ``tasks``: the pool's pending tasks by task id.
        """
        codes = dict(exit_codes(0.0))
        heard = self.wait_for(codes, LISTENER_WAIT_SECONDS)
        later = {pid: code for pid, code in exit_codes(SETTLE_SECONDS).items() if pid not in codes}
        if later:
            codes.update(later)
            heard.update(self.wait_for(later, LISTENER_WAIT_SECONDS))
        notes = tuple(worker_note(pid, code, heard.get(pid), tasks) for pid, code in sorted(codes.items()))
        self.notes = notes
        return notes


def worker_note(
    pid: int, exit_code: int, worker_exit: WorkerExit | None, tasks: Mapping[int, Task | MapCall]
) -> str:
    """The note for one dead worker: how it ended, its task, its last records."""
    lines = [f"logexec: worker {pid} {describe_exit(exit_code)}"]
    if worker_exit is None:
        lines.append("  its task and last records are unknown: its log connection had not ended")
        return "\n".join(lines)
    task = tasks.get(worker_exit.last_task) if worker_exit.last_task is not None else None
    if task is not None:
        lines.append(f"  running: {task.describe() if isinstance(task, MapCall) else describe_call(*task)}")
    else:
        lines.append("  running: no task that had logged (it was idle, or its task had not logged yet)")
    records = record_lines(worker_exit.records)
    if records:
        noun = "record" if len(records) == 1 else "records"
        lines.append(f"  its last {len(records)} {noun} (oldest first):")
        lines.extend(f"    {line}" for line in records)
    else:
        lines.append("  it had logged nothing")
    if worker_exit.cut_off:
        lines.append(f"  it died while writing a record ({worker_exit.cut_off} bytes of it, discarded)")
    return "\n".join(lines)


def lost_task_note(call: Task | None, records: Sequence[logging.LogRecord]) -> str:
    """The note for a task whose workers died (Dask's ``KilledWorker``, which names them)."""
    lines = ["logexec: the task's worker died"]
    if call is not None:
        lines.append(f"  task: {describe_call(*call)}")
    shown = record_lines(list(records))
    if shown:
        pids = sorted({record.process for record in records if record.process is not None})
        where = f", from worker pid {', '.join(map(str, pids))}" if pids else ""
        noun = "record" if len(shown) == 1 else "records"
        lines.append(f"  its last {len(shown)} {noun} (oldest first{where}):")
        lines.extend(f"    {line}" for line in shown)
    else:
        lines.append("  it had logged nothing")
    return "\n".join(lines)


def describe_exit(exit_code: int) -> str:
    """'was killed by signal SIGKILL (9)', or 'exited with code 3'."""
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = "an unknown signal"
        return f"was killed by signal {name} ({-exit_code})"
    return f"exited with code {exit_code}"


def describe_call(fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
    """``module.qualname(args...)``, the arguments cut short."""
    parts = [_safe_repr(value) for value in args]
    parts.extend(f"{key}={_safe_repr(value)}" for key, value in kwargs.items())
    return f"{_name_of(fn)}({_cut(', '.join(parts))})"


def _cut(shown: str) -> str:
    return shown if len(shown) <= MAX_ARGS_CHARS else shown[: MAX_ARGS_CHARS - 3] + "..."


def _name_of(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module else str(name)


def record_lines(records: Sequence[logging.LogRecord]) -> list[str]:
    """``LEVEL logger: message`` per record, the newest kept within the line and size bounds."""
    lines: list[str] = []
    size = 0
    for record in reversed(records[-MAX_RECORD_LINES:]):
        line = _record_line(record)
        if size + len(line) > MAX_RECORD_CHARS:
            break
        size += len(line) + 1
        lines.append(line)
    lines.reverse()
    return lines


def _record_line(record: logging.LogRecord) -> str:
    try:
        message = record.getMessage()
    except Exception:
        message = f"{record.msg!r} % {record.args!r}"  # the args do not fit the template
    line = f"{record.levelname} {record.name}: {message}".replace("\n", "\\n")
    if len(line) > MAX_LINE_CHARS:
        line = line[: MAX_LINE_CHARS - 3] + "..."
    return line


def _safe_repr(value: object) -> str:
    try:
        return _REPR.repr(value)
    except Exception:
        return f"<{type(value).__qualname__} object>"


def add_notes(error: BaseException, notes: Sequence[str]) -> None:
    """Add ``notes`` to ``error``: PEP 678 notes from 3.11, its message before."""
    if not notes:
        return
    if sys.version_info >= (3, 11):
        for note in notes:
            error.add_note(note)
    else:
        head = str(error.args[0]) if error.args else ""
        error.args = ("\n".join([head, *notes]), *error.args[1:])


def report_failure(error: BaseException) -> None:
    """The notes could not be made: say so (the pool breaks as the stdlib's, without them)."""
    report(logging.ERROR, "logexec: the notes of a broken pool could not be made", exc_info=error)
