"""A ``logexec.Pool`` worker that dies abruptly is reported, named: the Pool's crash notes.

The stdlib's ``multiprocessing.Pool`` says nothing when a worker dies: it starts another,
and the task the dead one ran never completes (its ``get()`` waits for its timeout, or for
ever). Having no exception to carry notes (as ``BrokenProcessPool`` does for the executor),
the Pool logs them, once per dead worker, on the "logexec" logger at ERROR::

    logexec: worker 4242 was killed by signal SIGKILL (9)
      running: app.jobs.resize('big.png', width=800)
      its last 3 records (oldest first):
        ...
      logexec.Pool: that task will never complete, as with multiprocessing.Pool ...

Two facts make a report, and they arrive on two threads in either order: how the worker
ended (its exit code) and its last records (``WorkerExit``, from the listener once its
connection has ended). The second to arrive makes the report.

The exit code is read only where the pool itself reads it: after the pool's own ``join()``
of that worker (``ReportingProcess``). Polling it from another thread races that join; under
forkserver the loser of the race reads EOF from the sentinel and records exit code 255.

Not reported: exit code 0 (``maxtasksperchild``, ``close()``), and SIGTERM once the pool is
terminating (``terminate()``, a dropped pool's finalizer, interpreter exit) since that is
how the pool stops its workers. A SIGTERM from elsewhere is reported. After
``MAX_REPORTS`` reports a pool counts the rest and says how many at its end (a failing
``initializer`` makes the stdlib pool restart workers for ever, each dying at once).
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .._channel import WorkerExit, report
from .._crash import MapCall, Task, worker_note

# Detailed reports per pool; the deaths after these are counted, and the count reported.
MAX_REPORTS = 10
# Exits heard of, and exit codes read, kept while waiting for the other half (by pid).
MAX_WAITING = 256

_ENDING = (
    "  logexec.Pool: the task it ran (if any) will never complete, as with "
    "multiprocessing.Pool (use get(timeout=...)); the pool started a replacement worker"
)


class Deaths:
    """Pairs each pool worker's exit code with its last records, and reports abrupt deaths.

    ``tasks`` is the pool's pending tasks by task id, read (not copied) when a report is
    made: a dead worker's last task is named only if it is still pending then.
    """

    def __init__(self, tasks: Mapping[int, Task | MapCall]) -> None:
        self._tasks = tasks
        self._lock = threading.Lock()
        self._heard: collections.OrderedDict[int, WorkerExit] = collections.OrderedDict()
        # pid -> exit code, or None for a worker that ended as it should (nothing to report).
        self._codes: collections.OrderedDict[int, int | None] = collections.OrderedDict()
        self._reported = 0
        self._unreported = 0
        # Set once the pool itself stops its workers with SIGTERM.
        self.terminating = False

    def heard(self, exits: Sequence[WorkerExit]) -> bool:
        """``on_worker_exit`` of the pool's channel (the listener thread)."""
        ready: list[tuple[int, int, WorkerExit]] = []
        with self._lock:
            for worker_exit in exits:
                pid = worker_exit.pid
                if pid in self._codes:
                    code = self._codes.pop(pid)
                    if code is not None:
                        ready.append((pid, code, worker_exit))
                else:
                    _keep(self._heard, pid, worker_exit)
        for pid, code, worker_exit in ready:
            self._report(pid, code, worker_exit)
        return True

    def joined(self, pid: int, exit_code: int) -> None:
        """The pool has joined its worker ``pid``, which ended with ``exit_code``."""
        abrupt = exit_code != 0 and not (exit_code == -signal.SIGTERM and self.terminating)
        with self._lock:
            worker_exit = self._heard.pop(pid, None)
            if worker_exit is None:
                _keep(self._codes, pid, exit_code if abrupt else None)
                return
        if abrupt:
            self._report(pid, exit_code, worker_exit)

    def finish(self) -> None:
        """At the pool's end: report the deaths whose records never came, and the count."""
        with self._lock:
            unheard = [(pid, code) for pid, code in self._codes.items() if code is not None]
            self._codes.clear()
            self._heard.clear()
        for pid, code in unheard:
            self._report(pid, code, None)
        with self._lock:
            unreported, self._unreported = self._unreported, 0
        if unreported:
            report(
                logging.ERROR,
                "logexec.Pool: %d more workers died abruptly after the first %d reported above",
                unreported,
                MAX_REPORTS,
            )

    def _report(self, pid: int, exit_code: int, worker_exit: WorkerExit | None) -> None:
        with self._lock:
            if self._reported >= MAX_REPORTS:
                self._unreported += 1
                return
            self._reported += 1
        try:
            note = worker_note(pid, exit_code, worker_exit, self._tasks)
        except Exception as error:  # a report must not break the thread that makes it
            report(logging.ERROR, "logexec.Pool: worker %d died; its report failed: %r", pid, error)
            return
        report(logging.ERROR, "%s\n%s", note, _ENDING)


def _keep(waiting: collections.OrderedDict[int, Any], pid: int, value: Any) -> None:
    waiting.pop(pid, None)  # a reused pid goes to the end
    waiting[pid] = value
    while len(waiting) > MAX_WAITING:
        waiting.popitem(last=False)


class _JoinHook:
    """Held by a worker's process object: tells ``Deaths`` once the pool has joined it."""

    __slots__ = ("deaths", "told")

    def __init__(self, deaths: Deaths) -> None:
        self.deaths = deaths
        self.told = False


_subclasses: dict[type, type] = {}
_subclasses_lock = threading.Lock()


def reporting_process(process_class: Any, deaths: Deaths, *args: Any, **kwargs: Any) -> Any:
    """An instance of ``process_class`` whose ``join()`` tells ``deaths`` the exit code.

    A context whose ``Process`` is not a class (a factory) gets its own process, unreported.
    """
    if not isinstance(process_class, type):
        return process_class(*args, **kwargs)
    with _subclasses_lock:
        subclass = _subclasses.get(process_class)
        if subclass is None:
            members = {**_MEMBERS, "_logexec_base": process_class}
            subclass = type(process_class.__name__, (process_class,), members)
            subclass.__qualname__ = f"logexec.{process_class.__qualname__}"
            _subclasses[process_class] = subclass
    process = subclass(*args, **kwargs)
    process._logexec_join_hook = _JoinHook(deaths)
    return process


def _join(self: Any, timeout: float | None = None) -> None:
    self._logexec_base.join(self, timeout)
    hook: _JoinHook | None = self.__dict__.get("_logexec_join_hook")
    # Only a join without a timeout is known to have ended the process (and read its exit
    # code on this thread, or seen it read); a timed-out one must not poll it again here.
    if hook is None or hook.told or timeout is not None:
        return
    hook.told = True
    try:
        exit_code = self.exitcode
        if exit_code is not None and self.pid is not None:
            hook.deaths.joined(self.pid, exit_code)
    except Exception as error:  # this runs on the pool's own worker-handling thread
        report(logging.ERROR, "logexec.Pool: a worker's end could not be noted: %r", error)


def _reduce(self: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    # Under spawn and forkserver the process object is pickled for the child: it arrives as
    # its own class (this subclass is made at run time, so the child could not import it),
    # without the hook (the child has no use for it).
    state = {key: value for key, value in vars(self).items() if key != "_logexec_join_hook"}
    return _rebuild, (self._logexec_base, state)


def _rebuild(process_class: Any, state: dict[str, Any]) -> Any:
    process = process_class.__new__(process_class)
    process.__dict__.update(state)
    return process


_MEMBERS: dict[str, Any] = {"join": _join, "__reduce__": _reduce, "__module__": __name__}
