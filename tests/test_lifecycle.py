"""Every lifecycle the stdlib allows: the listener lives as long as the workers do.

Users drop executors without ``shutdown()``, shut them down from done-callbacks, leave the
interpreter with work pending, and run tasks that fork. In each case the stdlib finishes
the work; logexec must deliver every record of it and then stop, without hanging.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor
from logexec._channel import _listener

from . import lifecycle_tasks as tasks
from .conftest import ListHandler

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 60


def _numbered(handler: ListHandler) -> dict[int, list[int]]:
    per_task: dict[int, list[int]] = {}
    for record in handler.records:
        if record.name == "tests.lifecycle" and hasattr(record, "task"):
            per_task.setdefault(record.task, []).append(record.counter)  # type: ignore[attr-defined]
    return per_task


class _FirstRecord(logging.Handler):
    """Sets ``arrived`` when a record whose message starts with ``prefix`` is handled."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith(self.prefix):
            self.arrived.set()


def _listener_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("logexec-")]


def _wait_for_no_listener_threads(timeout: float = RESULT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while _listener_threads():
        assert time.monotonic() < deadline, f"still running: {_listener_threads()}"
        time.sleep(0.02)


def _map_and_drop(mp_context: Any) -> list[int]:
    return list(
        LoggingProcessPoolExecutor(2, mp_context=mp_context).map(tasks.log_numbered, range(6), [50] * 6)
    )


def test_dropped_executor_map_delivers_everything(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    """list(Executor().map(...)) with the executor dropped at once: every record, no broken pool."""
    handler = collect()
    assert _map_and_drop(mp_context) == [50] * 6
    # Each result was returned, so its records were handled already.
    assert _numbered(handler) == {task: list(range(50)) for task in range(6)}
    gc.collect()
    _wait_for_no_listener_threads()


def _submit_only(mp_context: Any) -> list[Future[int]]:
    executor = LoggingProcessPoolExecutor(2, mp_context=mp_context)
    return [executor.submit(tasks.log_numbered, task, 40, 0.2) for task in range(4)]


def test_function_returning_only_futures(mp_context: Any, collect: Callable[..., ListHandler]) -> None:
    """A function that returns only futures: the work and every record of it still arrive."""
    handler = collect()
    futures = _submit_only(mp_context)
    gc.collect()
    assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [40] * 4
    assert _numbered(handler) == {task: list(range(40)) for task in range(4)}
    _wait_for_no_listener_threads()


def test_del_with_pending_work_and_a_quiet_spell(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    """del executor with work pending; records logged after a quiet spell still reach the parent."""
    handler = collect()
    executor = LoggingProcessPoolExecutor(1, mp_context=mp_context)
    futures = [executor.submit(tasks.log_numbered, task, 10, 1.0) for task in range(3)]
    del executor
    gc.collect()
    assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [10] * 3
    assert _numbered(handler) == {task: list(range(10)) for task in range(3)}
    assert not [record for record in handler.records if record.name == "logexec"]
    _wait_for_no_listener_threads()


def test_dropped_before_any_submit_leaves_nothing_behind(mp_context: Any) -> None:
    """An executor entered then dropped without a submit stops its listener and removes its socket."""
    executor = LoggingProcessPoolExecutor(1, mp_context=mp_context).__enter__()
    address = executor._logexec_listener.address
    listener = executor._logexec_listener
    del executor
    gc.collect()
    assert listener.wait_stopped(timeout=RESULT_TIMEOUT)
    assert not os.path.exists(address)


def test_shutdown_with_wait_leaves_none_of_our_threads(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """After shutdown(wait=True) no logexec thread runs, as no stdlib thread does after the stdlib's."""
    collect("tests.lifecycle")
    for task in range(5):
        with make_executor(2) as executor:
            assert executor.submit(tasks.log_numbered, task, 3).result(timeout=RESULT_TIMEOUT) == 3
        # Checked at once: a fork pool made next would otherwise fork a multi-threaded
        # process (3.12+ warns) while the lifecycle thread was finishing.
        assert _listener_threads() == []


def test_shutdown_from_a_done_callback_keeps_the_listener(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    """shutdown() from a done-callback behaves as the stdlib's, and later records still arrive."""
    handler = collect()
    executor = LoggingProcessPoolExecutor(1, mp_context=mp_context)
    errors: list[BaseException] = []

    def shut(future: Future[Any]) -> None:
        try:
            executor.shutdown(wait=True)
        except BaseException as error:  # the stdlib raises when this runs on its own thread
            errors.append(error)

    first = executor.submit(tasks.log_numbered, 0, 5)
    later = [executor.submit(tasks.log_numbered, task, 20, 0.3) for task in range(1, 4)]
    first.add_done_callback(shut)
    assert [future.result(timeout=RESULT_TIMEOUT) for future in [first, *later]] == [5, 20, 20, 20]
    assert _numbered(handler) == {0: list(range(5)), **{task: list(range(20)) for task in range(1, 4)}}
    executor.shutdown(wait=True)
    assert executor._logexec_listener.wait_stopped(timeout=RESULT_TIMEOUT)


_EXIT_SCRIPT = """
import logging, sys
sys.path.insert(0, {root!r})
from logexec import LoggingProcessPoolExecutor
from tests import lifecycle_tasks
import multiprocessing

if __name__ == "__main__":
    handler = logging.FileHandler({path!r})
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    executor = LoggingProcessPoolExecutor(2, mp_context=multiprocessing.get_context({method!r}))
    futures = [executor.submit(lifecycle_tasks.log_numbered, task, 30, 0.3) for task in range(4)]
    # Leave without shutdown(): the stdlib finishes the pending work at exit.
"""


@pytest.mark.timeout(120)
def test_interpreter_exit_with_pending_work_delivers_everything(start_method: str, tmp_path: Path) -> None:
    """At interpreter exit with work pending, the work finishes and every record is written."""
    path = tmp_path / "exit.log"
    script = tmp_path / "script.py"
    root = str(Path(__file__).resolve().parent.parent)
    script.write_text(textwrap.dedent(_EXIT_SCRIPT.format(root=root, path=str(path), method=start_method)))
    done = subprocess.run(
        [sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=100, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = path.read_text().splitlines()
    assert sorted(lines) == sorted(f"task {task} record {n}" for task in range(4) for n in range(30))
    assert "logexec" not in done.stderr, done.stderr


@pytest.mark.parametrize("start_method", ["fork"])
def test_child_forked_by_a_task_that_exits_leaves_the_listener_alone(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A task's child running the interpreter's exit hooks does not stop the parent's listener."""
    handler = collect()
    with make_executor(1) as executor:
        directory = os.path.dirname(executor._logexec_listener.address)
        assert executor.submit(tasks.fork_child_that_exits, 5).result(timeout=RESULT_TIMEOUT) == 5
        assert os.path.isdir(directory)
        assert executor.submit(tasks.log_numbered, 7, 5).result(timeout=RESULT_TIMEOUT) == 5
    messages = [record.getMessage() for record in handler.records if record.name == "tests.lifecycle"]
    assert [message for message in messages if message.startswith("grandchild")] == [
        f"grandchild {n}" for n in range(5)
    ]
    assert _numbered(handler) == {7: list(range(5))}


@pytest.mark.parametrize("start_method", ["fork"])
def test_first_record_of_a_forked_child_carries_no_task(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A task's forked child is not the task: none of its records is dispatched in the task's context."""
    from . import helpers

    handler = collect()
    seen: list[tuple[str, str]] = []

    class ReadRequestId(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append((record.getMessage(), helpers.REQUEST_ID.get("<unset>")))
            return True

    handler.addFilter(ReadRequestId())
    with make_executor(1) as executor:
        token = helpers.REQUEST_ID.set("request-1")
        try:
            future = executor.submit(tasks.fork_child_logs_in_task, 3)
        finally:
            helpers.REQUEST_ID.reset(token)
        assert future.result(timeout=RESULT_TIMEOUT) == 3
    assert ("from the task", "request-1") in seen
    assert sorted(item for item in seen if item[0].startswith("grandchild")) == [
        (f"grandchild {n}", "<unset>") for n in range(3)
    ]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", ["fork"])
def test_shutdown_is_bounded_while_a_grandchild_keeps_logging(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A forked child that outlives the pool and keeps logging holds shutdown for one deadline only."""
    handler = collect()
    connected = _FirstRecord("long-lived grandchild")
    logging.getLogger("tests.lifecycle").addHandler(connected)
    executor = make_executor(1)
    child = executor.submit(tasks.fork_child_that_keeps_logging, 30.0).result(timeout=RESULT_TIMEOUT)
    try:
        # The child connects at its first record. One that has not connected by the time the
        # worker exits is not known to the listener, which then has nothing to wait for, and
        # the child's records go to its stderr: so its first record must have arrived before
        # shutdown (without this wait the test failed whenever the child was slow to start,
        # as in a full run on a loaded machine; a sleep before its first record showed it).
        assert connected.arrived.wait(timeout=RESULT_TIMEOUT), "the forked child's first record never arrived"
        started = time.monotonic()
        executor.shutdown(wait=True)
        took = time.monotonic() - started
        assert took < _listener.DRAIN_SECONDS + 10, took
        warnings = [
            record.getMessage()
            for record in handler.records
            if record.name == "logexec" and "still open" in record.getMessage()
        ]
        assert len(warnings) == 1 and str(child) in warnings[0], warnings
    finally:
        os.kill(child, 9)  # the worker's child, not ours: no waitpid


class _Gate(logging.Handler):
    """Holds the listener in the first record it handles until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.release.wait(timeout=RESULT_TIMEOUT)


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.version_info < (3, 14), reason="terminate_workers(), kill_workers(): new in 3.14")
@pytest.mark.parametrize("operation", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_deliver_what_was_logged_before(
    make_executor: Callable[..., Any], mp_context: Any, collect: Callable[..., ListHandler], operation: str
) -> None:
    """Records logged before terminate_workers()/kill_workers() are delivered; the listener then stops."""
    handler = collect("tests.lifecycle")
    gate = _Gate()
    logging.getLogger("tests.lifecycle").addHandler(gate)
    logged = mp_context.Event()
    executor = make_executor(1, initializer=tasks.remember_event, initargs=(logged,))
    future = executor.submit(tasks.log_then_wait, 100, 60.0)
    try:
        assert logged.wait(timeout=RESULT_TIMEOUT), "the task never logged its records"
        # The listener is held in the first record: the other 99 are still on their way
        # when the worker is stopped.
        assert gate.entered.wait(timeout=RESULT_TIMEOUT), "no record reached the parent"
        getattr(executor, operation)()
    finally:
        gate.release.set()
    with pytest.raises(BrokenProcessPool):  # as the stdlib's pool fails the running task
        future.result(timeout=RESULT_TIMEOUT)
    listener = executor._logexec_listener.thread
    assert listener is not None
    listener.join(timeout=RESULT_TIMEOUT)
    assert not listener.is_alive(), "the listener did not stop after the workers were stopped"
    assert _numbered(handler) == {0: list(range(100))}


@pytest.mark.skipif(sys.version_info < (3, 14), reason="Executor.map's buffersize is new in 3.14")
def test_map_buffersize_passes_through(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """map(..., buffersize=) works as in the stdlib: results in order, every task's records delivered."""
    handler = collect("tests.lifecycle")
    with make_executor(2) as executor:
        with pytest.raises(ValueError, match="buffersize"):
            executor.map(tasks.log_numbered, range(8), buffersize=0)
        results = executor.map(tasks.log_numbered, range(8), [5] * 8, buffersize=2)
        assert list(results) == [5] * 8
    assert _numbered(handler) == {task: list(range(5)) for task in range(8)}


def test_levels_changed_in_the_parent_decide(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Raised levels and logging.disable in the parent apply at once; lowered ones reach later tasks."""
    handler = collect("tests.lifecycle", level=logging.INFO)
    with make_executor(1) as executor:
        assert executor.submit(tasks.log_at_levels, 0).result(timeout=RESULT_TIMEOUT) == ["INFO", "ERROR"]
        assert executor._logexec_levels.update() is None  # nothing extra per task while unchanged
        logging.getLogger("tests.lifecycle").setLevel(logging.ERROR)
        executor.submit(tasks.log_at_levels, 1).result(timeout=RESULT_TIMEOUT)
        logging.disable(logging.CRITICAL)
        executor.submit(tasks.log_at_levels, 2).result(timeout=RESULT_TIMEOUT)
        logging.disable(logging.NOTSET)
        logging.getLogger("tests.lifecycle").setLevel(logging.DEBUG)
        assert executor.submit(tasks.log_at_levels, 3).result(timeout=RESULT_TIMEOUT) == [
            "DEBUG",
            "INFO",
            "ERROR",
        ]
    assert handler.messages() == [
        "task 0 at INFO",
        "task 0 at ERROR",
        "task 1 at ERROR",
        "task 3 at DEBUG",
        "task 3 at INFO",
        "task 3 at ERROR",
    ]


def test_a_level_unset_in_the_parent_is_unset_in_the_worker(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A logger level the parent sets back to NOTSET falls back to its parent's level in the worker too."""
    collect("tests", level=logging.DEBUG)
    logging.getLogger("tests.lifecycle").setLevel(logging.ERROR)
    with make_executor(1) as executor:
        assert executor.submit(tasks.log_at_levels, 0).result(timeout=RESULT_TIMEOUT) == ["ERROR"]
        logging.getLogger("tests.lifecycle").setLevel(logging.NOTSET)
        assert executor.submit(tasks.log_at_levels, 1).result(timeout=RESULT_TIMEOUT) == [
            "DEBUG",
            "INFO",
            "ERROR",
        ]


class _CountingLogger(logging.Logger):
    """A Logger class that marks each record it handles."""

    def handle(self, record: logging.LogRecord) -> None:
        record.handled_by_custom = getattr(record, "handled_by_custom", 0) + 1
        super().handle(record)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_custom_logger_class_handles_each_record_once(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A parent Logger subclass overriding handle() is applied once per record, in the parent."""
    handler = collect()
    manager = logging.root.manager
    name = f"tests.custom.{os.getpid()}.{time.monotonic_ns()}"
    previous = manager.loggerClass
    manager.setLoggerClass(_CountingLogger)
    try:
        assert isinstance(logging.getLogger(name), _CountingLogger)
    finally:
        manager.loggerClass = previous
    with make_executor(1) as executor:
        executor.submit(tasks.log_through_named, name, "custom").result(timeout=RESULT_TIMEOUT)
    records = [record for record in handler.records if record.name == name]
    assert [getattr(record, "handled_by_custom", 0) for record in records] == [1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_signal_handler_that_logs_never_deadlocks_a_worker(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A signal handler that logs while the worker is inside a log call neither deadlocks
    nor loses a record: every record of both arrives."""
    handler = collect()
    with make_executor(1) as executor:
        calls = executor.submit(tasks.log_under_signals, 20_000, 0.0002).result(timeout=RESULT_TIMEOUT)
    messages = [record.getMessage() for record in handler.records if record.name == "tests.lifecycle"]
    assert calls > 0
    assert [message for message in messages if message.startswith("main")] == [
        f"main {n}" for n in range(20_000)
    ]
    assert sorted(
        (message for message in messages if message.startswith("from the signal")),
        key=lambda message: int(message.split()[-1]),
    ) == [f"from the signal handler {n}" for n in range(1, calls + 1)]


@pytest.mark.parametrize("outcome", ["clean", "broken by its initializer"])
def test_a_dropped_pool_frees_its_queues_without_the_garbage_collector(mp_context: Any, outcome: str) -> None:
    """Dropping a shut-down pool frees its queues at once, as the stdlib's does.

    Their semaphores are registered with multiprocessing's resource tracker until freed; kept
    alive by a reference cycle, they outlive the pool until a collection runs, and the tracker
    reports them as leaked (CPython's FailingInitializerResourcesTest checks exactly that).
    """
    initializer = tasks.fail_to_initialize if outcome != "clean" else None
    freed = {}
    gc.collect()
    gc.disable()
    try:
        for kind, cls in (("stdlib", ProcessPoolExecutor), ("logexec", LoggingProcessPoolExecutor)):
            executor = cls(2, mp_context=mp_context, initializer=initializer)
            future = executor.submit(tasks.pid)
            if initializer is None:
                future.result(timeout=RESULT_TIMEOUT)
            else:
                with pytest.raises(BrokenProcessPool):
                    future.result(timeout=RESULT_TIMEOUT)
            del future
            queues = [weakref.ref(executor._call_queue), weakref.ref(executor._result_queue)]  # type: ignore[attr-defined]
            executor.shutdown(wait=True)
            del executor
            freed[kind] = [queue() is None for queue in queues]
    finally:
        gc.enable()
    assert freed["stdlib"] == [True, True], "premise: the stdlib's pool is freed by reference counting"
    assert freed["logexec"] == [True, True], "a reference cycle keeps logexec's pool queues alive"
