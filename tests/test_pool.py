"""logexec.Pool: the stdlib Pool's API, with every worker record handled by the parent."""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.pool
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import logexec

from . import pool_tasks
from .conftest import ListHandler

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = 30


class WriterFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"PARENT{os.getpid()} {record.getMessage()}"


class SlowHandler(ListHandler):
    """Keeps each record only after a pause: a result that outruns its records shows."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.delay = delay

    def emit(self, record: logging.LogRecord) -> None:
        time.sleep(self.delay)
        super().emit(record)


@pytest.fixture
def make_pool(mp_context: Any) -> Iterator[Callable[..., logexec.Pool]]:
    made: list[logexec.Pool] = []

    def make(*args: Any, **kwargs: Any) -> logexec.Pool:
        kwargs.setdefault("context", mp_context)
        pool = logexec.Pool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.terminate()
        pool.join()


def _values(handler: ListHandler) -> list[int]:
    return sorted(record.value for record in handler.records if hasattr(record, "value"))  # type: ignore[attr-defined]


def test_is_a_stdlib_pool() -> None:
    assert issubclass(logexec.Pool, multiprocessing.pool.Pool)
    assert "Pool" in logexec.__all__


def test_every_method_hands_back_results_after_their_records(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """apply, apply_async, map(_async), starmap(_async), imap(_unordered), callbacks."""
    handler = SlowHandler()
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    pool = make_pool(2)

    def seen(value: int) -> int:
        return sum(1 for record in handler.records if getattr(record, "value", None) == value)

    assert pool.apply(pool_tasks.log_and_return, (1, 3)) == 1
    assert seen(1) == 3
    assert pool.apply_async(pool_tasks.log_and_return, (2, 3)).get(timeout=TIMEOUT) == 2
    assert seen(2) == 3
    seen_in_callback: list[int] = []
    done = threading.Event()

    def callback(value: int) -> None:
        seen_in_callback.append(seen(value))
        done.set()

    pool.apply_async(pool_tasks.log_and_return, (3, 3), callback=callback)
    assert done.wait(TIMEOUT)
    assert seen_in_callback == [3]
    assert pool.map(pool_tasks.log_and_return, [10, 11, 12], chunksize=2) == [10, 11, 12]
    assert [seen(v) for v in (10, 11, 12)] == [1, 1, 1]
    assert pool.map_async(pool_tasks.log_and_return, [20, 21]).get(timeout=TIMEOUT) == [20, 21]
    assert [seen(v) for v in (20, 21)] == [1, 1]
    assert pool.starmap(pool_tasks.log_and_return, [(30, 2), (31, 2)]) == [30, 31]
    assert [seen(v) for v in (30, 31)] == [2, 2]
    assert pool.starmap_async(pool_tasks.log_and_return, [(32, 2)]).get(timeout=TIMEOUT) == [32]
    assert seen(32) == 2
    for value in pool.imap(pool_tasks.log_and_return, [40, 41, 42]):
        assert seen(value) == 1
    for value in pool.imap_unordered(pool_tasks.log_and_return, [50, 51, 52], chunksize=2):
        assert seen(value) == 1
    errors: list[BaseException] = []
    failed = threading.Event()
    result = pool.apply_async(
        pool_tasks.log_then_raise, (7,), error_callback=lambda e: (errors.append(e), failed.set())
    )
    with pytest.raises(ValueError, match="failed on 7"):
        result.get(timeout=TIMEOUT)
    assert failed.wait(TIMEOUT)
    assert "before raising 7" in handler.messages()
    pool.close()
    pool.join()


def test_with_terminates_and_every_record_is_handled(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    with logexec.Pool(2, context=mp_context) as pool:
        results = [pool.apply_async(pool_tasks.log_and_return, (v, 50)) for v in range(4)]
        assert [r.get(timeout=TIMEOUT) for r in results] == list(range(4))
    pool.join()
    assert len(_values(handler)) == 200


def test_maxtasksperchild_replaces_workers_without_losing_a_record(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    pool = make_pool(2, maxtasksperchild=1)
    pids = pool.map(pool_tasks.pid_after_logging, range(20), chunksize=1)
    pool.close()
    pool.join()
    assert len(set(pids)) == 20
    assert sorted(int(m.split()[1]) for m in handler.messages()) == list(range(20))


def test_a_worker_killed_by_sigkill_loses_no_record_it_logged(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    pool = make_pool(1)
    doomed = pool.apply_async(pool_tasks.log_then_kill_self, (100,))
    # The stdlib replaces the dead worker; its task never completes.
    with pytest.raises(multiprocessing.TimeoutError):
        doomed.get(timeout=3)
    assert pool.apply(pool_tasks.log_and_return, (1,)) == 1
    pool.terminate()
    pool.join()
    assert [m for m in handler.messages() if m.startswith("doomed")] == [
        f"doomed record {n}" for n in range(100)
    ]


def _reports(handler: ListHandler, count: int = 1) -> list[str]:
    """The ERROR reports on the "logexec" logger, once ``count`` have come (or TIMEOUT passed)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        reports = [
            r.getMessage() for r in handler.records if r.name == "logexec" and r.levelno == logging.ERROR
        ]
        if len(reports) >= count:
            return reports
        time.sleep(0.05)
    return reports


@pytest.mark.parametrize("how", ["SIGKILL", "exit", "SIGTERM from elsewhere"])
def test_a_worker_that_dies_is_reported_by_name(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler], how: str, tmp_path: Path
) -> None:
    """The stdlib's Pool says nothing when a worker dies; ours names it on the "logexec"
    logger: its pid, how it ended, the task it ran and its last records."""
    reports = collect("logexec")
    collect("tests.pool")  # at DEBUG: the doomed task's INFO records are made
    pool = make_pool(1)
    [pid] = [process.pid for process in pool._pool]  # type: ignore[attr-defined]
    if how == "SIGKILL":
        doomed = pool.apply_async(pool_tasks.log_then_kill_self, (20,))
        ending, last = "was killed by signal SIGKILL (9)", "INFO tests.pool: doomed record 19"
        running = "running: tests.pool_tasks.log_then_kill_self(20)"
    elif how == "exit":
        doomed = pool.apply_async(pool_tasks.log_then_exit, (20,), {"code": 3})
        ending, last = "exited with code 3", "WARNING tests.pool: exiting record 19"
        running = "running: tests.pool_tasks.log_then_exit(20, code=3)"
    else:
        marker = tmp_path / "logging"
        doomed = pool.apply_async(pool_tasks.log_forever, (str(marker),))
        deadline = time.monotonic() + TIMEOUT
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(pid, signal.SIGTERM)
        ending, last = "was killed by signal SIGTERM (15)", "INFO tests.pool: endless record "
        running = "running: tests.pool_tasks.log_forever("
    with pytest.raises(multiprocessing.TimeoutError):
        doomed.get(timeout=1)
    [report] = _reports(reports)
    assert pool.apply(pool_tasks.log_and_return, (1,)) == 1  # replaced, as by the stdlib
    pool.terminate()
    pool.join()
    assert len(_reports(reports)) == 1, _reports(reports)
    assert report.startswith(f"logexec: worker {pid} {ending}\n"), report
    assert f"\n  {running}" in report, report
    assert "its last 10 records (oldest first):" in report, report
    assert report.count("\n    ") == 10 and last in report, report
    assert report.endswith("the pool started a replacement worker"), report


def test_a_map_whose_worker_dies_is_named(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    reports = collect("logexec")
    pool = make_pool(2)
    doomed = pool.starmap_async(
        pool_tasks.log_then_die_on_item, [(item, 5) for item in range(8)], chunksize=1
    )
    [report] = _reports(reports)
    with pytest.raises(multiprocessing.TimeoutError):
        doomed.get(timeout=0.5)
    assert "was killed by signal SIGKILL (9)" in report, report
    assert (
        "running: Pool.starmap of tests.pool_tasks.log_then_die_on_item over 8 items: [(0, 5), (1, 5)"
        in report
    )


def test_a_worker_whose_task_had_not_logged_names_no_task(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """Its last record came from a task that is done: that one is not named as running.

    (A worker killed while idle is not tested: it dies holding the stdlib pool's task-queue
    lock, and the stdlib's pool, as ours, then hangs in every later task and in terminate().)
    """
    reports = collect("logexec")
    collect("tests.pool")
    pool = make_pool(1)
    pid = pool.apply(pool_tasks.pid_after_logging, (7,))
    doomed = pool.apply_async(pool_tasks.log_then_exit, (0, 5))
    [report] = _reports(reports)
    with pytest.raises(multiprocessing.TimeoutError):
        doomed.get(timeout=0.5)
    assert report.startswith(f"logexec: worker {pid} exited with code 5\n"), report
    assert "running: no task that had logged (it was idle, or its task had not logged yet)" in report, report
    assert f"INFO tests.pool: value 7 in {pid}" in report, report
    assert pool.apply(pool_tasks.log_and_return, (2,)) == 2


@pytest.mark.timeout(240)
def test_workers_that_end_as_the_pool_ends_them_are_not_reported(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """close()+join(), maxtasksperchild, terminate() of busy workers and ``with`` report
    nothing, a few times over: reading an exit code outside the pool's own join once made
    forkserver workers look as if they "exited with code 255"."""
    reports = collect("logexec")
    collect("tests.pool")
    for _ in range(3):
        pool = make_pool(2, maxtasksperchild=2)
        assert pool.map(pool_tasks.log_and_return, range(10)) == list(range(10))
        pool.close()
        pool.join()
        pool = make_pool(2)
        for _ in range(2):
            pool.apply_async(pool_tasks.slow_records, (1000, "busy", 0.01))
        time.sleep(0.3)
        pool.terminate()
        pool.join()
        with make_pool(2) as pool:
            assert pool.apply(pool_tasks.log_and_return, (3,)) == 3
    assert [record.getMessage() for record in reports.records if record.levelno >= logging.WARNING] == []


@pytest.mark.timeout(180)
def test_deaths_past_the_first_ten_are_counted_not_dropped(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """A failing initializer makes the stdlib's Pool replace workers for ever, each dying at once."""
    reports = collect("logexec")
    pool = make_pool(2, initializer=pool_tasks.fail_to_initialize)
    assert len(_reports(reports, 10)) == 10
    time.sleep(1.0)  # more die meanwhile
    pool.terminate()
    pool.join()
    found = _reports(reports, 11)
    assert all("exited with code 1" in report for report in found[:10]), found[:10]
    # terminate() then join(): a worker the pool joins only in join() is counted there.
    summaries = found[10:]
    assert summaries and all(
        re.fullmatch(r"logexec\.Pool: \d+ more workers died abruptly after the first 10 reported above", line)
        for line in summaries
    ), summaries


def test_terminate_then_join_handles_every_record_logged(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler], tmp_path: Path
) -> None:
    # A slow handler: at terminate() a backlog of records is still to be handled.
    handler = SlowHandler(delay=0.002)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    pool = make_pool(2)
    markers = [tmp_path / f"m{n}" for n in range(2)]
    for marker in markers:
        pool.apply_async(pool_tasks.log_forever, (str(marker),))
    deadline = time.monotonic() + TIMEOUT
    while not all(m.exists() for m in markers) and time.monotonic() < deadline:
        time.sleep(0.01)
    pool.terminate()
    pool.join()
    # Read at once: after join() the records are handled, not merely on their way.
    records = list(handler.records)
    numbers: dict[int, list[int]] = {}
    for record in records:
        numbers.setdefault(record.process or 0, []).append(int(record.getMessage().split()[-1]))
    assert len(numbers) == 2
    for sequence in numbers.values():
        # Every record up to the last one logged: none missing in between.
        assert sequence == list(range(len(sequence)))
        assert len(sequence) >= 10


def test_levels_follow_the_parent(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    handler = collect("tests.pool", level=logging.WARNING)
    pool = make_pool(1)
    assert pool.apply(pool_tasks.enabled_levels) == ["WARNING"]
    logging.getLogger("tests.pool").setLevel(logging.DEBUG)
    assert pool.apply(pool_tasks.enabled_levels) == ["DEBUG", "INFO", "WARNING"]
    assert handler.messages() == ["at WARNING", "at DEBUG", "at INFO", "at WARNING"]


def test_a_worker_started_off_the_base_levels_returns_to_them(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """A replacement worker starts at the parent's levels of that moment; when the parent
    is back at the pool's base levels, the next task's worker is there too (no update is
    sent then: "no update" must mean "the base", not "as you are")."""
    collect("tests.pool", level=logging.WARNING)
    pool = make_pool(1, maxtasksperchild=1)
    first = pool.apply_async(pool_tasks.enabled_levels_after, (0.5,))
    # While the first worker runs its one task: its replacement starts at DEBUG.
    logging.getLogger("tests.pool").setLevel(logging.DEBUG)
    assert first.get(timeout=TIMEOUT) == ["WARNING"]
    time.sleep(1.0)  # the pool replaces the worker meanwhile
    logging.getLogger("tests.pool").setLevel(logging.WARNING)
    assert pool.apply(pool_tasks.enabled_levels) == ["WARNING"]


def test_fork_workers_do_not_write_to_the_parents_files(
    make_pool: Callable[..., logexec.Pool], tmp_path: Path
) -> None:
    path = tmp_path / "log.txt"
    file_handler = logging.FileHandler(path)
    # Names the process that formats: a fork child writing through its inherited copy shows.
    file_handler.setFormatter(WriterFormatter())
    root = logging.getLogger()
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    try:
        pool = make_pool(2, initializer=pool_tasks.initializer_logs, initargs=("x",))
        assert pool.map(pool_tasks.log_and_return, range(10)) == list(range(10))
        assert pool.map(pool_tasks.root_handler_count, [()] * 0) == []
        assert pool.apply(pool_tasks.root_handler_count) == 1
        pool.close()
        pool.join()
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert all(line.startswith(f"PARENT{os.getpid()} ") for line in lines), "\n".join(lines)
    assert sorted(line for line in lines if "record" in line) == sorted(
        f"PARENT{os.getpid()} value {v} record 0" for v in range(10)
    )
    assert sum("initializer x" in line for line in lines) == 2


def test_handlers_option(make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]) -> None:
    root_handler = collect()
    mine = ListHandler()
    pool = make_pool(1, handlers=[mine])
    assert pool.apply(pool_tasks.log_and_return, (5,)) == 5
    assert mine.messages() == ["value 5 record 0"]
    assert root_handler.messages() == []
    with pytest.raises(ValueError, match="at least one"):
        logexec.Pool(1, handlers=[])


def test_propagate_contextvars_and_submitter_context(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    seen_in_parent: list[str] = []

    class ContextFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen_in_parent.append(pool_tasks.request_id.get("none"))
            return True

    handler.addFilter(ContextFilter())
    pool = make_pool(1, propagate_contextvars=[pool_tasks.request_id])
    token = pool_tasks.request_id.set("req-42")
    try:
        assert pool.apply(pool_tasks.read_request_id, (1,)) == "req-42"
        assert pool.map(pool_tasks.read_request_id, [2, 3]) == ["req-42", "req-42"]
    finally:
        pool_tasks.request_id.reset(token)
    assert seen_in_parent == ["req-42"] * 3


def test_caplog_sees_worker_records(
    make_pool: Callable[..., logexec.Pool], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.pool")
    pool = make_pool(1)
    assert pool.map(pool_tasks.log_and_return, [1, 2]) == [1, 2]
    assert [r.getMessage() for r in caplog.records if r.name == "tests.pool"] == [
        "value 1 record 0",
        "value 2 record 0",
    ]


def test_unpicklable_extra_survives(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    handler = collect()
    pool = make_pool(1)
    assert pool.apply(pool_tasks.log_unpicklable_extra, (9,)) == 9
    (record,) = handler.records
    assert record.value == 9  # type: ignore[attr-defined]
    assert "lock" in repr(record.lock).lower()  # type: ignore[attr-defined]


def test_dropped_pool_still_handles_its_records(mp_context: Any, collect: Callable[..., ListHandler]) -> None:
    handler = collect()
    pool = logexec.Pool(1, context=mp_context)
    assert pool.apply(pool_tasks.log_and_return, (1, 5)) == 1
    channel = pool._logexec_channel
    pool.close()
    del pool
    assert channel.wait_stopped(TIMEOUT)
    assert len(handler.records) == 5


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(TypeError, match="initializer must be a callable or None, got 3"):
        logexec.Pool(1, initializer=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="context must be a multiprocessing context"):
        logexec.Pool(1, context="spawn")


def test_capture_records_collects_each_callers_tasks(
    make_pool: Callable[..., logexec.Pool], collect: Callable[..., ListHandler]
) -> None:
    """capture_records() works with the Pool front: each thread's block gets its own tasks'
    records (apply_async and map alike), in addition to normal handling."""
    handler = collect("tests.pool", level=logging.INFO)
    pool = make_pool(2)
    results: dict[int, list[int]] = {}

    def caller(value: int) -> None:
        with logexec.capture_records() as records:
            pool.apply_async(pool_tasks.log_and_return, (value, 3)).get(timeout=TIMEOUT)
            pool.map(pool_tasks.log_and_return, [value] * 2)
            results[value] = [record.value for record in records]  # type: ignore[attr-defined]

    threads = [threading.Thread(target=caller, args=(value,)) for value in (1, 2, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)
    assert results == {value: [value] * 5 for value in (1, 2, 3)}
    assert len(handler.records) == 15
