"""The executor: drop-in behaviour, worker set-up, dispatch, fidelity and lifecycle."""

from __future__ import annotations

import concurrent.futures
import inspect
import io
import logging
import logging.config
import multiprocessing
import pickle
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import pytest

from logexec import LoggingProcessPoolExecutor

from . import helpers
from .conftest import ListHandler

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 30


# API ------------------------------------------------------------------------------------


def test_is_a_process_pool_executor() -> None:
    """The class is a ProcessPoolExecutor subclass exported from the package."""
    assert issubclass(LoggingProcessPoolExecutor, ProcessPoolExecutor)
    import logexec

    expected = ["LoggingProcessPoolExecutor", "Pool", "__version__", "capture_records", "get_context"]
    if sys.version_info >= (3, 14):
        expected.append("LoggingInterpreterPoolExecutor")
    assert logexec.__all__ == expected


def test_signature_keeps_the_stdlib_parameters() -> None:
    """Positional parameters are the stdlib's; ours are keyword-only."""
    parameters = inspect.signature(LoggingProcessPoolExecutor).parameters
    assert list(parameters)[:4] == ["max_workers", "mp_context", "initializer", "initargs"]
    for name in ("max_tasks_per_child", "handlers", "propagate_contextvars"):
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0, got 0"),
        ({"max_workers": -3}, ValueError, "got -3"),
        ({"max_workers": "2"}, TypeError, "max_workers must be an int or None, got '2'"),
        (
            {"handlers": [logging.StreamHandler(), "nope"]},
            TypeError,
            "handlers[1] must be a logging.Handler, got 'nope'",
        ),
        ({"handlers": logging.StreamHandler()}, TypeError, "handlers must be None or a sequence"),
        ({"initializer": 5}, TypeError, "initializer must be a callable or None, got 5"),
        ({"initargs": 5}, TypeError, "initargs must be a tuple, got 5"),
        ({"mp_context": "spawn"}, TypeError, "mp_context must be a multiprocessing context, got 'spawn'"),
        ({"propagate_contextvars": ["x"]}, TypeError, "must be contextvars.ContextVar objects, got 'x'"),
    ],
)
def test_bad_arguments_name_the_parameter_and_value(kwargs: dict[str, Any], error: type, words: str) -> None:
    """Bad arguments raise ValueError/TypeError naming the parameter, rule and value."""
    with pytest.raises(error) as raised:
        LoggingProcessPoolExecutor(**kwargs)
    assert words in str(raised.value)


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="the stdlib has max_tasks_per_child from 3.11")
def test_max_tasks_per_child_fails_like_the_stdlib_before_311() -> None:
    """Before 3.11, passing max_tasks_per_child fails exactly as the stdlib would."""
    with pytest.raises(TypeError) as ours:
        LoggingProcessPoolExecutor(2, max_tasks_per_child=1)
    with pytest.raises(TypeError) as theirs:
        ProcessPoolExecutor(2, max_tasks_per_child=1)  # type: ignore[call-arg]
    assert "max_tasks_per_child" in str(ours.value)
    assert str(ours.value).split(")")[-1] == str(theirs.value).split(")")[-1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
def test_max_tasks_per_child_bad_values_fail_like_the_stdlib() -> None:
    """Invalid max_tasks_per_child values fail with the stdlib's exception types."""
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        LoggingProcessPoolExecutor(2, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="fork"):
        LoggingProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=1)


# Start methods and worker set-up ----------------------------------------------------------


def test_records_arrive_under_every_start_method(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Every record from every worker arrives exactly once, under each start method."""
    handler = collect()
    with make_executor(2) as executor:
        futures = [executor.submit(helpers.log_n, 50, worker) for worker in range(4)]
        assert [future.result(timeout=RESULT_TIMEOUT) for future in futures] == [50] * 4
    pairs = sorted(
        (record.worker, record.counter) for record in handler.records if record.name == "tests.worker"
    )  # type: ignore[attr-defined]
    assert pairs == [(worker, counter) for worker in range(4) for counter in range(50)]


def test_worker_has_exactly_one_queue_handler(
    start_method: str, make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """The seed's check holds in every worker, even with handlers inherited through fork."""
    collect()
    noisy = logging.getLogger("tests.noisy")
    noisy.addHandler(logging.StreamHandler(io.StringIO()))
    noisy.propagate = False
    noisy.addFilter(lambda record: True)
    with make_executor(2) as executor:
        state = executor.submit(helpers.worker_logging_state).result(timeout=RESULT_TIMEOUT)
    assert state["one_queue_handler"], state
    assert state["root_handlers"] == ["WorkerHandler"]
    assert state["named_with_handlers"] == []
    assert state["named_not_propagating"] == []
    assert state["named_with_filters"] == []


def test_levels_are_mirrored(make_executor: Callable[..., Any], collect: Callable[..., ListHandler]) -> None:
    """Root's level, explicit logger levels and logging.disable reach the workers."""
    handler = collect(level=logging.INFO)
    logging.getLogger("tests.noisy").setLevel(logging.WARNING)
    logging.getLogger("tests.worker").setLevel(logging.DEBUG)
    with make_executor(1) as executor:
        enabled = executor.submit(helpers.log_levels).result(timeout=RESULT_TIMEOUT)
    assert enabled == [
        "tests.worker:DEBUG",
        "tests.worker:INFO",
        "tests.worker:WARNING",
        "tests.noisy:WARNING",
    ]
    assert [record.getMessage() for record in handler.records] == [
        "tests.worker at DEBUG",
        "tests.worker at INFO",
        "tests.worker at WARNING",
        "tests.noisy at WARNING",
    ]


def test_logging_disable_is_mirrored(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """logging.disable(INFO) in the parent silences INFO in the workers too."""
    handler = collect()
    logging.disable(logging.INFO)
    with make_executor(1) as executor:
        executor.submit(helpers.log_levels).result(timeout=RESULT_TIMEOUT)
    assert sorted({record.levelname for record in handler.records}) == ["WARNING"]


def test_user_initializer_runs_after_ours_and_can_log(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """The user's initializer runs after our set-up, so its records arrive."""
    handler = collect()
    with make_executor(1, initializer=helpers.initializer_logs, initargs=(3,)) as executor:
        executor.submit(helpers.identity, 1).result(timeout=RESULT_TIMEOUT)
    assert [record.counter for record in handler.records if record.name == "tests.init"] == [0, 1, 2]  # type: ignore[attr-defined]


def test_failing_initializer_breaks_the_pool_and_its_records_arrive(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A raising initializer gives BrokenProcessPool, no hang, and its records arrive."""
    handler = collect()
    started = time.monotonic()
    with make_executor(1, initializer=helpers.initializer_logs_then_raises, initargs=(2,)) as executor:
        future = executor.submit(helpers.identity, 1)
        with pytest.raises(BrokenProcessPool):
            future.result(timeout=RESULT_TIMEOUT)
    assert time.monotonic() - started < 10
    init_records = [record for record in handler.records if record.name == "tests.init"]
    assert [record.counter for record in init_records][:2] == [0, 1]  # type: ignore[attr-defined]
    assert any("Exception in initializer" in record.getMessage() for record in handler.records)


# Dispatch ---------------------------------------------------------------------------------


def test_dispatch_follows_the_parent_logger_tree(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Named-logger handlers, propagate=False, handler levels and filters all apply."""
    root_handler = collect()
    isolated = ListHandler()
    isolated_logger = logging.getLogger("tests.isolated")
    isolated_logger.addHandler(isolated)
    isolated_logger.propagate = False
    warnings_only = ListHandler(logging.WARNING)
    logging.getLogger("tests.worker").addHandler(warnings_only)
    filtered = ListHandler()
    filtered.addFilter(lambda record: record.counter % 2 == 0)  # type: ignore[attr-defined]
    logging.getLogger("tests").addHandler(filtered)
    with make_executor(2) as executor:
        executor.submit(helpers.log_n, 4, 0, "tests.isolated").result(timeout=RESULT_TIMEOUT)
        executor.submit(helpers.log_n, 4, 1, "tests.worker", logging.WARNING).result(timeout=RESULT_TIMEOUT)
        executor.submit(helpers.log_n, 4, 2, "tests.worker", logging.INFO).result(timeout=RESULT_TIMEOUT)
    assert len(isolated.records) == 4
    assert all(record.name != "tests.isolated" for record in root_handler.records)
    assert [record.worker for record in warnings_only.records] == [1] * 4  # type: ignore[attr-defined]
    assert sorted((record.worker, record.counter) for record in filtered.records) == [  # type: ignore[attr-defined]
        (1, 0),
        (1, 2),
        (2, 0),
        (2, 2),
    ]
    assert len([record for record in root_handler.records if record.name == "tests.worker"]) == 8


def test_dictconfig_setup_receives_worker_records(tmp_path: Any, make_executor: Callable[..., Any]) -> None:
    """A dictConfig file handler with a format string receives worker records."""
    path = tmp_path / "app.log"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(name)s|%(levelname)s|%(message)s"}},
            "handlers": {
                "file": {"class": "logging.FileHandler", "filename": str(path), "formatter": "plain"}
            },
            "loggers": {"tests": {"level": "INFO", "handlers": ["file"]}},
        }
    )
    try:
        with make_executor(1) as executor:
            executor.submit(helpers.log_n, 2).result(timeout=RESULT_TIMEOUT)
    finally:
        for handler in logging.getLogger("tests").handlers:
            handler.close()
    assert path.read_text().splitlines() == [
        "tests.worker|INFO|worker 0 record 0",
        "tests.worker|INFO|worker 0 record 1",
    ]


def test_explicit_handlers_get_records_and_root_does_not(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """With handlers=[...], records go to exactly those handlers, respecting levels."""
    root_handler = collect()
    everything = ListHandler()
    warnings_only = ListHandler(logging.WARNING)
    with make_executor(1, handlers=[everything, warnings_only]) as executor:
        executor.submit(helpers.log_n, 3, 0, "tests.worker", logging.INFO).result(timeout=RESULT_TIMEOUT)
        executor.submit(helpers.log_n, 2, 1, "tests.worker", logging.ERROR).result(timeout=RESULT_TIMEOUT)
    assert len(everything.records) == 5
    assert [record.worker for record in warnings_only.records] == [1, 1]  # type: ignore[attr-defined]
    assert root_handler.records == []


# Under fork the second pool forks while the first one's threads run; that is the test's
# set-up, not ours, and 3.12+ says so.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_two_executors_never_mix_records(mp_context: Any) -> None:
    """Two executors alive at once deliver each to its own handlers."""
    logging.getLogger().setLevel(logging.INFO)
    first, second = ListHandler(), ListHandler()
    with (
        LoggingProcessPoolExecutor(1, mp_context=mp_context, handlers=[first]) as one,
        LoggingProcessPoolExecutor(1, mp_context=mp_context, handlers=[second]) as two,
    ):
        futures = [one.submit(helpers.log_n, 20, 1), two.submit(helpers.log_n, 20, 2)]
        for future in futures:
            future.result(timeout=RESULT_TIMEOUT)
    assert {record.worker for record in first.records} == {1}  # type: ignore[attr-defined]
    assert {record.worker for record in second.records} == {2}  # type: ignore[attr-defined]
    assert len(first.records) == len(second.records) == 20


def test_caplog_sees_worker_records(
    make_executor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """pytest's caplog captures worker records, right after result()."""
    caplog.set_level(logging.INFO)
    with make_executor(1) as executor:
        executor.submit(helpers.log_n, 3).result(timeout=RESULT_TIMEOUT)
        assert [record.getMessage() for record in caplog.records] == [
            f"worker 0 record {i}" for i in range(3)
        ]


# Fidelity ---------------------------------------------------------------------------------


def _render(record: logging.LogRecord) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s %(funcName)s %(message)s")
    return formatter.format(record)


def test_exception_renders_as_in_the_parent(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A worker's log.exception renders exactly as the same call made in the parent."""
    handler = collect()
    helpers.log_exception("failed here")
    local = handler.records.pop()
    with make_executor(1) as executor:
        executor.submit(helpers.log_exception, "failed here").result(timeout=RESULT_TIMEOUT)
    remote = handler.records.pop()
    assert remote.exc_info is None and remote.exc_text
    assert "ValueError: the cause" in remote.exc_text
    assert _render(remote) == _render(local)


def test_stack_info_travels_separately(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """stack_info arrives as its own field, not folded into the message."""
    handler = collect()
    with make_executor(1) as executor:
        executor.submit(helpers.log_with_stack, "with stack").result(timeout=RESULT_TIMEOUT)
    record = handler.records[-1]
    assert record.getMessage() == "with stack"
    assert record.stack_info is not None and record.stack_info.startswith("Stack (most recent call last):")
    assert "log_with_stack" in record.stack_info


def test_message_is_merged_and_process_fields_are_the_workers(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """msg is merged in the worker; process, processName and thread are the worker's."""
    handler = collect()
    with make_executor(1) as executor:
        pid = executor.submit(helpers.pid_and_log, 1).result(timeout=RESULT_TIMEOUT)
    record = handler.records[-1]
    assert record.msg == "worker 0 record 0" and record.args is None
    assert record.process == pid
    assert record.processName != multiprocessing.current_process().name
    assert record.thread != threading.get_ident() or record.process != multiprocessing.current_process().pid
    assert (record.worker, record.counter) == (0, 0)  # type: ignore[attr-defined]
    assert record.relativeCreated > 0


def test_unpicklable_content_arrives_as_repr(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Unpicklable args, extras and exceptions arrive as repr(); a bad format is shown."""
    handler = collect()
    with make_executor(1) as executor:
        assert executor.submit(helpers.log_bad_things).result(timeout=RESULT_TIMEOUT) == "task finished"
    records = [record for record in handler.records if record.name == "tests.worker"]
    assert len(records) == 4
    assert records[0].getMessage() == "arg <Unpicklable thing>"
    assert records[1].thing == "<Unpicklable thing>" and records[1].fine == 7  # type: ignore[attr-defined]
    assert records[2].exc_text is not None and "UnpicklableError: cannot pickle me" in records[2].exc_text
    assert "could not merge the message" in records[3].getMessage()
    assert "'%d'" in records[3].getMessage() and "('x',)" in records[3].getMessage()


# Lifecycle --------------------------------------------------------------------------------


def test_plain_shutdown_without_with_flushes(mp_context: Any, collect: Callable[..., ListHandler]) -> None:
    """shutdown() without a with block handles every record before returning."""
    handler = collect()
    executor = LoggingProcessPoolExecutor(2, mp_context=mp_context)
    futures = [executor.submit(helpers.log_n, 100, worker) for worker in range(2)]
    executor.shutdown()
    assert all(future.done() for future in futures)
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 200


def test_shutdown_without_wait_still_handles_everything(
    mp_context: Any, collect: Callable[..., ListHandler]
) -> None:
    """shutdown(wait=False) returns at once, then handles every record and stops."""
    handler = collect()
    executor = LoggingProcessPoolExecutor(2, mp_context=mp_context)
    futures = [executor.submit(helpers.log_n, 200, worker) for worker in range(2)]
    executor.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(helpers.identity, 1)
    concurrent.futures.wait(futures, timeout=RESULT_TIMEOUT)
    assert executor._logexec_listener.wait_stopped(timeout=RESULT_TIMEOUT)
    listener_thread = executor._logexec_listener.thread
    assert listener_thread is not None
    # Stopped means every record handled; the thread itself returns a moment later.
    listener_thread.join(timeout=RESULT_TIMEOUT)
    assert not listener_thread.is_alive()
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 400


def test_exception_in_with_body_still_flushes(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """An exception raised in the with body still flushes every record."""
    handler = collect()
    with pytest.raises(ZeroDivisionError), make_executor(2) as executor:
        for worker in range(2):
            executor.submit(helpers.log_n, 100, worker)
        raise ZeroDivisionError
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 200


def test_task_exception_is_the_stdlib_one(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A task's own exception reaches result(), after its records."""
    handler = collect()
    with make_executor(1) as executor:
        future = executor.submit(helpers.log_then_raise, 3)
        with pytest.raises(KeyError, match="task failed on purpose"):
            future.result(timeout=RESULT_TIMEOUT)
        assert len([record for record in handler.records if record.name == "tests.worker"]) == 3


def test_unpicklable_callable_fails_like_the_stdlib(make_executor: Callable[..., Any]) -> None:
    """An unpicklable callable fails its future with a pickling error; the pool goes on."""
    with make_executor(1) as executor:
        future = executor.submit(lambda: 1)
        with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
            future.result(timeout=RESULT_TIMEOUT)
        assert executor.submit(helpers.identity, 5).result(timeout=RESULT_TIMEOUT) == 5


def test_map_with_chunksize(make_executor: Callable[..., Any], collect: Callable[..., ListHandler]) -> None:
    """map with chunksize returns results in order and delivers every record."""
    handler = collect()
    with make_executor(2) as executor:
        results = list(executor.map(helpers.log_n, [5] * 20, range(20), chunksize=3, timeout=RESULT_TIMEOUT))
    assert results == [5] * 20
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 100


def test_many_threads_submitting_at_once(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Many threads submitting concurrently: every record arrives once."""
    handler = collect()
    with make_executor(2) as executor:
        # Start the workers before the threads, so that a fork pool forks single-threaded.
        executor.submit(helpers.identity, 0).result(timeout=RESULT_TIMEOUT)

        def submit_some(worker: int) -> list[Any]:
            return [executor.submit(helpers.log_n, 10, worker) for _ in range(5)]

        threads_results: list[list[Any]] = []
        threads = [
            threading.Thread(target=lambda w=w: threads_results.append(submit_some(w))) for w in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=RESULT_TIMEOUT)
        for futures in threads_results:
            for future in futures:
                assert future.result(timeout=RESULT_TIMEOUT) == 10
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 8 * 5 * 10


@pytest.mark.skipif(sys.version_info < (3, 11), reason="max_tasks_per_child is 3.11+")
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_respawned_workers_go_on_logging(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Workers replaced after max_tasks_per_child reconnect and keep logging."""
    handler = collect()
    with make_executor(2, max_tasks_per_child=2) as executor:
        pids = [executor.submit(helpers.pid_and_log, 5).result(timeout=RESULT_TIMEOUT) for _ in range(8)]
    assert len(set(pids)) >= 4
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 40


def test_records_from_task_threads_arrive(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Records logged by a thread the task started arrive too."""
    handler = collect()
    with make_executor(1) as executor:
        assert executor.submit(helpers.log_from_thread, 50).result(timeout=RESULT_TIMEOUT) == 100
        assert len([record for record in handler.records if record.name == "tests.worker"]) == 100


@pytest.mark.parametrize("start_method", ["fork"])
def test_forked_grandchild_gets_its_own_connection(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A process forked inside a task logs through a connection of its own, uncorrupted."""
    handler = collect()
    with make_executor(1) as executor:
        futures = [executor.submit(helpers.fork_child_logs, 200) for _ in range(3)]
        for future in futures:
            future.result(timeout=RESULT_TIMEOUT)
    from_children = [record for record in handler.records if getattr(record, "worker", None) == 99]
    assert len(from_children) == 600


def test_a_new_executor_works_after_shutdown(mp_context: Any, collect: Callable[..., ListHandler]) -> None:
    """Executors can be created one after another; submit after shutdown is refused."""
    handler = collect()
    for _ in range(2):
        with LoggingProcessPoolExecutor(1, mp_context=mp_context) as executor:
            executor.submit(helpers.log_n, 2).result(timeout=RESULT_TIMEOUT)
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            executor.submit(helpers.identity, 1)
    assert len([record for record in handler.records if record.name == "tests.worker"]) == 4
