"""A broken pool's ``BrokenProcessPool`` says which worker died, how, doing what, after which records."""

from __future__ import annotations

import glob
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor, _crash
from tests import crash_tasks
from tests.conftest import ListHandler

pytestmark = pytest.mark.timeout(180)

RESULT_TIMEOUT = 60


def notes_of(error: BaseException) -> str:
    """The notes (3.11+), or the message that carries them before."""
    if sys.version_info >= (3, 11):
        return "\n".join(getattr(error, "__notes__", []))
    return str(error)


def broken_by(future: object) -> BaseException:
    with pytest.raises(BrokenProcessPool) as raised:
        future.result(timeout=RESULT_TIMEOUT)  # type: ignore[attr-defined]
    return raised.value


@pytest.mark.parametrize(
    ("how", "ending"),
    [
        ("SIGKILL", f"was killed by signal SIGKILL ({signal.SIGKILL.value})"),
        ("SIGSEGV", f"was killed by signal SIGSEGV ({signal.SIGSEGV.value})"),
        ("exit3", "exited with code 3"),
    ],
)
def test_the_notes_name_the_worker_its_end_its_task_and_its_last_records(
    make_executor: Callable[..., LoggingProcessPoolExecutor],
    collect: Callable[..., ListHandler],
    how: str,
    ending: str,
) -> None:
    handler = collect()
    executor = make_executor(max_workers=2)
    future = executor.submit(crash_tasks.log_then_die, how, "x" * 1000, count=14)
    notes = notes_of(broken_by(future))
    pid = handler.records[-1].process
    assert f"logexec: worker {pid} {ending}" in notes, notes
    # Its task: the qualified name, the arguments cut short.
    assert "running: tests.crash_tasks.log_then_die('" + how + "', 'xxxxxxxx" in notes, notes
    assert "x" * 100 not in notes and "count=14)" in notes
    # Its last records: at most 10 lines, the newest, each LEVEL logger: message.
    lines = [line.strip() for line in notes.splitlines() if line.startswith("    ")]
    assert lines == [f"WARNING tests.crash: step {index} of 14 before {how}" for index in range(4, 14)]
    assert "its last 10 records (oldest first):" in notes


def test_the_records_shown_are_bounded_to_4_kb(
    make_executor: Callable[..., LoggingProcessPoolExecutor], collect: Callable[..., ListHandler]
) -> None:
    collect()
    executor = make_executor(max_workers=1)
    notes = notes_of(broken_by(executor.submit(crash_tasks.log_big_then_die, 20_000)))
    shown = [line for line in notes.splitlines() if line.startswith("    ")]
    assert 1 <= len(shown) <= 10
    assert sum(len(line) for line in shown) <= _crash.MAX_RECORD_CHARS + 40
    assert shown[-1].strip().startswith("ERROR tests.crash: big 9 ")


def _wait_for_markers(prefix: Path, count: int) -> list[int]:
    deadline = time.monotonic() + RESULT_TIMEOUT
    while time.monotonic() < deadline:
        markers = glob.glob(f"{prefix}.*")
        if len(markers) >= count:
            return sorted(int(marker.rsplit(".", 1)[1]) for marker in markers)
        time.sleep(0.01)
    raise AssertionError(f"the tasks did not start within {RESULT_TIMEOUT} s")


def test_two_workers_killed_at_once_are_both_named(
    make_executor: Callable[..., LoggingProcessPoolExecutor],
    collect: Callable[..., ListHandler],
    tmp_path: Path,
) -> None:
    collect()
    executor = make_executor(max_workers=2)
    prefix = tmp_path / "running"
    futures = [executor.submit(crash_tasks.log_then_wait, str(prefix), tag) for tag in ("first", "second")]
    pids = _wait_for_markers(prefix, 2)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    errors = [broken_by(future) for future in futures]
    notes = notes_of(errors[0])
    for pid in pids:
        assert f"logexec: worker {pid} was killed by signal SIGKILL (9)" in notes, notes
    assert notes.count("running: tests.crash_tasks.log_then_wait(") == 2
    assert "INFO tests.crash: waiting first" in notes and "INFO tests.crash: waiting second" in notes


def test_a_worker_killed_while_idle_is_named_by_the_next_submit(
    make_executor: Callable[..., LoggingProcessPoolExecutor], collect: Callable[..., ListHandler]
) -> None:
    collect()
    executor = make_executor(max_workers=1)
    pid = executor.submit(crash_tasks.pid_after_logging, "idle").result(timeout=RESULT_TIMEOUT)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + RESULT_TIMEOUT
    while True:
        try:
            future = executor.submit(crash_tasks.pid_after_logging, "again")
        except BrokenProcessPool as error:
            notes = notes_of(error)
            break
        # Submitted before the pool noticed: that future breaks instead.
        try:
            future.result(timeout=RESULT_TIMEOUT)
        except BrokenProcessPool as error:
            notes = notes_of(error)
            break
        assert time.monotonic() < deadline, "the pool never noticed its dead worker"
    assert f"logexec: worker {pid} was killed by signal SIGKILL (9)" in notes, notes
    assert "running: no task that had logged" in notes
    assert "INFO tests.crash: idle soon idle" in notes


def test_describe_exit_and_call_unit() -> None:
    assert _crash.describe_exit(-9) == "was killed by signal SIGKILL (9)"
    assert _crash.describe_exit(3) == "exited with code 3"
    assert _crash.describe_exit(-200) == "was killed by signal an unknown signal (200)"
    text = _crash.describe_call(crash_tasks.log_lines, ("a" * 500,), {"n": list(range(100))})
    assert text.startswith("tests.crash_tasks.log_lines('aaaa") and len(text) < 300


@pytest.fixture
def joblib_backend() -> Iterator[Any]:
    """The logexec joblib backend; loky's pool and the listener are gone afterwards."""
    joblib = pytest.importorskip("joblib")
    from joblib.externals.loky import reusable_executor

    from logexec.joblib import _channel as joblib_channel
    from logexec.joblib import register_logexec

    register_logexec("logexec-crash-test")
    yield joblib
    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)
    joblib_channel.stop()


def test_joblib_terminated_worker_error_carries_the_notes(
    joblib_backend: Any, collect: Callable[..., ListHandler]
) -> None:
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    handler = collect()
    joblib = joblib_backend
    with joblib.parallel_config(backend="logexec-crash-test", n_jobs=2):
        # One call first, so that loky's manager thread runs (the hook is set after a submit).
        assert joblib.Parallel()(joblib.delayed(crash_tasks.log_lines)("warm", 1) for _ in range(2))
        with pytest.raises(TerminatedWorkerError) as raised:
            joblib.Parallel()(
                joblib.delayed(crash_tasks.log_then_die)("SIGKILL", "z" * 500) for _ in range(1)
            )
    notes = notes_of(raised.value)
    pid = next(record.process for record in handler.records if "before SIGKILL" in record.getMessage())
    assert f"logexec: worker {pid} was killed by signal SIGKILL (9)" in notes, notes
    assert "running: tests.crash_tasks.log_then_die('SIGKILL', 'zzzz" in notes, notes
    assert "WARNING tests.crash: step 2 of 3 before SIGKILL" in notes


def test_dask_killed_worker_carries_the_task_and_its_last_records(
    collect: Callable[..., ListHandler],
) -> None:
    distributed = pytest.importorskip("distributed")
    import dask

    from logexec.dask import LoggingDaskExecutor

    collect()
    # No retry: the first death is the KilledWorker.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        distributed.LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
        ) as cluster,
        distributed.Client(cluster, set_as_default=False) as client,
    ):
        executor = LoggingDaskExecutor(client)
        try:
            future = executor.submit(crash_tasks.log_pause_then_die, "w" * 300)
            with pytest.raises(distributed.KilledWorker) as raised:
                future.result(timeout=RESULT_TIMEOUT)
        finally:
            executor.shutdown(wait=True)
    notes = notes_of(raised.value)
    assert "logexec: the task's worker died" in notes, notes
    assert "task: tests.crash_tasks.log_pause_then_die('wwww" in notes, notes
    assert "WARNING tests.crash: dask step 2" in notes, notes


def test_the_crash_log_keeps_only_the_newest_exits() -> None:
    """Workers that retire normally end too: a long-lived pool keeps a bounded number of exits."""
    from logexec._channel import WorkerExit

    crashes = _crash.CrashLog()
    crashes.add(WorkerExit(pid, 0) for pid in range(1, _crash.MAX_EXITS_KEPT + 50))
    heard = crashes.wait_for([1, _crash.MAX_EXITS_KEPT + 49], 0.0)
    assert list(heard) == [_crash.MAX_EXITS_KEPT + 49]


def test_the_last_ten_records_have_no_gap_after_a_burst(
    make_executor: Callable[..., LoggingProcessPoolExecutor], collect: Callable[..., ListHandler]
) -> None:
    """Thousands of records read in large buffers: the notes show exactly the last ten."""
    collect()
    executor = make_executor(max_workers=1)
    notes = notes_of(broken_by(executor.submit(crash_tasks.log_then_die, "SIGKILL", "burst", count=3000)))
    lines = [line.strip() for line in notes.splitlines() if line.startswith("    ")]
    assert lines == [
        f"WARNING tests.crash: step {index} of 3000 before SIGKILL" for index in range(2990, 3000)
    ]
