# pyright: strict
"""Calls that must type-check cleanly (mypy --strict, pyright in strict mode); never run.

tests/test_typing.py runs the type checkers on this file and expects no error at all.
"""

from __future__ import annotations

import contextvars
import logging
import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor

from typing_extensions import assert_type

from logexec import LoggingProcessPoolExecutor

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID", default="-")


def work(n: int) -> int:
    return n * n


def greet(name: str, *, punctuation: str = ".") -> str:
    return f"hello {name}{punctuation}"


def set_up(level: int) -> None:
    logging.getLogger().setLevel(level)


def takes_an_executor(executor: Executor) -> None:
    """Where code expects a stdlib executor, ours fits."""


def takes_a_process_pool(executor: ProcessPoolExecutor) -> None:
    """Where code expects the stdlib's process pool, ours fits."""


def submit_and_map() -> None:
    with LoggingProcessPoolExecutor(max_workers=2) as executor:
        assert_type(executor, LoggingProcessPoolExecutor)
        assert_type(executor.submit(work, 3), Future[int])
        assert_type(executor.submit(work, n=3), Future[int])
        assert_type(executor.submit(greet, "you", punctuation="!"), Future[str])
        assert_type(executor.map(work, [1, 2, 3]), Iterator[int])
        assert_type(executor.map(work, range(10), chunksize=4), Iterator[int])
        takes_an_executor(executor)
        takes_a_process_pool(executor)


def constructor_arguments() -> None:
    handler = logging.StreamHandler()
    file_handlers = [logging.FileHandler("/dev/null", delay=True)]
    LoggingProcessPoolExecutor()
    LoggingProcessPoolExecutor(2, multiprocessing.get_context("spawn"), set_up, (logging.INFO,))
    LoggingProcessPoolExecutor(handlers=None)
    LoggingProcessPoolExecutor(handlers=[handler])
    LoggingProcessPoolExecutor(handlers=(handler, logging.NullHandler()))
    LoggingProcessPoolExecutor(handlers=file_handlers)  # a list of a Handler subclass
    LoggingProcessPoolExecutor(handlers=(each for each in file_handlers))
    LoggingProcessPoolExecutor(propagate_contextvars=[REQUEST_ID])
    LoggingProcessPoolExecutor(max_workers=None, max_tasks_per_child=10)
    executor = LoggingProcessPoolExecutor()
    executor.shutdown(wait=False, cancel_futures=True)
