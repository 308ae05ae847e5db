"""A signal handler's exception inside a log call or the end-of-task barrier (issue 25, items 1 and 5)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest

from . import signal_tasks as tasks

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 20


class SlowHandler(logging.Handler):
    """Keeps each message, taking ``delay`` seconds per record: the slow parent."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.delay)
        self.messages.append(record.getMessage())


def _attach(delay: float) -> SlowHandler:
    handler = SlowHandler(delay)
    logger = logging.getLogger(tasks.LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    return handler


@pytest.mark.timeout(60)
def test_an_interrupted_barrier_wait_does_not_satisfy_the_next_tasks(
    make_executor: Callable[..., Any],
) -> None:
    """A barrier wait cut short by a handler's exception: later tasks return only after their records."""
    handler = _attach(0.02)
    with make_executor(max_workers=1) as executor:
        interrupted = executor.submit(tasks.log_then_alarm_in_barrier, 20, 0.05)
        with pytest.raises(tasks.Alarm):
            interrupted.result(timeout=RESULT_TIMEOUT)
        for round_ in range(3):
            tag = f"after{round_}"
            assert executor.submit(tasks.log_numbered, tag, 10).result(timeout=RESULT_TIMEOUT) == 10
            handled = [message for message in handler.messages if message.startswith(tag + " ")]
            assert len(handled) == 10, (tag, len(handled))
