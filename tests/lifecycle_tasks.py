"""Task functions for the lifecycle and robustness tests. Module-level: spawn imports them."""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import signal
import time
from typing import Any

log = logging.getLogger("tests.lifecycle")


def log_numbered(task: int, n: int, delay: float = 0.0) -> int:
    """Sleep ``delay`` seconds, then log ``n`` records numbered within ``task``."""
    if delay:
        time.sleep(delay)
    for counter in range(n):
        log.info("task %d record %d", task, counter, extra={"task": task, "counter": counter})
    return n


def log_at_levels(task: int) -> list[str]:
    """Log at DEBUG, INFO and ERROR on tests.lifecycle; return the levels enabled here."""
    enabled = []
    for level in (logging.DEBUG, logging.INFO, logging.ERROR):
        log.log(level, "task %d at %s", task, logging.getLevelName(level))
        if log.isEnabledFor(level):
            enabled.append(logging.getLevelName(level))
    return enabled


CALIBRATION_CALLS = 200


def log_under_signals(n: int, interval: float) -> int:
    """Log ``n`` records while a timer signal's handler logs too; return the handler's count.

    The handler runs between bytecodes of whatever the main thread is doing, log calls
    included, which is how a SIGTERM handler that logs interrupts a log call in real code.
    """
    # next() on a count is one step, so handlers that interrupt each other (Python lets
    # them nest) still number their records uniquely.
    numbers = itertools.count(1)

    def on_alarm(signum: int, frame: Any) -> None:
        log.warning("from the signal handler %d", next(numbers))

    # A timer much faster than a log call would keep the worker in nested handlers (a
    # livelock that proves nothing): no faster than three log calls here, on this transport.
    started = time.perf_counter()
    for counter in range(CALIBRATION_CALLS):
        log.info("calibrating %d", counter)
    interval = max(interval, 3 * (time.perf_counter() - started) / CALIBRATION_CALLS)
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, interval, interval)
    try:
        for counter in range(n):
            log.info("main %d", counter)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    # Counted only now: a signal pending when the timer stopped still ran the handler.
    return next(numbers) - 1


def fork_child_that_exits(n: int) -> int:
    """Fork a child that logs, then runs the interpreter's exit hooks, as an exit would."""
    pid = os.fork()
    if pid == 0:
        try:
            for counter in range(n):
                log.info("grandchild %d", counter)
            # What sys.exit() at the top of a program runs. (Raising SystemExit here would
            # unwind into the stdlib's worker loop, which the child would then run too.)
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return n


def fork_child_that_keeps_logging(seconds: float) -> int:
    """Fork a child that logs every 10 ms for ``seconds``, outliving the task; return its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            deadline = time.monotonic() + seconds
            counter = 0
            while time.monotonic() < deadline:
                log.info("long-lived grandchild %d", counter)
                counter += 1
                time.sleep(0.01)
        finally:
            os._exit(0)
    return pid


def fork_child_logs_in_task(n: int) -> int:
    """Log in the task, and from a forked child; the child's records carry no task."""
    log.info("from the task")
    pid = os.fork()
    if pid == 0:
        try:
            for counter in range(n):
                log.info("grandchild %d", counter)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return n


def log_with_deleting_filter() -> int:
    """Log through a worker-side filter that deletes a standard attribute."""

    class DeleteLineno(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            del record.lineno
            return True

    logger = logging.getLogger("tests.lifecycle.deleting")
    logger.addFilter(DeleteLineno())
    logger.info("a record without lineno")
    return 1


class TwoArgumentError(Exception):
    """Pickles as (cls, args) but cannot be rebuilt from them: __init__ wants two."""

    def __init__(self, first: str, second: str) -> None:
        super().__init__(f"{first}/{second}")


def log_unrebuildable_extra() -> int:
    """Log a record whose extra pickles here but fails to unpickle in the parent."""
    log.info("before")
    log.info("bad extra", extra={"problem": TwoArgumentError("a", "b"), "fine": 7})
    log.info("after")
    return 3


def log_through_named(name: str, message: str) -> int:
    logging.getLogger(name).info(message)
    return 1


def pid() -> int:
    return os.getpid()


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def keep_records() -> list[logging.LogRecord]:
    """For the scripts tests run in their own interpreter: root at INFO, keeping every record."""
    records: list[logging.LogRecord] = []
    logging.getLogger().addHandler(_Keep(records))
    logging.getLogger().setLevel(logging.INFO)
    return records


# Set in each worker by the initializer below: the parent's event, shared with the workers.
_logged: Any = None


def remember_event(event: Any) -> None:
    """Initializer: keep the parent's multiprocessing event for ``log_then_wait``."""
    global _logged
    _logged = event


def log_then_wait(n: int, seconds: float) -> int:
    """Log ``n`` numbered records, tell the parent (the initializer's event), then sleep."""
    log_numbered(0, n)
    _logged.set()
    time.sleep(seconds)
    return n


def log_at_exit(n: int) -> int:
    """Register an exit hook (multiprocessing's) in the worker that logs ``n`` records ("exit i")."""
    from multiprocessing import util

    def hook() -> None:
        for i in range(n):
            logging.getLogger("logexec.test.exit").warning("exit %d", i)

    # multiprocessing's children skip atexit; its own exit hooks run, highest priority first.
    util.Finalize(None, hook, exitpriority=100)
    return n


def fail_to_initialize() -> None:
    raise ValueError("an initializer that fails")
