"""LoggingInterpreterPoolExecutor (issue 22): CPython 3.14's subinterpreters log through the main one.

Everything but the import test needs 3.14+ and is skipped, with the reason, before.
"""

from __future__ import annotations

import contextvars
import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests import interp_tasks

pytestmark = pytest.mark.timeout(120)
needs_314 = pytest.mark.skipif(
    sys.version_info < (3, 14), reason="InterpreterPoolExecutor is new in CPython 3.14"
)
ROOT = Path(__file__).resolve().parent.parent


class Collect(logging.Handler):
    """Keeps every record it handles, optionally slowly."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.delay = delay

    def emit(self, record: logging.LogRecord) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.records.append(record)


@pytest.fixture
def collect() -> Any:
    handler = Collect()
    logger = logging.getLogger("tests.interp")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def _executor(**kwargs: Any) -> Any:
    from logexec import LoggingInterpreterPoolExecutor

    return LoggingInterpreterPoolExecutor(**kwargs)


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="the class exists on 3.14+ (tested below)")
@pytest.mark.timeout(30)
def test_import_before_314_names_the_version_it_needs() -> None:
    """Before 3.14 the import fails with an ImportError naming the version it needs and this one."""
    with pytest.raises(ImportError, match=r"needs CPython 3\.14 or newer") as raised:
        from logexec import LoggingInterpreterPoolExecutor  # noqa: F401
    assert f"{sys.version_info[0]}.{sys.version_info[1]}." in str(raised.value)
    import logexec

    assert not hasattr(logexec, "no_such_name")  # other missing names stay AttributeErrors


@needs_314
def test_import_on_314_is_a_subclass_of_the_stdlib_executor() -> None:
    from concurrent.futures import InterpreterPoolExecutor

    import logexec

    assert issubclass(logexec.LoggingInterpreterPoolExecutor, InterpreterPoolExecutor)
    assert "LoggingInterpreterPoolExecutor" in logexec.__all__


@needs_314
def test_a_script_logs_to_the_parent_file_with_its_format_and_nothing_to_stderr(tmp_path: Path) -> None:
    """The issue's measurement: basicConfig(filename=, format=) in main; tasks log; all in the file."""
    log_file = tmp_path / "app.log"
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging
            from logexec import LoggingInterpreterPoolExecutor
            from tests import interp_tasks
            logging.basicConfig(filename={str(log_file)!r}, format="PARENT-FORMAT %(name)s %(message)s")
            with LoggingInterpreterPoolExecutor(2) as executor:
                print(sum(executor.map(interp_tasks.log_some, [3] * 8)))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "24"
    assert done.stderr == ""
    lines = log_file.read_text().splitlines()
    assert len(lines) == 24
    assert all(line.startswith("PARENT-FORMAT tests.interp task record ") for line in lines)


@needs_314
def test_result_means_the_records_were_handled(collect: Collect) -> None:
    """With a slow handler, each future's records are all handled when result() returns."""
    collect.delay = 0.02
    with _executor(max_workers=2) as executor:
        futures = [executor.submit(interp_tasks.log_some, 5, f"t{n}") for n in range(4)]
        for n, future in enumerate(futures):
            assert future.result(timeout=60) == 5
            mine = [r.getMessage() for r in collect.records if r.getMessage().startswith(f"t{n} ")]
            assert mine == [f"t{n} record {i}" for i in range(5)]
    assert len(collect.records) == 20


@needs_314
def test_a_task_that_raises_delivers_its_traceback_record_and_raises(collect: Collect) -> None:
    with _executor(max_workers=1) as executor:
        future = executor.submit(interp_tasks.log_then_raise)
        with pytest.raises(ValueError, match="the task's own error"):
            future.result(timeout=60)
        [record] = collect.records
    assert record.getMessage() == "it failed here"
    assert record.exc_text is not None
    assert "ZeroDivisionError: division by zero" in record.exc_text
    assert "ZeroDivisionError" in logging.Formatter().format(record)


@needs_314
def test_the_main_interpreter_levels_decide(collect: Collect) -> None:
    """A logger at WARNING in main is at WARNING in the tasks; a later change reaches later tasks."""
    logger = logging.getLogger("tests.interp")
    logger.setLevel(logging.WARNING)
    with _executor(max_workers=1) as executor:
        assert executor.submit(interp_tasks.log_info_and_warning).result(timeout=60) is False
        assert [r.getMessage() for r in collect.records] == ["a warning record"]
        logger.setLevel(logging.INFO)
        assert executor.submit(interp_tasks.log_info_and_warning).result(timeout=60) is True
    assert [r.getMessage() for r in collect.records][1:] == ["an info record", "a warning record"]


@needs_314
def test_level_changes_travel_as_changes_from_the_base_and_back() -> None:
    """Set, reset to the base, unset and new loggers all reach the interpreters; a task
    carries only the loggers that changed, however many are configured (issue 25, item 8)."""
    names = [f"tests.interp.many.{index}" for index in range(2000)]
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    watched = [names[0], names[1], "tests.interp.new"]
    try:
        with _executor(max_workers=1) as executor:
            check = interp_tasks.levels_of
            assert executor.submit(check, watched).result(timeout=60) == [30, 30, 0]
            loggers[0].setLevel(logging.DEBUG)
            loggers[1].setLevel(logging.NOTSET)
            logging.getLogger("tests.interp.new").setLevel(logging.ERROR)
            assert executor.submit(check, watched).result(timeout=60) == [10, 0, 40]
            update = executor._logexec_levels.update()
            assert update is not None and len(update[1]) == 3, update
            loggers[0].setLevel(logging.WARNING)  # back to the base
            loggers[1].setLevel(logging.WARNING)
            assert executor.submit(check, watched).result(timeout=60) == [30, 30, 40]
    finally:
        for logger in loggers:
            logger.setLevel(logging.NOTSET)
        logging.getLogger("tests.interp.new").setLevel(logging.NOTSET)


@needs_314
def test_logging_disable_reaches_the_interpreters_and_is_lifted() -> None:
    """logging.disable in main, before and after the interpreter starts, and its lifting."""
    logging.disable(logging.INFO)
    try:
        with _executor(max_workers=1) as executor:
            started = executor.submit(interp_tasks.disabled_level).result(timeout=60)
            logging.disable(logging.ERROR)
            raised = executor.submit(interp_tasks.disabled_level).result(timeout=60)
            logging.disable(logging.NOTSET)
            lifted = executor.submit(interp_tasks.disabled_level).result(timeout=60)
    finally:
        logging.disable(logging.NOTSET)
    assert (started, raised, lifted) == (logging.INFO, logging.ERROR, logging.NOTSET)


@needs_314
def test_a_level_an_interpreter_set_itself_outlasts_an_unrelated_change() -> None:
    """A level set in the interpreter stays until main changes that logger, as in a process.

    An update names only the loggers that differ from the base; one it does not name keeps
    the level it has, however it got it (the process pool's workers do the same:
    tests/test_levels.py). Before the interpreters shared the channel's update, each
    update re-set every configured logger, so a level of the interpreter's own lasted
    only until some other logger changed in main.
    """
    own, other = "tests.interp.own", "tests.interp.other"
    logging.getLogger(own).setLevel(logging.WARNING)  # in the base
    try:
        with _executor(max_workers=1) as executor:
            executor.submit(interp_tasks.set_level, own, logging.DEBUG).result(timeout=60)
            logging.getLogger(other).setLevel(logging.ERROR)
            seen = executor.submit(interp_tasks.levels_of, [own, other]).result(timeout=60)
            logging.getLogger(own).setLevel(logging.INFO)  # now main names it: main decides
            again = executor.submit(interp_tasks.levels_of, [own, other]).result(timeout=60)
    finally:
        logging.getLogger(own).setLevel(logging.NOTSET)
        logging.getLogger(other).setLevel(logging.NOTSET)
    assert seen == [logging.DEBUG, logging.ERROR]
    assert again == [logging.INFO, logging.ERROR]


@needs_314
def test_caplog_sees_the_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with _executor(max_workers=2) as executor:
        assert executor.submit(interp_tasks.log_some, 2, "caplog").result(timeout=60) == 2
        assert [r.getMessage() for r in caplog.records] == ["caplog record 0", "caplog record 1"]


@needs_314
def test_a_parent_filter_sees_the_submitters_contextvars(collect: Collect) -> None:
    seen: list[str] = []

    def remember(record: logging.LogRecord) -> bool:
        seen.append(interp_tasks.REQUEST_ID.get("none"))
        return True

    collect.addFilter(remember)
    with _executor(max_workers=2, propagate_contextvars=[interp_tasks.REQUEST_ID]) as executor:
        futures = []
        for request in ("req-a", "req-b"):
            context = contextvars.copy_context()
            context.run(interp_tasks.REQUEST_ID.set, request)
            futures.append(context.run(executor.submit, interp_tasks.log_some, 1, request))
            # propagate_contextvars: the task itself reads the value too.
            futures.append(context.run(executor.submit, interp_tasks.read_request_id))
        assert [f.result(timeout=60) for f in futures] == [1, "req-a", 1, "req-b"]
    assert sorted(seen) == ["req-a", "req-b"]


@needs_314
def test_an_unpicklable_extra_arrives_as_its_repr(collect: Collect) -> None:
    with _executor(max_workers=1) as executor:
        executor.submit(interp_tasks.log_unpicklable_extra).result(timeout=60)
    [record] = collect.records
    assert record.odd == "<Unpicklable marker>"  # type: ignore[attr-defined]
    assert record.plain == 7  # type: ignore[attr-defined]


@needs_314
def test_the_users_initializer_runs_after_the_set_up_and_can_log(collect: Collect) -> None:
    initializer = interp_tasks.log_in_initializer
    with _executor(max_workers=1, initializer=initializer, initargs=("hello",)) as executor:
        executor.submit(interp_tasks.log_some, 1).result(timeout=60)
        assert [r.getMessage() for r in collect.records] == ["initializer says hello", "task record 0"]


@needs_314
@pytest.mark.parametrize("in_context", [True, False])
def test_records_from_threads_the_task_starts_arrive(collect: Collect, in_context: bool) -> None:
    """A thread's records arrive; they carry the task's context only if the thread runs in it
    (copy_context().run), as in-process and in the process pool: a plain thread has none."""
    seen: list[str] = []
    collect.addFilter(lambda record: seen.append(interp_tasks.REQUEST_ID.get("none")) or True)
    with _executor(max_workers=1) as executor:
        context = contextvars.copy_context()
        context.run(interp_tasks.REQUEST_ID.set, "req-thread")
        future = context.run(executor.submit, interp_tasks.log_from_thread, in_context)
        assert future.result(timeout=60) == "joined"
        assert [r.getMessage() for r in collect.records] == ["from a thread of the task"]
        assert collect.records[0].threadName == "task-thread"
    inherits = bool(getattr(sys.flags, "thread_inherit_context", 0))
    assert seen == ["req-thread" if in_context or inherits else "none"]


@needs_314
def test_a_thread_that_outlives_its_task_is_handled_by_shutdown(collect: Collect) -> None:
    executor = _executor(max_workers=1)
    assert executor.submit(interp_tasks.log_from_late_thread).result(timeout=60) == "started"
    executor.shutdown(wait=True)
    assert [r.getMessage() for r in collect.records] == ["after the task returned"]


@needs_314
def test_a_thread_left_running_is_not_stamped_with_the_next_task(collect: Collect) -> None:
    """Task 1 leaves a thread that logs while task 2 (another request) runs: its record meets
    no request's context, not task 2's (issue 25, item 4, as in the process pool)."""
    seen: list[tuple[str, str]] = []
    collect.addFilter(
        lambda record: seen.append((record.getMessage(), interp_tasks.REQUEST_ID.get("none"))) or True
    )
    with _executor(max_workers=1) as executor:
        for request, task in (
            ("req-1", interp_tasks.log_from_late_thread),
            ("req-2", interp_tasks.sleep_then_log),
        ):
            context = contextvars.copy_context()
            context.run(interp_tasks.REQUEST_ID.set, request)
            context.run(executor.submit, task).result(timeout=60)
    assert sorted(seen) == [("after the task returned", "none"), ("slept", "req-2")], seen


@needs_314
def test_handlers_option_receives_the_records_instead() -> None:
    own = Collect()
    with _executor(max_workers=1, handlers=[own]) as executor:
        executor.submit(interp_tasks.log_some, 2, "own").result(timeout=60)
    assert [r.getMessage() for r in own.records] == ["own record 0", "own record 1"]
    with pytest.raises(ValueError, match=r"at least one logging\.Handler"):
        _executor(handlers=[])


def _readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "logexec-interpreters"}


@needs_314
def test_shutdown_stops_the_reader() -> None:
    before = _readers()
    executor = _executor(max_workers=1)
    assert executor.submit(interp_tasks.log_some, 1).result(timeout=60) == 1
    executor.shutdown(wait=True)
    assert _readers() == before


@needs_314
def test_dropped_without_shutdown_its_reader_stops(collect: Collect) -> None:
    """No shutdown(): once the pool is dropped and its interpreters closed, the reader ends."""
    before = _readers()
    executor = _executor(max_workers=1)
    future = executor.submit(interp_tasks.log_some, 1)
    del executor
    assert future.result(timeout=60) == 1
    deadline = time.monotonic() + 30
    while _readers() != before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert _readers() == before
    assert [r.getMessage() for r in collect.records] == ["task record 0"]


@needs_314
def test_a_full_queue_holds_the_tasks_back_and_loses_nothing(
    collect: Collect, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More records than the queue holds, a slow handler: the writers wait, every record arrives."""
    from logexec._interp import _executor as interp_executor

    monkeypatch.setattr(interp_executor, "QUEUE_SIZE", 4)
    collect.delay = 0.001
    with _executor(max_workers=2) as executor:
        futures = [executor.submit(interp_tasks.log_some, 50, f"full{n}") for n in range(2)]
        assert [f.result(timeout=60) for f in futures] == [50, 50]
    assert len(collect.records) == 100


@needs_314
def test_a_script_that_never_shuts_down_still_handles_every_record(tmp_path: Path) -> None:
    """No with, no shutdown(): the pool's exit hook closes the interpreters, each read to its end."""
    log_file = tmp_path / "app.log"
    script = tmp_path / "app.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import logging
            from logexec import LoggingInterpreterPoolExecutor
            from tests import interp_tasks
            logging.basicConfig(filename={str(log_file)!r}, format="PARENT %(message)s")
            executor = LoggingInterpreterPoolExecutor(2)
            futures = [executor.submit(interp_tasks.log_some, 3) for _ in range(4)]
            executor.submit(interp_tasks.log_from_late_thread)
            print("submitted")
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = log_file.read_text().splitlines()
    assert sorted(lines) == sorted(
        ["PARENT after the task returned"] + [f"PARENT task record {i}" for i in range(3)] * 4
    )


@needs_314
def test_capture_records_collects_each_callers_tasks(collect: Collect) -> None:
    """capture_records() works with this front too: a block's tasks, not another thread's."""
    from logexec import capture_records

    results: dict[str, list[str]] = {}
    with _executor(max_workers=2) as executor:

        def caller(tag: str) -> None:
            with capture_records() as records:
                executor.submit(interp_tasks.log_some, 3, tag).result(timeout=60)
                results[tag] = [record.getMessage() for record in records]

        threads = [threading.Thread(target=caller, args=(tag,)) for tag in ("a", "b", "c")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    for tag in ("a", "b", "c"):
        assert len(results[tag]) == 3 and all(tag in message for message in results[tag]), results
