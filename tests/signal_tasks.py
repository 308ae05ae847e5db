"""Worker functions for tests/test_signals.py: module-level, so that spawn can import them."""

from __future__ import annotations

import logging
import signal
from types import FrameType

LOGGER = "tests.signals"


class Alarm(Exception):
    """Raised by the tasks' SIGALRM handler, as a `signal.alarm` timeout would."""


def _raise_alarm(signum: int, frame: FrameType | None) -> None:
    raise Alarm("the timer fired")


def log_then_alarm_in_barrier(count: int, delay: float) -> int:
    """Log ``count`` records, then return with a one-shot timer set to fire ``delay`` s later,
    while the end-of-task barrier waits on the slow parent."""
    logger = logging.getLogger(LOGGER)
    for number in range(count):
        logger.warning("early %d", number)
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
