"""Calls that a type checker must reject, each marked with mypy's error code; never run.

tests/test_typing.py runs mypy on this file and expects exactly the errors marked
``# E: <code>`` on exactly those lines (pyright: errors on exactly those lines). Where the
stdlib's ProcessPoolExecutor has the same method, its line sits beside ours: the same
mistake is caught the same way.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ProcessPoolExecutor

from logexec import LoggingProcessPoolExecutor


def work(n: int) -> int:
    return n * n


def wrong_arguments_to_submit() -> None:
    ours = LoggingProcessPoolExecutor()
    stdlib = ProcessPoolExecutor()
    ours.submit(work, "x")  # E: arg-type
    stdlib.submit(work, "x")  # E: arg-type
    ours.submit(work)  # E: call-arg
    stdlib.submit(work)  # E: call-arg
    ours.submit(work, 1, 2)  # E: call-arg
    stdlib.submit(work, 1, 2)  # E: call-arg
    ours.submit(work, m=1)  # E: call-arg
    stdlib.submit(work, m=1)  # E: call-arg
    result: Future[str] = ours.submit(work, 1)  # E: arg-type  (mypy infers T from the target)
    print(result)


def not_handlers() -> None:
    LoggingProcessPoolExecutor(handlers=[object()])  # E: list-item
    LoggingProcessPoolExecutor(handlers=[logging.StreamHandler(), "stderr"])  # E: list-item
    LoggingProcessPoolExecutor(handlers=logging.StreamHandler())  # E: arg-type
    LoggingProcessPoolExecutor(handlers="stderr")  # E: arg-type
    LoggingProcessPoolExecutor(handlers=[logging.getLogger()])  # E: list-item


def other_mistakes() -> None:
    LoggingProcessPoolExecutor(max_workers="2")  # E: arg-type
    ProcessPoolExecutor(max_workers="2")  # E: call-overload
    LoggingProcessPoolExecutor(2, None, None, (), None)  # E: call-arg  (the options are keyword-only)


def not_contextvars() -> None:
    LoggingProcessPoolExecutor(propagate_contextvars=["RID"])  # E: list-item
