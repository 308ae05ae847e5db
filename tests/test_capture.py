"""``logexec.capture_records()``: each caller gets its own tasks' records, on every front."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest

import logexec
from logexec import LoggingProcessPoolExecutor
from tests import crash_tasks
from tests.conftest import ListHandler

pytestmark = pytest.mark.timeout(180)

RESULT_TIMEOUT = 60


@pytest.fixture(autouse=True)
def info_level() -> None:
    """The workers mirror the parent's levels: INFO records are made only if root allows them
    (conftest's clean_logging restores the level)."""
    logging.getLogger().setLevel(logging.INFO)


def _messages(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records]


def test_records_are_in_the_list_when_result_returns(
    make_executor: Callable[..., LoggingProcessPoolExecutor], collect: Callable[..., ListHandler]
) -> None:
    """result() returned: every record of the task is in the list, in order, and handled normally too."""
    handler = collect()
    executor = make_executor(max_workers=2)
    with logexec.capture_records() as records:
        assert executor.submit(crash_tasks.log_lines, "a", 30).result(timeout=RESULT_TIMEOUT) == "a"
        assert _messages(records) == [f"a {index}" for index in range(30)]
    assert [message for message in handler.messages() if message.startswith("a ")] == _messages(records)
    # Outside the block: nothing more is captured.
    executor.submit(crash_tasks.log_lines, "b", 3).result(timeout=RESULT_TIMEOUT)
    assert len(records) == 30


def test_three_threads_each_see_only_their_own_tasks(
    make_executor: Callable[..., LoggingProcessPoolExecutor],
) -> None:
    """Three threads, one executor, each its own block: no record of another thread's task."""
    executor = make_executor(max_workers=2)
    # Workers started from this thread first: forking a multi-threaded process is unsafe.
    executor.submit(crash_tasks.log_lines, "warm", 0).result(timeout=RESULT_TIMEOUT)
    seen: dict[str, list[str]] = {}
    failures: list[BaseException] = []
    start = threading.Barrier(3)

    def caller(tag: str) -> None:
        try:
            start.wait(timeout=RESULT_TIMEOUT)
            with logexec.capture_records() as records:
                futures = [executor.submit(crash_tasks.log_lines, f"{tag}{job}", 40) for job in range(3)]
                for future in futures:
                    future.result(timeout=RESULT_TIMEOUT)
                seen[tag] = _messages(records)
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=caller, args=(tag,)) for tag in "xyz"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=RESULT_TIMEOUT * 2)
    assert not failures
    for tag in "xyz":
        messages = seen[tag]
        assert len(messages) == 120
        assert all(message.startswith(tag) for message in messages), messages
        for job in range(3):
            # Each task's records in its own order.
            own = [message for message in messages if message.startswith(f"{tag}{job} ")]
            assert own == [f"{tag}{job} {index}" for index in range(40)]


def test_nested_blocks_outer_gets_the_inner_records_too(
    make_executor: Callable[..., LoggingProcessPoolExecutor],
) -> None:
    executor = make_executor(max_workers=1)
    with logexec.capture_records() as outer:
        executor.submit(crash_tasks.log_lines, "o", 2).result(timeout=RESULT_TIMEOUT)
        with logexec.capture_records() as inner:
            executor.submit(crash_tasks.log_lines, "i", 2).result(timeout=RESULT_TIMEOUT)
        executor.submit(crash_tasks.log_lines, "p", 2).result(timeout=RESULT_TIMEOUT)
    assert _messages(inner) == ["i 0", "i 1"]
    assert _messages(outer) == ["o 0", "o 1", "i 0", "i 1", "p 0", "p 1"]


def test_records_the_parent_drops_are_still_captured(
    make_executor: Callable[..., LoggingProcessPoolExecutor], collect: Callable[..., ListHandler]
) -> None:
    """Capture is in addition to handling: a handler's level does not hide a record from it."""
    handler = collect(level=logging.INFO, handler_level=logging.ERROR)
    executor = make_executor(max_workers=1)
    with logexec.capture_records() as records:
        executor.submit(crash_tasks.log_lines, "kept", 3).result(timeout=RESULT_TIMEOUT)
    assert _messages(records) == ["kept 0", "kept 1", "kept 2"]
    assert handler.messages() == []


def test_the_joblib_backend_captures_per_caller() -> None:
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import reusable_executor

    from logexec.joblib import _channel as joblib_channel
    from logexec.joblib import register_logexec

    register_logexec("logexec-capture-test")
    try:
        with joblib.parallel_config(backend="logexec-capture-test", n_jobs=2):
            with logexec.capture_records() as records:
                calls = (joblib.delayed(crash_tasks.log_lines)(f"j{job}", 5) for job in range(4))
                results = joblib.Parallel()(calls)
            outside = joblib.Parallel()(joblib.delayed(crash_tasks.log_lines)("later", 2) for _ in range(2))
    finally:
        # Later tests fork: no loky pool nor listener thread left behind.
        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=True)
        joblib_channel.stop()
    assert results == [f"j{job}" for job in range(4)] and outside == ["later", "later"]
    messages = _messages(records)
    assert sorted(messages) == sorted(f"j{job} {index}" for job in range(4) for index in range(5))


@pytest.fixture(scope="module")
def dask_client() -> Any:
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=2,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        yield client


def test_the_dask_executor_captures_per_caller(dask_client: Any) -> None:
    from logexec.dask import LoggingDaskExecutor

    executor = LoggingDaskExecutor(dask_client)
    try:
        with logexec.capture_records() as outer:
            with logexec.capture_records() as inner:
                assert executor.submit(crash_tasks.log_lines, "d", 4).result(timeout=RESULT_TIMEOUT) == "d"
            executor.submit(crash_tasks.log_lines, "e", 1).result(timeout=RESULT_TIMEOUT)
        executor.submit(crash_tasks.log_lines, "f", 1).result(timeout=RESULT_TIMEOUT)
    finally:
        executor.shutdown(wait=True)
    assert _messages(inner) == ["d 0", "d 1", "d 2", "d 3"]
    assert _messages(outer) == ["d 0", "d 1", "d 2", "d 3", "e 0"]
