"""Level changes reach the workers as changes: a task's size never grows with the loggers.

The parent fixes its base levels when the pool is made; every worker starts from them, and
each task submitted after a change carries only the loggers that differ from the base.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from . import levels_tasks as tasks

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

RESULT_TIMEOUT = 60
CONFIGURED = 2000


def _configure(prefix: str, count: int) -> list[str]:
    """``count`` loggers with a level of their own, as a large dictConfig leaves them."""
    names = [f"{prefix}.{index}" for index in range(count)]
    for index, name in enumerate(names):
        logging.getLogger(name).setLevel(logging.WARNING if index % 2 else logging.ERROR)
    return names


def _task_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the pickled size of every call the executor hands to the stdlib pool."""
    sizes: list[int] = []
    submit = ProcessPoolExecutor.submit

    def spy(self: Any, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(pickle.dumps((fn, args, kwargs))))
        return submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", spy)
    return sizes


@pytest.mark.parametrize("start_method", ["spawn"], indirect=True)
def test_a_level_change_adds_to_each_task_only_what_changed(
    make_executor: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 2,000 configured loggers, one setLevel adds one logger's worth to each later task."""
    names = _configure("tests.levels.size", CONFIGURED)
    sizes = _task_sizes(monkeypatch)
    with make_executor(1) as executor:
        before = executor.submit(tasks.levels_of, names[:1]).result(timeout=RESULT_TIMEOUT)
        logging.getLogger(names[0]).setLevel(logging.DEBUG)  # what caplog.set_level does
        after = [executor.submit(tasks.levels_of, names[:1]).result(timeout=RESULT_TIMEOUT) for _ in range(3)]
    assert before[names[0]] == (logging.ERROR, logging.ERROR)
    assert all(seen[names[0]] == (logging.DEBUG, logging.DEBUG) for seen in after)
    unchanged, changed = sizes[0], sizes[1:]
    # The whole table is some 60 KB; one changed logger and a version, under 200 bytes.
    assert all(size - unchanged < 200 for size in changed), (unchanged, changed)


@pytest.mark.parametrize("start_method", ["spawn", "fork", "forkserver"], indirect=True)
def test_workers_follow_changes_among_many_configured_loggers(make_executor: Callable[..., Any]) -> None:
    """Set, reset to base, unset, new loggers and logging.disable: every worker mirrors each state."""
    names = _configure("tests.levels.follow", CONFIGURED)
    configured_error, configured_warning, untouched = names[0], names[1], names[2]
    early, late = "tests.levels.follow.early", "tests.levels.follow.late"
    watched = ["", configured_error, configured_warning, untouched, early, late]
    with make_executor(2) as executor:
        # Set after the base was fixed, before any worker started (under fork: inherited).
        logging.getLogger(early).setLevel(logging.DEBUG)

        def check() -> None:
            expected = tasks.levels_of(watched)
            for _ in range(6):  # several per phase: both workers, whatever versions they saw
                seen = executor.submit(tasks.levels_of, watched).result(timeout=RESULT_TIMEOUT)
                assert seen == expected

        check()
        logging.getLogger(configured_error).setLevel(logging.DEBUG)
        logging.getLogger(configured_warning).setLevel(logging.NOTSET)
        logging.getLogger(late).setLevel(logging.INFO)  # a logger new since the pool started
        logging.disable(logging.INFO)
        check()
        # Back to the base for one, unset for the others: the workers restore and unset.
        logging.getLogger(configured_error).setLevel(logging.ERROR)
        logging.getLogger(early).setLevel(logging.NOTSET)
        logging.getLogger(late).setLevel(logging.NOTSET)
        logging.disable(logging.NOTSET)
        check()
        logging.getLogger().setLevel(logging.CRITICAL)
        check()


@pytest.mark.parametrize("start_method", ["spawn"], indirect=True)
def test_caplog_set_level_reaches_the_workers(
    make_executor: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """pytest's caplog.set_level, among 2,000 configured loggers, reaches every later task."""
    names = _configure("tests.levels.caplog", CONFIGURED)
    with make_executor(1) as executor:
        assert (
            executor.submit(tasks.levels_of, names[:1]).result(timeout=RESULT_TIMEOUT)[names[0]][0]
            == logging.ERROR
        )
        caplog.set_level(logging.DEBUG, logger=names[0])
        assert (
            executor.submit(tasks.levels_of, names[:1]).result(timeout=RESULT_TIMEOUT)[names[0]][0]
            == logging.DEBUG
        )


@pytest.mark.parametrize("start_method", ["spawn"], indirect=True)
def test_a_level_a_worker_set_itself_outlasts_an_unrelated_change(make_executor: Callable[..., Any]) -> None:
    """A worker's own level stays until the parent changes that logger (the interpreter
    front shares this rule: tests/test_interpreters.py)."""
    own, other = "tests.levels.own", "tests.levels.other"
    logging.getLogger(own).setLevel(logging.WARNING)  # in the base
    with make_executor(1) as executor:
        executor.submit(tasks.set_level, own, logging.DEBUG).result(timeout=RESULT_TIMEOUT)
        logging.getLogger(other).setLevel(logging.ERROR)
        seen = executor.submit(tasks.levels_of, [own, other]).result(timeout=RESULT_TIMEOUT)
        logging.getLogger(own).setLevel(logging.INFO)  # now the parent names it: it decides
        again = executor.submit(tasks.levels_of, [own, other]).result(timeout=RESULT_TIMEOUT)
    assert (seen[own][0], seen[other][0]) == (logging.DEBUG, logging.ERROR)
    assert (again[own][0], again[other][0]) == (logging.INFO, logging.ERROR)


@pytest.mark.parametrize("start_method", ["fork"], indirect=True)
def test_a_pool_forked_inside_a_worker_follows_its_own_levels(make_executor: Callable[..., Any]) -> None:
    """A worker's own fork pool: its workers apply its level changes, not skip them as seen.

    The inner workers inherit the outer worker's level bookkeeping; the outer pool's
    changes (two versions here) must not hide the inner pool's first.
    """
    outer_logger = logging.getLogger("tests.levels.outer")
    with make_executor(1) as executor:
        for level in (logging.INFO, logging.ERROR):
            outer_logger.setLevel(level)
            executor.submit(tasks.levels_of, [outer_logger.name]).result(timeout=RESULT_TIMEOUT)
        seen = executor.submit(tasks.levels_in_a_nested_pool, "tests.levels.inner").result(
            timeout=RESULT_TIMEOUT
        )
    assert seen == (logging.DEBUG, logging.DEBUG)


@pytest.mark.parametrize("start_method", ["spawn", "fork", "forkserver"], indirect=True)
def test_the_initializer_logs_at_the_levels_in_force_when_its_worker_starts(
    make_executor: Callable[..., Any], collect: Callable[..., Any]
) -> None:
    """A level set after the pool was made, before its workers start, applies to the initializer.

    The base levels are the pool's; the levels a worker starts with are those of its start.
    """
    executor = make_executor(1, initializer=tasks.log_info, initargs=("from the initializer",))
    handler = collect("tests.levels.init", level=logging.INFO)  # after the base was fixed
    with executor:
        executor.submit(tasks.log_info, "from the task").result(timeout=RESULT_TIMEOUT)
    assert handler.messages() == ["from the initializer", "from the task"]


@pytest.mark.parametrize("start_method", ["spawn", "fork", "forkserver"], indirect=True)
def test_a_worker_that_started_off_the_base_applies_even_version_0(mp_context: Any) -> None:
    """Levels changed between the base and a worker's start: the first update puts them right.

    Through the seam, as a front with its own versions uses it (the joblib front sends
    version 0 while its levels are the base): the worker started with a level the parent
    has since unset again, so version 0, "the base", must not be taken for "already applied".
    """
    from logexec._channel import LogChannel, current_levels, initialize, run_task
    from logexec._dispatch import Dispatcher

    name = "tests.levels.off_base"
    channel = LogChannel(Dispatcher(None))
    channel.config.levels = base = current_levels()
    config = channel.open()
    try:
        logging.getLogger(name).setLevel(logging.ERROR)  # in force when the worker starts
        with ProcessPoolExecutor(
            1, mp_context=mp_context, initializer=initialize, initargs=(config, None, ())
        ) as pool:
            # Outside logexec's task bracket: the levels the worker started with.
            first = pool.submit(tasks.levels_of, [name])
            # Only after the worker forked, as the executor does: never fork with a thread running.
            channel.start()
            started = first.result(timeout=RESULT_TIMEOUT)
            logging.getLogger(name).setLevel(logging.NOTSET)  # back to the base
            update = (0, {}, base[1])
            after = pool.submit(run_task, 1, (), None, update, tasks.levels_of, [name]).result(
                timeout=RESULT_TIMEOUT
            )
    finally:
        channel.stop()
    assert started[name][0] == logging.ERROR
    assert after[name][0] == logging.NOTSET
