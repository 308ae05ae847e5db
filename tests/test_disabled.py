"""A logger's ``disabled`` flag: the parent's, as it is when a record arrives, decides.

Under fork a worker inherited the flags as they were at the fork and dropped records itself,
so a logger the parent enabled later stayed silent in the worker (issue 25, item 9).
"""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Callable
from typing import Any

import pytest

from . import helpers
from .conftest import ListHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RESULT_TIMEOUT = 30

# The parent's logger tree, or explicit handlers=: the flags decide on both ways.
DELIVERIES = ["logger-tree", "handlers"]


def _pool(make_executor: Callable[..., Any], delivery: str) -> tuple[Any, ListHandler]:
    handler = ListHandler()
    logging.getLogger().setLevel(logging.INFO)
    if delivery == "handlers":
        return make_executor(1, handlers=[handler]), handler
    logging.getLogger().addHandler(handler)
    return make_executor(1), handler


def _names(handler: ListHandler) -> list[str]:
    return [record.name for record in handler.records if record.name.startswith("tests.")]


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_logger_enabled_after_the_workers_started_is_heard(
    make_executor: Callable[..., Any], delivery: str
) -> None:
    """Disabled when the worker started (forked), enabled since: its records are handled."""
    toggled = logging.getLogger("tests.toggled")
    toggled.disabled = True
    executor, handler = _pool(make_executor, delivery)
    with executor:
        assert executor.submit(helpers.identity, 1).result(timeout=RESULT_TIMEOUT) == 1  # workers up
        toggled.disabled = False
        assert executor.submit(helpers.log_n, 2, 0, "tests.toggled").result(timeout=RESULT_TIMEOUT) == 2
    assert _names(handler) == ["tests.toggled"] * 2


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_a_logger_disabled_after_the_workers_started_is_silent(
    make_executor: Callable[..., Any], delivery: str
) -> None:
    """Enabled when the worker started, disabled since: its records are not handled."""
    toggled = logging.getLogger("tests.toggled")
    executor, handler = _pool(make_executor, delivery)
    with executor:
        assert executor.submit(helpers.identity, 1).result(timeout=RESULT_TIMEOUT) == 1
        toggled.disabled = True
        assert executor.submit(helpers.log_n, 2, 0, "tests.toggled").result(timeout=RESULT_TIMEOUT) == 2
        assert executor.submit(helpers.log_n, 1, 0, "tests.other").result(timeout=RESULT_TIMEOUT) == 1
    assert _names(handler) == ["tests.other"]


@pytest.mark.parametrize("delivery", DELIVERIES)
def test_dictconfig_disable_existing_loggers_stays_effective(
    make_executor: Callable[..., Any], delivery: str
) -> None:
    """Loggers that dictConfig disabled stay silent; the ones it configures are heard."""
    logging.getLogger("tests.existing")
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": True,
            "loggers": {"tests.configured": {"level": "INFO"}},
        }
    )
    assert logging.getLogger("tests.existing").disabled
    executor, handler = _pool(make_executor, delivery)
    with executor:
        assert executor.submit(helpers.log_n, 2, 0, "tests.existing").result(timeout=RESULT_TIMEOUT) == 2
        assert executor.submit(helpers.log_n, 1, 0, "tests.configured").result(timeout=RESULT_TIMEOUT) == 1
    assert _names(handler) == ["tests.configured"]
