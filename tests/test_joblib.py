"""The joblib backend: logexec's guarantees on joblib's loky pool, with loky's features kept."""

from __future__ import annotations

import contextvars
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import joblib_tasks

joblib = pytest.importorskip("joblib", reason="joblib is not installed (pip install '.[joblib]')")

from joblib import Parallel, delayed, parallel_config  # noqa: E402  # after the skip

from logexec.joblib import LogexecBackend, register_logexec  # noqa: E402
from logexec.joblib import _channel as _joblib_channel  # noqa: E402

# Generous: a test that needs a new pool waits for loky to start one, ~30 s at worst on a
# loaded 2-CPU machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

JOBLIB_VERSION = tuple(int(part) for part in joblib.__version__.split(".")[:2])
# loky's own method last: the pool it leaves serves the tests after it.
LOKY_START_METHODS = ["spawn", "forkserver", "loky"]
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("REQUEST_ID")


@pytest.fixture(autouse=True)
def registered() -> None:
    """Every test finds the backend registered under its default name."""
    register_logexec()


@pytest.fixture(autouse=True, scope="module")
def no_threads_left_behind() -> Iterator[None]:
    """After this module, loky's pool and logexec's listener are gone (later tests fork)."""
    yield
    _shut_down_loky_executor()
    _joblib_channel.stop()
    names = [thread.name for thread in threading.enumerate()]
    assert "logexec-listener" not in names, names


@pytest.fixture(params=LOKY_START_METHODS)
def loky_start_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test on each of loky's start methods (its reusable pool refuses plain fork)."""
    from joblib.externals.loky.backend import context

    method: str = request.param
    previous = context.get_start_method()
    if method == previous:
        yield method  # the pool, if any, already uses it: keep it for the next tests
        return
    context.set_start_method(method, force=True)
    _shut_down_loky_executor()  # loky would reuse one started with another method
    yield method
    context.set_start_method(previous, force=True)
    _shut_down_loky_executor()


def _shut_down_loky_executor() -> None:
    # Test-only use of loky's private singleton: the start method is not among the
    # arguments loky compares before reusing its executor.
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor
    if executor is not None:
        executor.shutdown(wait=True)


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def values_of(records: list[logging.LogRecord]) -> list[int]:
    return sorted(record.value for record in records if hasattr(record, "value"))  # type: ignore[attr-defined]


def test_records_handled_before_parallel_returns(collect: Any, loky_start_method: str) -> None:
    """When Parallel returns, every record its tasks logged has been handled by the parent."""
    handler = collect("tests.joblib")
    with parallel_config(backend="logexec", n_jobs=2):
        results = Parallel()(delayed(joblib_tasks.log_and_return)(value, 3) for value in range(20))
    assert results == list(range(20))
    assert values_of(handler.records) == sorted(list(range(20)) * 3)
    assert all(record.process != os.getpid() for record in handler.records)


def test_caplog_sees_worker_records(caplog: pytest.LogCaptureFixture) -> None:
    """pytest's caplog captures the workers' records, at the level it set."""
    caplog.set_level(logging.INFO, logger="tests.joblib")
    with parallel_config(backend="logexec", n_jobs=2):
        Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(4))
    assert sorted(record.getMessage() for record in caplog.records if record.name == "tests.joblib") == [
        f"value {value} record 0" for value in range(4)
    ]


def test_handlers_option_gets_every_record_instead(collect: Any) -> None:
    """With handlers=, records go to exactly those handlers and not to the logger tree."""
    from tests.conftest import ListHandler

    tree = collect("tests.joblib")
    chosen = ListHandler()
    register_logexec("logexec-handlers", handlers=[chosen])
    with parallel_config(backend="logexec-handlers", n_jobs=2):
        Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(4))
    assert values_of(chosen.records) == [0, 1, 2, 3]
    assert tree.records == []
    per_call = ListHandler()
    with parallel_config(backend="logexec", n_jobs=2, handlers=[per_call]):
        Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(2))
    assert values_of(per_call.records) == [0, 1]
    assert tree.records == []


def test_levels_mirrored_and_followed_by_reused_workers(collect: Any) -> None:
    """Workers filter at the parent's levels in force at each call, even workers kept from before."""
    collect(level=logging.DEBUG)
    logging.getLogger("tests.noisy").setLevel(logging.WARNING)
    with parallel_config(backend="logexec", n_jobs=2):
        first = Parallel()(delayed(joblib_tasks.enabled_levels)() for _ in range(2))
        pids_before = set(Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(4)))
        logging.getLogger("tests.noisy").setLevel(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
        second = Parallel()(delayed(joblib_tasks.enabled_levels)() for _ in range(2))
        pids_after = set(Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(4)))
    assert first[0] == [
        "tests.joblib:DEBUG",
        "tests.joblib:INFO",
        "tests.joblib:WARNING",
        "tests.noisy:WARNING",
    ]
    assert second[0] == ["tests.joblib:WARNING", "tests.noisy:WARNING"]
    assert pids_after & pids_before, "the workers were not reused"


def test_user_exception_raised_and_its_records_kept(collect: Any) -> None:
    """The task's exception is raised from Parallel; what the failing task logged is handled."""
    handler = collect("tests.joblib")
    with parallel_config(backend="logexec", n_jobs=2), pytest.raises(KeyError, match="failed on purpose"):
        Parallel()(delayed(joblib_tasks.log_then_raise)(value) for value in range(6))
    assert "before raising 3" in handler.messages()


def test_lambdas_and_local_functions(collect: Any) -> None:
    """Lambdas and locally defined functions run (loky's cloudpickle) and their records arrive."""
    handler = collect("tests.local")

    def local(value: int) -> int:
        logging.getLogger("tests.local").info("local %d", value)
        return value + 1

    with parallel_config(backend="logexec", n_jobs=2):
        from_local = Parallel()(delayed(local)(value) for value in range(3))
        from_lambda = Parallel()(
            delayed(lambda value: logging.getLogger("tests.local").info("lambda %d", value) or value)(value)
            for value in range(3)
        )
    assert from_local == [1, 2, 3]
    assert from_lambda == [0, 1, 2]
    assert sorted(handler.messages()) == sorted(
        [f"local {v}" for v in range(3)] + [f"lambda {v}" for v in range(3)]
    )


def test_large_numpy_arguments_are_memory_mapped(collect: Any) -> None:
    """A NumPy argument above max_nbytes (1 MB by default) reaches the worker as a memmap, as with loky."""
    numpy = pytest.importorskip("numpy")
    handler = collect("tests.joblib")
    # Above the default threshold rather than a lower max_nbytes: that would change the
    # executor's arguments and cost a new pool (slow on a loaded machine).
    array = numpy.ones(200_000)
    with parallel_config(backend="logexec", n_jobs=2):
        results = Parallel()(delayed(joblib_tasks.describe_array)(array) for _ in range(2))
    assert results == [("memmap", 200_000.0)] * 2
    assert handler.messages() == ["got a memmap summing to 200000.0"] * 2


def test_inner_max_num_threads_caps_worker_threads() -> None:
    """inner_max_num_threads limits the numeric libraries' threads in the workers, as with loky."""
    with parallel_config(backend="logexec", n_jobs=2, inner_max_num_threads=1):
        caps = Parallel()(delayed(joblib_tasks.thread_caps)() for _ in range(2))
    assert caps[0]["OMP_NUM_THREADS"] == "1"
    assert caps[0]["OPENBLAS_NUM_THREADS"] == "1"
    if caps[0]["pools"] is not None:
        assert caps[0]["pools"] in ([], [1])


@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_generator_yields_only_logged_results(collect: Any, return_as: str) -> None:
    """Each result a generator yields comes after that task's records were handled."""
    if return_as == "generator_unordered" and JOBLIB_VERSION < (1, 4):
        pytest.skip("return_as='generator_unordered' needs joblib 1.4")
    handler = collect("tests.joblib")
    seen = []
    with parallel_config(backend="logexec", n_jobs=2):
        for value in Parallel(return_as=return_as)(
            delayed(joblib_tasks.log_and_return)(value, 2) for value in range(10)
        ):
            assert values_of(handler.records).count(value) == 2, f"result {value} came before its records"
            seen.append(value)
    assert sorted(seen) == list(range(10))
    if return_as == "generator":
        assert seen == list(range(10))


def test_workers_and_listener_reused_across_calls() -> None:
    """Successive Parallel calls reuse the workers, one listener thread and one socket directory."""
    with parallel_config(backend="logexec", n_jobs=2):
        Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(4))
        channel = _joblib_channel._channel
        threads_before = threading.active_count()
        pids: set[int] = set()
        for _ in range(10):
            pids |= set(Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(4)))
        assert _joblib_channel._channel is channel
    assert channel is not None
    assert len(pids) <= 2
    assert threading.active_count() <= threads_before
    assert [thread.name for thread in threading.enumerate()].count("logexec-listener") == 1


def test_listener_stops_when_loky_drops_the_executor() -> None:
    """Once plain loky replaces the logexec executor, the listener stops and its directory goes."""
    with parallel_config(backend="logexec", n_jobs=2):
        Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(2))
    channel = _joblib_channel._channel
    assert channel is not None
    directory = os.path.dirname(channel.listener.address)
    Parallel(n_jobs=2, backend="loky")(delayed(joblib_tasks.pid_after_logging)(value) for value in range(2))
    assert wait_for(lambda: channel.listener.wait_stopped(0) and not os.path.exists(directory))
    assert wait_for(lambda: "logexec-listener" not in [thread.name for thread in threading.enumerate()])
    with parallel_config(backend="logexec", n_jobs=2):
        assert Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(2)) == [0, 1]


@pytest.mark.crash
def test_killed_worker_records_arrive_and_next_call_works(collect: Any) -> None:
    """A worker killed by SIGKILL loses none of the records it logged; the next call runs."""
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    handler = collect("tests.joblib")
    with parallel_config(backend="logexec", n_jobs=2):
        with pytest.raises(TerminatedWorkerError):
            Parallel()(delayed(joblib_tasks.log_then_die)(200) for _ in range(1))
        expected = [f"before the kill {counter}" for counter in range(200)]
        assert wait_for(lambda: handler.messages()[:200] == expected), handler.messages()[-3:]
        assert Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(4)) == [0, 1, 2, 3]
    assert values_of(handler.records) == [0, 1, 2, 3]


# The abandoned tasks sleep far longer than a new pool takes to start even on a loaded
# machine (up to ~30 s measured with 2 CPUs and a load average of 15), so only waiting for
# them could make these tests exceed the bound.
ABANDONED_SECONDS = 300
BOUND_SECONDS = 75


@pytest.mark.timeout(120)
def test_timeout_raises_and_next_call_does_not_wait() -> None:
    """timeout= raises TimeoutError, and the next call does not wait for the abandoned work."""
    with parallel_config(backend="logexec", n_jobs=2):
        started = time.monotonic()
        # joblib raises multiprocessing.TimeoutError, which is not the builtin one.
        with pytest.raises((TimeoutError, multiprocessing.TimeoutError)):
            Parallel(timeout=0.5)(delayed(joblib_tasks.sleep_then_log)(ABANDONED_SECONDS) for _ in range(2))
        assert Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(2)) == [0, 1]
    assert time.monotonic() - started < BOUND_SECONDS


@pytest.mark.timeout(120)
def test_error_aborts_remaining_work() -> None:
    """After a task fails, long tasks still queued are abandoned, not waited for."""
    with parallel_config(backend="logexec", n_jobs=2):
        started = time.monotonic()
        with pytest.raises(KeyError):
            Parallel(batch_size=1)(
                delayed(joblib_tasks.log_then_raise)(3)
                if index == 0
                else delayed(joblib_tasks.sleep_then_log)(ABANDONED_SECONDS)
                for index in range(6)
            )
        assert Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(2)) == [0, 1]
    assert time.monotonic() - started < BOUND_SECONDS


def test_nested_parallel_falls_back_to_threads(collect: Any) -> None:
    """A Parallel inside a task runs on threads in that worker (as with loky) and its records arrive."""
    handler = collect("tests.joblib")
    with parallel_config(backend="logexec", n_jobs=2):
        inner = Parallel()(delayed(joblib_tasks.nested_parallel)(3) for _ in range(2))
    for pids in inner:
        assert len(set(pids)) == 1 and pids[0] != os.getpid()
    assert handler.messages().count("outer task starts 3 inner items") == 2
    assert sum(message.startswith("value ") for message in handler.messages()) == 6


def test_sequential_configuration_makes_no_channel() -> None:
    """n_jobs=1 falls back to joblib's sequential backend without starting logexec's listener."""
    from joblib._parallel_backends import FallbackToBackend, SequentialBackend

    backend = LogexecBackend()
    with pytest.raises(FallbackToBackend) as fallback:
        backend.configure(n_jobs=1, parallel=None)
    assert isinstance(fallback.value.backend, SequentialBackend)
    assert backend._logexec_channel is None


def test_n_jobs_minus_one_and_one(collect: Any) -> None:
    """n_jobs=-1 uses every CPU; n_jobs=1 runs in this process, as loky falls back to sequential."""
    handler = collect("tests.joblib")
    with parallel_config(backend="logexec", n_jobs=-1):
        assert Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(4)) == [0, 1, 2, 3]
    with parallel_config(backend="logexec", n_jobs=1):
        assert (
            Parallel()(delayed(joblib_tasks.pid_after_logging)(value) for value in range(2))
            == [os.getpid()] * 2
        )
    assert values_of(handler.records) == [0, 1, 2, 3]


def test_parent_filters_see_the_callers_context(collect: Any) -> None:
    """A parent-side filter reading a contextvar sees the value set where Parallel was called."""
    handler = collect("tests.joblib")
    seen: list[str] = []

    def remember(record: logging.LogRecord) -> bool:
        seen.append(REQUEST_ID.get("<unset>"))
        return True

    handler.addFilter(remember)
    token = REQUEST_ID.set("request-7")
    try:
        with parallel_config(backend="logexec", n_jobs=2):
            Parallel(batch_size=1)(delayed(joblib_tasks.log_and_return)(value) for value in range(6))
    finally:
        REQUEST_ID.reset(token)
    assert seen == ["request-7"] * 6


def test_user_initializer_runs_after_set_up_and_logs(collect: Any) -> None:
    """A user initializer given to the backend runs in each new worker and its records arrive."""
    handler = collect("tests.joblib.init")
    register_logexec("logexec-init", initializer=joblib_tasks.log_in_initializer, initargs=("tag-1",))
    with parallel_config(backend="logexec-init", n_jobs=2):
        Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(4))
    assert wait_for(lambda: "initializer ran with tag-1" in handler.messages())


def test_forked_child_inherits_no_channel_and_no_held_lock() -> None:
    """A child forked while the channel exists and its lock is held starts with neither."""
    with parallel_config(backend="logexec", n_jobs=2):
        Parallel()(delayed(joblib_tasks.log_and_return)(value) for value in range(2))
    assert _joblib_channel._channel is not None
    with _joblib_channel._lock:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code only, never return into pytest
            fresh = _joblib_channel._channel is None and _joblib_channel._lock.acquire(blocking=False)
            os._exit(0 if fresh else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_argument_errors_name_the_parameter() -> None:
    """register_logexec rejects bad arguments with the parameter's name and the value."""
    with pytest.raises(TypeError, match="name must be a non-empty str, got ''"):
        register_logexec("")
    with pytest.raises(TypeError, match=r"handlers\[0\] must be a logging.Handler"):
        register_logexec(handlers=["not a handler"])
    with pytest.raises(TypeError, match="initializer must be a callable or None, got 3"):
        LogexecBackend(initializer=3)
    with pytest.raises(TypeError, match="initargs must be a tuple, got 'ab'"):
        register_logexec("logexec-bad", initializer=print, initargs="ab")


class TestScikitLearn:
    """scikit-learn's n_jobs= runs on the backend, and records from fit arrive."""

    @pytest.fixture(autouse=True)
    def _need_sklearn(self) -> None:
        pytest.importorskip("sklearn", reason="scikit-learn is not installed")

    def test_cross_val_score_logs_from_fit(self, caplog: pytest.LogCaptureFixture) -> None:
        """cross_val_score(n_jobs=2): each fold's fit record is in caplog when it returns."""
        from sklearn.datasets import load_iris
        from sklearn.model_selection import cross_val_score

        from tests import sklearn_tasks

        caplog.set_level(logging.INFO, logger="tests.joblib")
        features, labels = load_iris(return_X_y=True)
        with parallel_config(backend="logexec"):
            scores = cross_val_score(sklearn_tasks.LoggingClassifier(), features, labels, cv=3, n_jobs=2)
        assert len(scores) == 3
        fits = [record for record in caplog.records if record.getMessage().startswith("fit with")]
        assert len(fits) == 3
        assert all(record.process != os.getpid() for record in fits)

    def test_grid_search_logs_from_fit(self, collect: Any) -> None:
        """GridSearchCV(n_jobs=2): every candidate's fits log, with their parameter."""
        from sklearn.datasets import load_iris
        from sklearn.model_selection import GridSearchCV

        from tests import sklearn_tasks

        handler = collect("tests.joblib")
        features, labels = load_iris(return_X_y=True)
        search = GridSearchCV(sklearn_tasks.LoggingClassifier(), {"strength": [0.5, 1.0]}, cv=2, n_jobs=2)
        with parallel_config(backend="logexec"):
            search.fit(features, labels)
        fold_fits = [message for message in handler.messages() if message.endswith(" on 75 rows")]
        assert (
            sorted(fold_fits)
            == ["fit with strength 0.5 on 75 rows"] * 2 + ["fit with strength 1.0 on 75 rows"] * 2
        )


def test_a_batch_carries_only_the_levels_that_changed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 2,000 configured loggers, a batch's size does not grow with them, set or changed."""
    import pickle

    from logexec.joblib import _compat as _joblib_compat

    for index in range(2000):
        logging.getLogger(f"tests.joblib.many.{index}").setLevel(logging.ERROR)
    # The channel fixes its base levels when it is made: make it now, with these loggers.
    _shut_down_loky_executor()
    _joblib_channel.stop()
    sizes: list[int] = []
    submit = _joblib_compat.LokyBackendBase.submit

    def spy(self: Any, func: Callable[[], Any], callback: Any = None) -> Any:
        sizes.append(len(pickle.dumps(func)))
        return submit(self, func, callback)

    monkeypatch.setattr(_joblib_compat.LokyBackendBase, "submit", spy)
    logging.getLogger("tests.noisy").setLevel(logging.INFO)
    try:
        with parallel_config(backend="logexec", n_jobs=2):
            first = Parallel()(delayed(joblib_tasks.enabled_levels)() for _ in range(2))
            logging.getLogger("tests.noisy").setLevel(logging.DEBUG)  # one change, as caplog.set_level makes
            second = Parallel()(delayed(joblib_tasks.enabled_levels)() for _ in range(2))
    finally:
        # Later tests unset these loggers: each of their batches would carry 2,000 changes.
        for index in range(2000):
            logging.getLogger(f"tests.joblib.many.{index}").setLevel(logging.NOTSET)
        _shut_down_loky_executor()
        _joblib_channel.stop()
    assert all("tests.noisy:DEBUG" not in enabled for enabled in first)
    assert all("tests.noisy:DEBUG" in enabled for enabled in second)
    # The whole table is some 50 KB; a batch of one call and one changed logger, well under 2 KB.
    assert sizes and max(sizes) < 2000, sizes
