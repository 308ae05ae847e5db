"""LoggingDaskExecutor on a loopback LocalCluster(processes=True), shared by the module.

Skipped where ``distributed`` is not installed, except the test of the ImportError itself:
the unit tests of the worker's wrapper too, since ``logexec.dask``'s package imports it.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import dask_tasks
from tests.conftest import ListHandler

# Generous: a loaded CI machine may be slow, but no single step here should take long.
RESULT_TIMEOUT = 30


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One loopback cluster for the whole module: two worker processes, one thread each."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        host="127.0.0.1",
        # No dashboard, but the scheduler still serves HTTP (health, metrics), on 8787 by
        # default: when another cluster holds that port (a parallel test run), distributed
        # warns "Port 8787 is already in use" in the middle of a passing run. A free port
        # on loopback instead.
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    ) as local_cluster:
        yield local_cluster


@pytest.fixture(scope="module")
def client(cluster: Any) -> Iterator[Any]:
    distributed = pytest.importorskip("distributed")
    with distributed.Client(cluster, set_as_default=False) as dask_client:
        yield dask_client


@pytest.fixture
def make_executor(client: Any) -> Iterator[Callable[..., Any]]:
    """Build LoggingDaskExecutors on the shared client; each is shut down afterwards."""
    from logexec.dask import LoggingDaskExecutor

    made: list[Any] = []

    def make(dask_client: Any = None, **options: Any) -> Any:
        executor = LoggingDaskExecutor(client if dask_client is None else dask_client, **options)
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.shutdown(wait=True, cancel_futures=True)


def dask_private(name: str) -> Any:
    """A private module of logexec.dask, whose package imports distributed: skipped without it."""
    pytest.importorskip("distributed")
    return importlib.import_module(f"logexec.dask.{name}")


def messages(handler: ListHandler) -> list[str]:
    return handler.messages()


# The optional extra ------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_import_without_distributed_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without distributed, importing logexec.dask raises an ImportError naming the extra."""
    monkeypatch.setitem(sys.modules, "distributed", None)
    monkeypatch.delitem(sys.modules, "logexec.dask", raising=False)
    message = r"pip install distributed \(from a checkout of logexec: pip install '\.\[dask\]'\)"
    with pytest.raises(ImportError, match=message):
        importlib.import_module("logexec.dask")


# The worker side, in this process (no cluster) -------------------------------------------


class ListSender:
    """Stands in for the worker's stream: keeps events, and timers to fire by hand."""

    def __init__(self) -> None:
        self.events: list[list[Any]] = []
        self.timers: list[Callable[[], None]] = []

    def send(self, event: list[Any]) -> None:
        self.events.append(event)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.timers.append(callback)

    def records(self) -> list[logging.LogRecord]:
        from logexec import _records

        return [
            _records.build_record(_records.decode_values(payload))[1]
            for event in self.events
            if event[4]
            for payload in pickle.loads(event[4])
        ]


def run_here(sender: ListSender, task_id: int, levels: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """Run the worker's task wrapper in this process, its events going to ``sender``."""
    _dask_worker = dask_private("_worker")

    return _dask_worker.execute(sender, task_id, levels, (), None, fn, args, {})


def test_worker_wrapper_collects_only_its_own_context() -> None:
    """The task wrapper sends the task's records, and none logged elsewhere meanwhile."""

    def task() -> int:
        dask_tasks.LOGGER.warning("mine")
        other = threading.Thread(target=dask_tasks.LOGGER.warning, args=("not mine",))
        other.start()
        other.join(timeout=10)
        return 7

    sender = ListSender()
    run_id, total, value = run_here(sender, 3, ({"": logging.WARNING}, 0), task)
    assert (total, value) == (1, 7)
    assert [record.getMessage() for record in sender.records()] == ["mine"]
    assert [event[:4] for event in sender.events] == [[3, run_id, 0, -1]]  # sent at once
    assert not any(type(handler).__name__ == "_TaskHandler" for handler in logging.getLogger().handlers)


def test_worker_batches_are_bounded_and_numbered() -> None:
    """A batch never exceeds MAX_BATCH_RECORDS; sequence numbers run on; the last event has the total."""
    _dask_worker = dask_private("_worker")

    sender = ListSender()
    count = 2 * _dask_worker.MAX_BATCH_RECORDS + 10
    _, total, _ = run_here(sender, 1, ({"": logging.WARNING}, 0), dask_tasks.log_messages, "b", count)
    assert total == count
    sizes = [len(pickle.loads(event[4])) for event in sender.events]
    assert max(sizes) <= _dask_worker.MAX_BATCH_RECORDS
    assert [event[2] for event in sender.events] == [sum(sizes[:i]) for i in range(len(sizes))]
    assert [event[3] for event in sender.events] == [_dask_worker.NOT_LAST] * (len(sizes) - 1) + [count]
    assert [record.getMessage() for record in sender.records()] == [f"b {i}" for i in range(count)]


def test_worker_timer_sends_a_partial_batch() -> None:
    """A record after a quiet spell goes at once; the next ones wait for the timer, not for the task's end."""
    sender = ListSender()
    seen_during_task: list[int] = []

    def task() -> None:
        dask_tasks.LOGGER.warning("first")  # nothing sent yet: goes at once
        seen_during_task.append(len(sender.events))
        dask_tasks.LOGGER.warning("second")  # right after: waits in the batch
        dask_tasks.LOGGER.warning("third")
        assert len(sender.timers) == 1 and len(sender.events) == 1
        sender.timers.pop()()  # the worker's loop would fire it within FLUSH_INTERVAL
        seen_during_task.append(len(sender.events))

    run_here(sender, 2, ({"": logging.WARNING}, 0), task)
    assert seen_during_task == [1, 2]
    assert [event[2:4] for event in sender.events] == [[0, -1], [1, -1]]  # the result says 3
    assert [record.getMessage() for record in sender.records()] == ["first", "second", "third"]


def test_worker_failure_sends_the_total_then_raises() -> None:
    """A task that raises: its records and total are sent first, then the exception propagates to Dask."""
    sender = ListSender()
    with pytest.raises(LookupError, match="after 3 records"):
        run_here(sender, 4, ({"": logging.WARNING}, 0), dask_tasks.log_many_then_raise, "f", 3)
    assert sender.events[-1][3] == 3
    assert len(sender.records()) == 3


def test_worker_silent_success_sends_nothing() -> None:
    """A task that logs nothing and succeeds sends no event; its result says 0 records."""
    sender = ListSender()
    _, total, value = run_here(sender, 5, ({"": logging.WARNING}, 0), dask_tasks.add, 1, 2)
    assert (total, value, sender.events) == (0, 3, [])


def test_worker_levels_are_lowered_only_while_tasks_run() -> None:
    """Levels go down to the lowest a running task asks for, and back when the last one ends."""
    _dask_worker = dask_private("_worker")

    lease = _dask_worker._LoggingLease()
    app = logging.getLogger("tests.dask.lease")
    logging.getLogger().setLevel(logging.WARNING)
    first = lease.acquire({"": logging.INFO, "tests.dask.lease": logging.DEBUG})
    second = lease.acquire({"": logging.ERROR})
    assert logging.getLogger().level == logging.INFO  # lowered, never raised
    assert app.level == logging.DEBUG
    assert sum(type(h).__name__ == "_TaskHandler" for h in logging.getLogger().handlers) == 1
    lease.release(first)
    assert logging.getLogger().level == logging.WARNING
    assert app.level == logging.NOTSET
    lease.release(second)
    assert logging.getLogger().level == logging.WARNING
    assert not any(type(h).__name__ == "_TaskHandler" for h in logging.getLogger().handlers)


def test_worker_level_changed_meanwhile_is_kept() -> None:
    """A level that someone else set while a task ran is not overwritten when it ends."""
    _dask_worker = dask_private("_worker")

    lease = _dask_worker._LoggingLease()
    logging.getLogger().setLevel(logging.WARNING)
    held = lease.acquire({"": logging.DEBUG})
    logging.getLogger().setLevel(logging.CRITICAL)
    lease.release(held)
    assert logging.getLogger().level == logging.CRITICAL


def test_worker_filters_by_its_own_drivers_levels() -> None:
    """A task whose driver wants WARNING gets no INFO, even while another task lowered root."""
    _dask_worker = dask_private("_worker")

    lease = _dask_worker._LEASE  # the one run_task uses, as another task would hold it
    other = lease.acquire({"": logging.DEBUG})
    try:

        def task() -> None:
            dask_tasks.LOGGER.info("too low")
            dask_tasks.LOGGER.warning("kept")

        sender = ListSender()
        run_here(sender, 4, ({"": logging.WARNING}, 0), task)
    finally:
        lease.release(other)
    assert [record.getMessage() for record in sender.records()] == ["kept"]


def test_worker_handler_misses_no_record_when_another_root_handler_goes() -> None:
    """A root handler removed while a record is being handled (Dask's forward_logging does
    that on the worker's event loop, meanwhile the task logs) costs the task none of it."""

    class RemovesItself(logging.Handler):
        """Removed mid-iteration, as another thread may remove it: deterministically."""

        def emit(self, record: logging.LogRecord) -> None:
            logging.getLogger().removeHandler(self)

    logging.getLogger().addHandler(RemovesItself())  # before the task's, as a plugin's would be

    def task() -> int:
        for number in range(3):
            dask_tasks.LOGGER.warning("record %d", number)
        return 3

    sender = ListSender()
    run_here(sender, 4, ({"": logging.WARNING}, 0), task)
    assert [record.getMessage() for record in sender.records()] == ["record 0", "record 1", "record 2"]


def test_worker_late_record_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """A record logged in a task's context after the task returned is written to stderr, not lost."""
    import contextvars

    _dask_worker = dask_private("_worker")

    release = threading.Event()
    late = threading.Thread()

    def task() -> None:
        nonlocal late

        def log_later() -> None:
            release.wait(timeout=10)
            dask_tasks.LOGGER.warning("too late")

        late = threading.Thread(target=contextvars.copy_context().run, args=(log_later,))
        late.start()

    sender = ListSender()
    run_here(sender, 5, ({"": logging.WARNING}, 0), task)
    holder = _dask_worker._LEASE.acquire({"": logging.WARNING})  # keep the handler installed
    try:
        release.set()
        late.join(timeout=10)
    finally:
        _dask_worker._LEASE.release(holder)
    assert sender.records() == []
    assert "too late" in capsys.readouterr().err


# The driver side, in this process (a stand-in client, no cluster) ----------------------------


class FakeClient:
    """Just what the driver's receiver calls on a distributed.Client."""

    id = "fake-client"
    status = "running"

    def __init__(self) -> None:
        self.handlers: dict[str, Callable[[Any], None]] = {}

    def subscribe_topic(self, topic: str, handler: Callable[[Any], None]) -> None:
        self.handlers[topic] = handler

    def unsubscribe_topic(self, topic: str) -> None:
        self.handlers.pop(topic, None)

    def run_on_scheduler(self, function: Callable[..., Any], *args: Any) -> bool:
        return True

    def gather(self, futures: list[Any]) -> list[Any]:
        return [future.value for future in futures]


class FakeDaskFuture:
    def __init__(self, status: str, value: Any = None, error: BaseException | None = None) -> None:
        self.status = status
        self.value = value
        self.error = error

    def exception(self) -> BaseException | None:
        return self.error

    def traceback(self) -> None:
        return None


def event(task_id: int, run_id: str, first: int, total: int, messages: list[str]) -> tuple[float, list[Any]]:
    """An event as the client's handler receives it: (time, [task, run, first, total, records])."""
    from logexec import _records

    payloads = [
        _records.encode_values(
            _records.record_values(
                logging.LogRecord("tests.dask", logging.WARNING, __file__, 1, message, None, None), task_id
            )
        )
        for message in messages
    ]
    return (time.time(), [task_id, run_id, first, total, pickle.dumps(payloads) if payloads else b""])


@pytest.fixture(scope="module")
def logexec_dask() -> Any:
    """logexec.dask, imported before any test's logging snapshot.

    Module scope matters: the autouse clean_logging fixture resets loggers created during a test,
    and importing distributed creates its loggers (propagate=False); reset, they would spill into root.
    """
    pytest.importorskip("distributed")
    return importlib.import_module("logexec.dask")


@pytest.fixture
def receiver(logexec_dask: Any) -> Iterator[tuple[Any, FakeClient, ListHandler]]:
    """A driver-side receiver on a stand-in client, dispatching to one ListHandler; closed afterwards."""
    from logexec._dispatch import Dispatcher
    from logexec.dask._receiver import Receiver

    client = FakeClient()
    handler = ListHandler()
    made = Receiver(client, Dispatcher((handler,)), "logexec-test")
    yield made, client, handler
    made.close(wait=True)


def submitted(receiver: Any, task_id: int, dask_future: FakeDaskFuture) -> Any:
    from concurrent.futures import Future

    from logexec.dask._receiver import Task

    task = Task(task_id, Future())
    task.dask_future = dask_future
    receiver.add(task)
    return task


def test_driver_handles_batches_in_sequence_order(receiver: tuple[Any, FakeClient, ListHandler]) -> None:
    """Batches that arrive out of order are handled in the worker's order, and marked with their attempt."""
    made, client, handler = receiver
    task = submitted(made, 1, FakeDaskFuture("finished", value=("run-a", 4, "value")))
    deliver = client.handlers["logexec-test"]
    deliver(event(1, "run-a", 2, -1, ["r2", "r3"]))
    deliver(event(1, "run-a", 0, -1, ["r0", "r1"]))
    made.arrived(task)
    assert task.future.result(timeout=RESULT_TIMEOUT) == "value"
    assert messages(handler) == ["r0", "r1", "r2", "r3"]
    assert {getattr(record, "dask_attempt", None) for record in handler.records} == {1}


def test_driver_waits_for_the_count_not_for_luck(receiver: tuple[Any, FakeClient, ListHandler]) -> None:
    """An erred task whose last records arrive after Dask's outcome completes only once they are handled."""
    made, client, handler = receiver
    task = submitted(made, 2, FakeDaskFuture("error", error=KeyError("late")))
    deliver = client.handlers["logexec-test"]
    deliver(event(2, "run-b", 0, -1, ["b0"]))
    made.arrived(task)
    with pytest.raises(TimeoutError):
        task.future.result(timeout=0.3)  # Dask said "erred", but the run's total is not known yet
    deliver(event(2, "run-b", 1, 3, ["b1", "b2"]))  # ... an erred run's last event says 3
    with pytest.raises(KeyError, match="late"):
        task.future.result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["b0", "b1", "b2"]


def test_driver_reports_records_that_never_arrive(
    receiver: tuple[Any, FakeClient, ListHandler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records the count says are missing: the future completes after a timeout, with an error record."""
    _dask_receiver = dask_private("_receiver")

    monkeypatch.setattr(_dask_receiver, "LATE_RECORDS_TIMEOUT", 0.3)
    reports = ListHandler()
    logging.getLogger("logexec").addHandler(reports)
    made, client, handler = receiver
    task = submitted(made, 3, FakeDaskFuture("finished", value=("run-c", 3, "value")))
    client.handlers["logexec-test"](event(3, "run-c", 0, -1, ["c0"]))
    made.arrived(task)
    begin = time.monotonic()
    assert task.future.result(timeout=RESULT_TIMEOUT) == "value"
    assert time.monotonic() - begin >= 0.25
    assert messages(handler) == ["c0"]
    assert any("2 record(s) of Dask task 3 did not reach the driver" in m for m in messages(reports))


# Arguments ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_rejects_what_is_not_a_client(client: Any) -> None:
    """The client argument must be a distributed.Client, and the error names it."""
    from logexec.dask import LoggingDaskExecutor

    with pytest.raises(TypeError, match=r"client must be a distributed\.Client"):
        LoggingDaskExecutor("tcp://127.0.0.1:8786")


@pytest.mark.integration
def test_rejects_bad_handlers(client: Any) -> None:
    """handlers= is validated like LoggingProcessPoolExecutor's."""
    from logexec.dask import LoggingDaskExecutor

    with pytest.raises(TypeError, match="handlers must be None or a sequence"):
        LoggingDaskExecutor(client, handlers=logging.StreamHandler())


@pytest.mark.integration
def test_rejects_bad_submit_options(client: Any) -> None:
    """Options for client.submit are checked at construction, and each error names its parameter."""
    from logexec.dask import LoggingDaskExecutor

    with pytest.raises(TypeError, match=r"unexpected keyword argument.*key"):
        LoggingDaskExecutor(client, key="fixed")
    with pytest.raises(ValueError, match="pure must be False"):
        LoggingDaskExecutor(client, pure=True)
    with pytest.raises(ValueError, match="retries must be None or an int >= 0, got -1"):
        LoggingDaskExecutor(client, retries=-1)
    with pytest.raises(TypeError, match="priority must be a number"):
        LoggingDaskExecutor(client, priority="high")
    with pytest.raises(TypeError, match="resources must be None or a mapping"):
        LoggingDaskExecutor(client, resources=["GPU"])


@pytest.mark.integration
def test_submit_options_reach_dask(client: Any, make_executor: Callable[..., Any]) -> None:
    """workers= (like every submit option) is passed to client.submit: the tasks run where it says."""
    pids = client.run(dask_tasks.worker_pid)
    address, pid = sorted(pids.items())[0]
    handler = ListHandler()
    executor = make_executor(handlers=[handler], workers=[address], allow_other_workers=False, priority=5)
    futures = [executor.submit(dask_tasks.log_messages, f"pinned{index}", 1) for index in range(4)]
    for future in futures:
        future.result(timeout=RESULT_TIMEOUT)
    assert {record.process for record in handler.records} == {pid}


# Semantics ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_result_means_logged(make_executor: Callable[..., Any], collect: Callable[..., ListHandler]) -> None:
    """When future.result() returns, the task's records have been handled, in order."""
    handler = collect("tests.dask")
    executor = make_executor()
    for round_number in range(3):
        tag = f"round{round_number}"
        assert executor.submit(dask_tasks.log_messages, tag, 50).result(timeout=RESULT_TIMEOUT) == tag
        assert [m for m in messages(handler) if m.startswith(tag)] == [f"{tag} {i}" for i in range(50)]


@pytest.mark.integration
def test_records_survive_an_exception(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A task that raises still delivers its records, before the exception, with a traceback."""
    handler = collect("tests.dask")
    future = make_executor().submit(dask_tasks.log_then_raise, "failing")
    with pytest.raises(ValueError, match="failing failed") as raised:
        future.result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["failing before"]
    frames = [frame.name for frame in raised.traceback]
    assert "log_then_raise" in frames


@pytest.mark.integration
def test_records_survive_an_exception_that_cannot_travel(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """An exception that neither pickles nor reprs arrives as a RuntimeError naming it, after the records."""
    handler = collect("tests.dask")
    future = make_executor().submit(dask_tasks.log_then_raise_unreportable, "unreportable")
    with pytest.raises(Exception, match="Unreportable"):
        future.result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["unreportable before"]


@pytest.mark.integration
def test_records_survive_an_unsendable_result(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A result that cannot be sent fails the future, but the task's records still arrive."""
    handler = collect("tests.dask")
    future = make_executor().submit(dask_tasks.log_then_return_unsendable, "unsendable")
    with pytest.raises(Exception, match="serialize"):
        future.result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["unsendable before"]


@pytest.mark.integration
def test_record_fidelity_and_unsafe_extras(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Merged message, exc_text and stack_info survive; unpicklable extras become repr()."""
    handler = collect("tests.dask")
    assert make_executor().submit(dask_tasks.log_rich_record).result(timeout=RESULT_TIMEOUT) == "done"
    (record,) = handler.records
    assert record.getMessage() == "merged text and 42"
    assert record.args is None
    assert record.exc_text is not None and "KeyError: 'boom'" in record.exc_text
    assert record.stack_info is not None and "log_rich_record" in record.stack_info
    extras: Any = record
    assert extras.when == datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert isinstance(extras.lock, str) and "lock" in extras.lock
    assert extras.plain == {"a": 1}
    assert record.name == "tests.dask" and record.levelno == logging.ERROR


@pytest.mark.integration
def test_levels_are_mirrored(make_executor: Callable[..., Any]) -> None:
    """Driver levels decide at the source: lower ones reach the driver, others are never sent."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("tests.dask.mirrored").setLevel(logging.DEBUG)
    handler = ListHandler()  # accepts anything that arrives
    executor = make_executor(handlers=[handler])
    executor.submit(dask_tasks.log_to, "tests.dask.mirrored.child", logging.DEBUG, "debug").result(
        timeout=RESULT_TIMEOUT
    )
    executor.submit(dask_tasks.log_to, "tests.dask.other", logging.INFO, "info").result(
        timeout=RESULT_TIMEOUT
    )
    logging.disable(logging.INFO)
    executor.submit(dask_tasks.log_to, "tests.dask.mirrored", logging.INFO, "disabled").result(
        timeout=RESULT_TIMEOUT
    )
    assert messages(handler) == ["debug"]


@pytest.mark.integration
def test_explicit_handlers_bypass_the_tree(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """With handlers=, records go to exactly those handlers, respecting their levels."""
    root_handler = collect()
    chosen = ListHandler()
    too_high = ListHandler(logging.CRITICAL)
    executor = make_executor(handlers=[chosen, too_high])
    executor.submit(dask_tasks.log_messages, "explicit", 2).result(timeout=RESULT_TIMEOUT)
    assert messages(chosen) == ["explicit 0", "explicit 1"]
    assert too_high.records == []
    # The module's cluster runs its scheduler in this process, and its own DEBUG records
    # (``distributed.*``) reach the root at any moment; only they may be there.
    assert [record for record in root_handler.records if not record.name.startswith("distributed")] == []


@pytest.mark.integration
def test_submitter_context_reaches_filters(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A driver-side filter runs in the submitter's context, and propagated values reach the task."""
    handler = collect("tests.dask")
    seen: list[str] = []

    def remember_request(record: logging.LogRecord) -> bool:
        seen.append(dask_tasks.REQUEST_ID.get("unset"))
        return True

    handler.addFilter(remember_request)
    executor = make_executor(propagate_contextvars=[dask_tasks.REQUEST_ID])
    token = dask_tasks.REQUEST_ID.set("req-1")
    try:
        future = executor.submit(dask_tasks.log_request_id)
    finally:
        dask_tasks.REQUEST_ID.reset(token)
    assert future.result(timeout=RESULT_TIMEOUT) == "req-1"
    assert messages(handler) == ["request req-1"]
    assert seen == ["req-1"]


@pytest.mark.integration
def test_map_and_context_manager(client: Any, collect: Callable[..., ListHandler]) -> None:
    """map returns results in order; leaving the with block waits and leaves the client open."""
    from logexec.dask import LoggingDaskExecutor

    handler = collect("tests.dask")
    with LoggingDaskExecutor(client) as executor:
        tags = list(
            executor.map(dask_tasks.log_messages, ["m0", "m1", "m2"], [1, 1, 1], timeout=RESULT_TIMEOUT)
        )
    assert tags == ["m0", "m1", "m2"]
    assert sorted(messages(handler)) == ["m0 0", "m1 0", "m2 0"]
    assert client.status == "running"
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(dask_tasks.add, 1, 2)


@pytest.mark.integration
def test_identical_submits_both_run(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """Tasks are submitted with pure=False: identical submits run, and log, once each."""
    handler = collect("tests.dask")
    executor = make_executor()
    first = executor.submit(dask_tasks.log_once_and_identify, "same")
    second = executor.submit(dask_tasks.log_once_and_identify, "same")
    runs = {first.result(timeout=RESULT_TIMEOUT), second.result(timeout=RESULT_TIMEOUT)}
    assert len(runs) == 2
    assert len(handler.records) == 2


@pytest.mark.integration
def test_a_bad_log_call_never_fails_the_task(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A log call whose message cannot be merged still arrives, and the task succeeds."""
    handler = collect("tests.dask")
    assert make_executor().submit(dask_tasks.log_badly_formatted).result(timeout=RESULT_TIMEOUT) == "survived"
    (record,) = handler.records
    assert "could not merge the message" in record.getMessage()


@pytest.mark.integration
def test_threads_in_the_task_context_are_the_tasks(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """A thread started in the task's context is delivered; one started outside it is not ours."""
    handler = collect("tests.dask")
    make_executor().submit(dask_tasks.log_from_threads, "threads").result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["threads inside"]


@pytest.mark.integration
def test_a_failing_driver_handler_does_not_stop_delivery(make_executor: Callable[..., Any]) -> None:
    """A driver handler that raises is reported via handleError; the next handler and the future go on."""

    class Broken(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            raise RuntimeError("broken handler")

        def handleError(self, record: logging.LogRecord) -> None:
            failures.append(record.getMessage())

    failures: list[str] = []
    after = ListHandler()
    executor = make_executor(handlers=[Broken(), after])
    assert executor.submit(dask_tasks.log_messages, "broken", 2).result(timeout=RESULT_TIMEOUT) == "broken"
    assert messages(after) == ["broken 0", "broken 1"]
    assert failures == ["broken 0", "broken 1"]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_shutdown_can_cancel_waiting_tasks(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """shutdown(cancel_futures=True) cancels what has not finished; finished tasks keep their records."""
    handler = collect("tests.dask")
    executor = make_executor()
    done = executor.submit(dask_tasks.log_messages, "kept", 1)
    done.result(timeout=RESULT_TIMEOUT)
    waiting = [executor.submit(dask_tasks.sleep_then_log, 0.5, f"cancelled{index}") for index in range(20)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(future.done() for future in waiting)
    assert sum(future.cancelled() for future in waiting) >= 15
    assert "kept 0" in messages(handler)


# Live delivery, and Dask's view of the task --------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(40)
def test_records_arrive_while_the_task_runs(make_executor: Callable[..., Any]) -> None:
    """Records logged at the start of a 6-second task are handled within a second, before the task ends."""
    arrived = threading.Event()
    delays: list[float] = []

    class Timing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            delays.append(time.time() - record.created)
            if len(delays) == 2:
                arrived.set()

    future = make_executor(handlers=[Timing()]).submit(dask_tasks.log_then_sleep, "live", 6.0)
    # The first goes at once; the second, right behind it, waits for the worker's flush timer.
    assert arrived.wait(timeout=5.0), f"{len(delays)} of 2 records arrived while the task ran"
    assert not future.done()
    assert max(delays) < 1.0, f"records took {delays} s from the log call to the handler"
    assert future.result(timeout=RESULT_TIMEOUT) == "live"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_retries_deliver_every_attempt(make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """Under retries=2, a task failing twice returns its result, with all 3 attempts' records, marked."""
    handler = ListHandler()
    executor = make_executor(handlers=[handler], retries=2)
    future = executor.submit(dask_tasks.fail_until_attempt, str(tmp_path / "attempts"), 3, "retried")
    assert future.result(timeout=RESULT_TIMEOUT) == "retried succeeded on attempt 3"
    assert messages(handler) == ["retried attempt 1", "retried attempt 2", "retried attempt 3"]
    assert [getattr(record, "dask_attempt", None) for record in handler.records] == [1, 2, 3]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_retries_exhausted_raise_the_last_error(make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """When every attempt fails, the future raises the last one's exception, after every attempt's records."""
    handler = ListHandler()
    executor = make_executor(handlers=[handler], retries=1)
    future = executor.submit(dask_tasks.fail_until_attempt, str(tmp_path / "attempts"), 5, "exhausted")
    with pytest.raises(RuntimeError, match="exhausted attempt 2 failed"):
        future.result(timeout=RESULT_TIMEOUT)
    assert messages(handler) == ["exhausted attempt 1", "exhausted attempt 2"]


@pytest.mark.integration
def test_the_scheduler_sees_a_failing_task_as_erred(client: Any, make_executor: Callable[..., Any]) -> None:
    """A task that raises is an erred task to Dask's scheduler, and our future raises the same exception."""

    def erred_keys(dask_scheduler: Any) -> list[str]:
        return [
            str(transition.key)
            for transition in dask_scheduler.transition_log
            if str(transition.key).startswith("raise_for_the_scheduler-logexec-")
            and transition.finish == "erred"
        ]

    future = make_executor().submit(dask_tasks.raise_for_the_scheduler, "dashboard")
    with pytest.raises(ZeroDivisionError, match="dashboard erred") as raised:
        future.result(timeout=RESULT_TIMEOUT)
    assert "raise_for_the_scheduler" in [frame.name for frame in raised.traceback]
    assert len(client.run_on_scheduler(erred_keys)) == 1


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_result_means_logged_for_300_records_per_task(make_executor: Callable[..., Any]) -> None:
    """With 300 records per task (several batches each), all are handled when result() returns or raises."""
    handler = ListHandler()
    executor = make_executor(handlers=[handler])
    futures = {f"many{i}": executor.submit(dask_tasks.log_messages, f"many{i}", 300) for i in range(6)}
    failing = executor.submit(dask_tasks.log_many_then_raise, "manyfail", 300)
    for tag, future in futures.items():
        assert future.result(timeout=RESULT_TIMEOUT) == tag
        assert [m for m in messages(handler) if m.split()[0] == tag] == [f"{tag} {i}" for i in range(300)]
    with pytest.raises(LookupError):
        failing.result(timeout=RESULT_TIMEOUT)
    failed = [m for m in messages(handler) if m.split()[0] == "manyfail"]
    assert failed == [f"manyfail {i}" for i in range(300)]


# Isolation and hygiene ---------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_executors_and_clients_are_isolated(cluster: Any, make_executor: Callable[..., Any]) -> None:
    """Executors on one client or two see only their own records, whatever other clients do."""
    import distributed

    with distributed.Client(cluster, set_as_default=False) as other_client:
        handlers = {label: ListHandler() for label in ("a", "b", "c")}
        executors = {
            "a": make_executor(handlers=[handlers["a"]]),
            "b": make_executor(handlers=[handlers["b"]]),
            "c": make_executor(other_client, handlers=[handlers["c"]]),
        }
        # Another client switches Dask's own forwarding on and off in the middle.
        other_client.forward_logging()
        futures = [
            executor.submit(dask_tasks.log_messages, f"{label}{index}", 20)
            for index in range(4)
            for label, executor in executors.items()
        ]
        plain = other_client.submit(dask_tasks.log_messages, "plain", 20, pure=False)
        other_client.unforward_logging()
        futures += [
            executor.submit(dask_tasks.log_messages, f"{label}{index}", 20)
            for index in range(4, 8)
            for label, executor in executors.items()
        ]
        for future in futures:
            future.result(timeout=RESULT_TIMEOUT)
        plain.result(timeout=RESULT_TIMEOUT)
    for label, handler in handlers.items():
        got = messages(handler)
        expected = [f"{label}{index} {number}" for index in range(8) for number in range(20)]
        assert sorted(got) == sorted(expected), label
        assert not any(m.startswith("plain") for m in got)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_slow_handler_does_not_stall_the_client(client: Any, make_executor: Callable[..., Any]) -> None:
    """A slow driver handler runs on logexec's thread; the client's network thread stays free."""
    started = threading.Event()
    threads: list[str] = []

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            threads.append(threading.current_thread().name)
            started.set()
            time.sleep(0.5)

    executor = make_executor(handlers=[SlowHandler()])
    future = executor.submit(dask_tasks.log_messages, "slow", 5)
    assert started.wait(timeout=RESULT_TIMEOUT)
    begin = time.monotonic()
    assert client.submit(dask_tasks.add, 1, 2, pure=False).result(timeout=RESULT_TIMEOUT) == 3
    round_trip = time.monotonic() - begin
    assert not future.done(), "the handler should still be busy"
    future.result(timeout=RESULT_TIMEOUT)
    assert round_trip < 1.0, f"a plain task took {round_trip:.2f}s while the handler was busy"
    assert set(threads) == {"logexec-dask-dispatch"}


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_twenty_thousand_records_arrive(make_executor: Callable[..., Any]) -> None:
    """20,000 records from concurrent tasks all arrive, each task's in order."""
    handler = ListHandler()
    executor = make_executor(handlers=[handler])
    futures = [executor.submit(dask_tasks.log_messages, f"bulk{index}", 2500) for index in range(8)]
    for future in futures:
        future.result(timeout=60)
    assert len(handler.records) == 20_000
    got = messages(handler)
    for index in range(8):
        tag = f"bulk{index}"
        assert [m for m in got if m.split()[0] == tag] == [f"{tag} {number}" for number in range(2500)]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_shutdown_leaves_nothing_behind(client: Any, make_executor: Callable[..., Any]) -> None:
    """After shutdown, workers, scheduler (plugins, topics, subscriptions) and driver are as before."""

    def worker_plugins(dask_worker: Any) -> list[str]:
        return sorted(dask_worker.plugins)

    def scheduler_state(dask_scheduler: Any) -> tuple[list[str], list[str], list[str]]:
        # The broker is private to distributed; reading it here is how a test can see subscriptions.
        subscribed = [name for name, topic in dask_scheduler._broker._topics.items() if topic.subscribers]
        # Dask logs its own events (each update-graph under "scheduler"); only ours must go.
        ours = [name for name in dask_scheduler.get_events() if name.startswith("logexec-")]
        return sorted(dask_scheduler.plugins), sorted(ours), sorted(subscribed)

    def driver_state() -> tuple[list[str], list[str]]:
        topics = sorted(topic for topic in client._event_handlers if topic.startswith("logexec-"))
        threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("logexec-dask"))
        return topics, threads

    before = (
        client.run(dask_tasks.worker_logging_state),
        client.run(worker_plugins),
        client.run_on_scheduler(scheduler_state),
        driver_state(),
    )
    logging.getLogger().setLevel(logging.DEBUG)
    logging.getLogger("tests.dask.cleanup").setLevel(logging.DEBUG)
    executor = make_executor(handlers=[ListHandler()])
    futures = [
        executor.submit(dask_tasks.log_messages, f"clean{index}", 5, logging.DEBUG) for index in range(6)
    ]
    for future in futures:
        future.result(timeout=RESULT_TIMEOUT)
    during = client.run_on_scheduler(scheduler_state)
    assert executor._topic in during[1] and executor._topic in during[2]  # the check can fail
    executor.shutdown(wait=True)
    after = (
        client.run(dask_tasks.worker_logging_state),
        client.run(worker_plugins),
        client.run_on_scheduler(scheduler_state),
        driver_state(),
    )
    assert after == before
    assert client.status == "running"


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_shutdown_without_wait_still_handles_everything(
    make_executor: Callable[..., Any], collect: Callable[..., ListHandler]
) -> None:
    """shutdown(wait=False) returns at once, yet every submitted task's records are handled."""
    handler = collect("tests.dask")
    executor = make_executor()
    futures = [executor.submit(dask_tasks.log_messages, f"late{index}", 3) for index in range(4)]
    executor.shutdown(wait=False)
    for future in futures:
        future.result(timeout=RESULT_TIMEOUT)
    assert len(handler.records) == 12


# Last in the module: it kills a worker of the shared cluster (its nanny starts a new one).


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_a_lost_worker_keeps_what_it_sent(make_executor: Callable[..., Any], tmp_path: Any) -> None:
    """When a worker dies mid-task, what it had sent is handled, and Dask's rerun is the next attempt."""
    handler = ListHandler()
    executor = make_executor(handlers=[handler])
    future = executor.submit(dask_tasks.die_on_first_attempt, str(tmp_path / "attempts"), "lost")
    assert future.result(timeout=60) == "lost"
    assert messages(handler) == ["lost attempt 1", "lost attempt 2"]
    assert [getattr(record, "dask_attempt", None) for record in handler.records] == [1, 2]


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize("mode", ["basic", "dict", "dict-isolated"])
def test_module_level_config_writes_each_record_once(mode: str, tmp_path: Any) -> None:
    """A script configuring logging at module level gets each task record once; Dask's own still gets out."""
    pytest.importorskip("distributed")
    log_path = tmp_path / "app.log"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "LOGEXEC_TEST_APP_LOG": str(log_path),
        "LOGEXEC_TEST_APP_MODE": mode,
    }
    script = os.path.join(root, "tests", "dask_app_script.py")
    done = subprocess.run(
        [sys.executable, script],
        check=False,
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in log_path.read_text().splitlines() if line.startswith("app task record")]
    assert sorted(lines) == sorted(f"app task record {index}" for index in range(40))
    # Dask's own worker logger, logged in the task, still gets out (wherever it is configured).
    output = log_path.read_text() + done.stderr
    for index in range(40):
        assert f"dask worker record {index}\n" in output
