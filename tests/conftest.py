"""Shared fixtures: start methods, executors that always shut down, a clean root logger."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._channel import _transports

START_METHODS = ["spawn", "fork", "forkserver"]
# The transport this run's pools use (LOGEXEC_TRANSPORT; CI runs the suite through each).
TRANSPORT = _transports.choose()
# For tests that speak the socket transport's raw handshake to the listener; the portable
# transport's handshake is the stdlib's, and tests/test_portable.py has its own such tests.
socket_protocol_only = pytest.mark.skipif(
    TRANSPORT == _transports.PORTABLE, reason="speaks the socket transport's raw handshake"
)


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Each test that takes this runs once per start method."""
    method: str = request.param
    return method


@pytest.fixture
def mp_context(start_method: str) -> Any:
    if start_method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {start_method} start method on this platform")  # Windows: spawn only
    return multiprocessing.get_context(start_method)


@pytest.fixture
def make_executor(mp_context: Any) -> Iterator[Callable[..., LoggingProcessPoolExecutor]]:
    """Build executors on the test's start method; every one is shut down afterwards."""
    made: list[LoggingProcessPoolExecutor] = []

    def make(*args: Any, **kwargs: Any) -> LoggingProcessPoolExecutor:
        kwargs.setdefault("mp_context", mp_context)
        executor = LoggingProcessPoolExecutor(*args, **kwargs)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


class ListHandler(logging.Handler):
    """Keeps every record it handles, in order."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    """Restore root's handlers and level, named loggers' state and logging.disable."""
    root = logging.getLogger()
    saved_handlers = list(root.handlers)
    saved_level = root.level
    manager = logging.root.manager
    saved_disable = manager.disable
    saved_loggers = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled, list(logger.filters))
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }
    yield
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)
    logging.disable(saved_disable)
    levels_changed = False
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        if name in saved_loggers:
            level, handlers, propagate, disabled, filters = saved_loggers[name]
        else:
            level, handlers, propagate, disabled, filters = logging.NOTSET, [], True, False, []
        if logger.level != level:
            # Not setLevel: each call clears every logger's cache, and with the thousands
            # of loggers tests/test_levels.py makes, a setLevel per logger made every
            # test's teardown quadratic (the suite ran 4x slower after it).
            logger.level = level
            levels_changed = True
        logger.handlers[:] = handlers
        logger.propagate = propagate
        logger.disabled = disabled
        logger.filters[:] = filters
    if levels_changed:
        root.setLevel(saved_level)  # clears every logger's level cache, once


@pytest.fixture
def collect() -> Callable[..., ListHandler]:
    """Attach a ListHandler to a logger (root by default) for the test's duration."""

    def attach(
        name: str | None = None, level: int = logging.DEBUG, handler_level: int = logging.NOTSET
    ) -> ListHandler:
        handler = ListHandler(handler_level)
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        return handler

    return attach


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the Dask tests last.

    A LocalCluster leaves threads behind in this process (distributed's event loop and
    offload threads); forking after that copies their locks into fork workers, which then
    die at random. Nothing after the Dask tests forks (those of other modules have "dask" in
    their names: test_capture's and test_crash_notes').
    """
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_dask.py") or "dask" in item.name)
