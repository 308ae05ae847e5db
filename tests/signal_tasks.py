"""Worker functions for tests/test_signals.py: module-level, so that spawn can import them."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType

LOGGER = "tests.signals"


class Alarm(Exception):
    """Raised by the tasks' SIGALRM handler, as a `signal.alarm` timeout would."""


# While set, the handlers do not raise. A handler sets it as it raises, and the task's loop
# clears it only back inside its try: a second signal landing in the except clause (before
# any statement of it has run) would otherwise escape the task, leaving the repeating timer
# armed to kill the worker between tasks, or handing the parent a KeyboardInterrupt as the
# task's result (which stops a pytest session). Both happened, in 1 run of a few hundred.
_quiet = [False]


def _raise_alarm(signum: int, frame: FrameType | None) -> None:
    if not _quiet[0]:
        _quiet[0] = True
        raise Alarm("the timer fired")


def log_then_alarm_in_barrier(count: int, delay: float) -> int:
    """Log ``count`` records, then return with a one-shot timer set to fire ``delay`` s later,
    while the end-of-task barrier waits on the slow parent."""
    logger = logging.getLogger(LOGGER)
    for number in range(count):
        logger.warning("early %d", number)
    _quiet[0] = False
    signal.signal(signal.SIGALRM, _raise_alarm)
    signal.setitimer(signal.ITIMER_REAL, delay)
    return count


def log_numbered(tag: str, count: int) -> int:
    """Log ``count`` records tagged ``tag``; clear any timer a previous task left."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    logger = logging.getLogger(LOGGER)
    for number in range(count):
        logger.warning("%s %d", tag, number)
    return count


def payload(number: int, size: int) -> str:
    """What record ``number`` carries: checkable for wholeness in the parent."""
    return (f"<{number}>" * (size // 6 + 1))[:size]


def _interrupt(signum: int, frame: FrameType | None) -> None:
    if not _quiet[0]:
        _quiet[0] = True
        raise KeyboardInterrupt


def log_under_signals(tag: str, count: int, size: int, interval: float, source: str) -> list[int]:
    """Log ``count`` records of ``size`` characters while a handler raises every ``interval`` s.

    ``source`` "timer": a repeating timer whose handler raises ``Alarm`` (a ``signal.alarm``
    timeout); "interrupt": SIGINT, which the parent sends over and over, raising
    ``KeyboardInterrupt`` (Ctrl-C), which the task catches and carries on.
    Each call is attempted once, with a new number; return the numbers whose call returned.
    The signal lands anywhere: in a log call (which must then publish its record whole or
    not at all), or in this loop, which carries on.
    """
    logger = logging.getLogger(LOGGER)
    returned: list[int] = []
    attempt = 0
    if source == "timer":
        signal.signal(signal.SIGALRM, _raise_alarm)
        signal.setitimer(signal.ITIMER_REAL, interval, interval)
    else:
        signal.signal(signal.SIGINT, _interrupt)
    while True:
        try:
            _quiet[0] = False
            while attempt < count:
                attempt += 1
                logger.warning("%s %d %s", tag, attempt, payload(attempt, size))
                returned.append(attempt)
            _quiet[0] = True  # a signal still on its way must not end the task now
            if source == "timer":
                signal.setitimer(signal.ITIMER_REAL, 0)
            break
        except (Alarm, KeyboardInterrupt):
            pass  # the handler went quiet as it raised; the try above re-arms it
    # A signal may still be on its way (the parent stops sending once the task returns; a
    # timer's last may be pending): ignored from here on, in this task and between tasks.
    signal.signal(signal.SIGALRM if source == "timer" else signal.SIGINT, signal.SIG_IGN)
    return returned


def worker_pid() -> int:
    return os.getpid()
