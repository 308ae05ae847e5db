"""The final drain hands every record that was fully sent to a slow handler (issue 25, item 3)."""

from __future__ import annotations

import logging
import time

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._channel import _transports

from . import lifecycle_tasks as tasks


class SlowHandler(logging.Handler):
    """Keeps each record's message after a pause, as a slow parent handler would."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.seconds)
        self.messages.append(record.getMessage())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("transport", [_transports.PORTABLE, _transports.SOCKET, _transports.RING])
def test_records_from_an_exit_hook_all_reach_a_slow_handler(
    monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    """Every record a worker's exit hook sent is handled, however slow the handler."""
    monkeypatch.setenv(_transports.ENV_TRANSPORT, transport)
    handler = SlowHandler(0.02)
    logger = logging.getLogger("logexec.test.exit")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with LoggingProcessPoolExecutor(max_workers=1) as executor:
            assert executor.submit(tasks.log_at_exit, 120).result(timeout=60) == 120
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert handler.messages == [f"exit {i}" for i in range(120)]
