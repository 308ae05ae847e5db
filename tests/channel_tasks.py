"""Worker functions for tests/test_channel.py: module-level, so that spawn can import them."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

LOGGER = "tests.channel"


def log_then_die(config: Any, count: int) -> None:
    """A worker set up through the seam alone: log ``count`` records, then die by SIGKILL."""
    from logexec._channel import initialize

    initialize(config, None, ())
    logger = logging.getLogger(LOGGER)
    for number in range(count):
        logger.warning("record %d", number)
    os.kill(os.getpid(), signal.SIGKILL)
