"""The driver side of ``LoggingDaskExecutor``: the topic, the arrivals queue and the dispatch thread.

Two threads that are not ours feed one queue, and neither of them runs anything else:

* the client's event loop (Dask's network thread) puts each event of the executor's topic;
* Dask's callback thread puts each task whose Dask future is done.

The ``logexec-dask-dispatch`` thread takes them in order. An event's records are handed to
the ``Dispatcher`` in sequence order per run, each marked with ``record.dask_attempt``. A done
task's outcome is fetched (its value, or its exception with its traceback), and its future
completes once every record the outcome's run sent, by its count, has been handled. See the
data flow in ``logexec.dask``.
"""

from __future__ import annotations

import collections
import logging
import pickle
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from distributed import KilledWorker

from .. import _crash, _records
from .._dispatch import Dispatcher, dispatching_thread
from . import _scheduler as _dask_scheduler
from . import _worker as _dask_worker

_LOGGER = logging.getLogger("logexec")

# Put on the arrival queue to make the dispatch thread look at its state again.
_WAKE = object()

# How long a finished task waits for records its count says were sent but that have not
# arrived. Dask's ordered streams make this wait zero in practice; it only ends the wait
# when a batch was lost with a broken connection, instead of hanging the future.
LATE_RECORDS_TIMEOUT = 10.0

# The attempt number given to records whose task is no longer in flight (a task whose
# future was cancelled while it ran keeps logging until Dask's task ends).
UNKNOWN_ATTEMPT = 0


class Run:
    """The driver's view of one attempt of a task: how far its records have been handled."""

    __slots__ = ("attempt", "handled", "total", "waiting")

    def __init__(self, attempt: int) -> None:
        self.attempt = attempt
        # Sequence number of the next record to hand to the handlers.
        self.handled = 0
        # The run's total, once its last event (or a successful result) has said it.
        self.total: int | None = None
        # Batches that came ahead of their turn, by the sequence number of their first record.
        self.waiting: dict[int, list[bytes]] = {}

    def complete(self) -> bool:
        return self.total is None or self.handled >= self.total


class Task:
    """One submitted task: our future, Dask's, its attempts, and its outcome once known."""

    __slots__ = (
        "call",
        "dask_future",
        "deadline",
        "final_run",
        "future",
        "outcome",
        "recent",
        "runs",
        "task_id",
    )

    def __init__(self, task_id: int, future: Future[Any], call: _crash.Task | None = None) -> None:
        self.task_id = task_id
        self.future = future
        # For the notes of a KilledWorker: the call, and the task's last records.
        self.call = call
        self.recent: collections.deque[logging.LogRecord] = collections.deque(maxlen=_crash.MAX_RECORD_LINES)
        self.dask_future: Any = None
        self.runs: dict[str, Run] = {}
        # (value, error) once Dask has finished with the task.
        self.outcome: tuple[Any, BaseException | None] | None = None
        # The run whose outcome that is, when it logged: its total must be known and met.
        self.final_run: Run | None = None
        self.deadline: float | None = None

    def all_handled(self) -> bool:
        final = self.final_run
        if final is not None and final.total is None:
            return False
        return all(run.complete() for run in self.runs.values())

    def run(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            # Attempts are numbered in the order their first event (or result) arrives:
            # Dask starts a retry only after the attempt before it has erred.
            run = self.runs[run_id] = Run(len(self.runs) + 1)
        return run


class Receiver:
    """The driver side: the topic subscription, a queue of arrivals and the thread that handles them.

    It holds no reference to the executor, so an executor dropped without ``shutdown``
    can still be collected; its finalizer then lets the thread clean up and end once idle.
    """

    def __init__(self, client: Any, dispatcher: Dispatcher, topic: str) -> None:
        self._client = client
        self._dispatcher = dispatcher
        self.topic = topic
        # Events (sequences), finished tasks (Task) and _WAKE, in the order they happened.
        self._arrivals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: dict[int, Task] = {}
        # Tasks whose outcome is known but whose records are not all handled yet. Only the
        # dispatch thread touches it.
        self._parked: dict[int, Task] = {}
        self._closing = False
        self._thread: threading.Thread | None = None
        self._subscribed = False

    # Called by the executor --------------------------------------------------------------

    def add(self, task: Task) -> None:
        with self._lock:
            self._in_flight[task.task_id] = task
            if not self._subscribed:
                # Before the first task is submitted: both messages go out on the client's
                # one ordered stream, so the scheduler knows the subscriber before any of our
                # tasks can log.
                self._client.subscribe_topic(self.topic, self._on_event)
                self._subscribed = True
            if self._thread is None:
                self._thread = dispatching_thread(self._run, "logexec-dask-dispatch")
                self._thread.start()

    def discard(self, task: Task) -> None:
        """Forget a task that never reached Dask (its submit raised)."""
        with self._lock:
            self._in_flight.pop(task.task_id, None)
        self._dispatcher.forget(task.task_id)
        # A shutdown may be waiting for exactly this task to leave.
        self._arrivals.put(_WAKE)

    def arrived(self, task: Task) -> None:
        """Dask's done-callback: runs on Dask's callback thread, so it only enqueues."""
        self._arrivals.put(task)

    def in_flight(self) -> list[Task]:
        with self._lock:
            return list(self._in_flight.values())

    def close(self, wait: bool) -> None:
        """Stop once every task in flight has been handled, then unsubscribe and clean up."""
        with self._lock:
            self._closing = True
            thread = self._thread
        if thread is None:
            return  # never used: nothing subscribed, nothing to wait for
        self._arrivals.put(_WAKE)
        if wait and thread is not threading.current_thread():
            thread.join()

    # The client's event loop ---------------------------------------------------------------

    def _on_event(self, event: Any) -> None:
        """Runs on the client's network thread for each event on our topic: only enqueues."""
        self._arrivals.put(event[1])

    # The dispatch thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._arrivals.get(timeout=self._time_to_deadline())
            except queue.Empty:
                item = _WAKE
            finished = []
            while True:
                try:
                    if type(item) is Task:
                        finished.append(item)
                    elif item is not _WAKE:
                        # An event: a list or, as msgpack unpacks it, a tuple.
                        self._handle_event(item)
                except Exception:  # never let the thread die
                    _LOGGER.exception("logexec: an event of a Dask task could not be handled")
                try:
                    item = self._arrivals.get_nowait()
                except queue.Empty:
                    break
            try:
                if finished:
                    self._handle_finished(finished)
                if self._parked:
                    self._expire_parked()
            except Exception:  # never let the thread die
                _LOGGER.exception("logexec: finished Dask tasks could not be handled")
            with self._lock:
                if self._closing and not self._in_flight:
                    break
        self._clean_up()

    def _time_to_deadline(self) -> float | None:
        if not self._parked:
            return None
        deadlines = [task.deadline for task in self._parked.values() if task.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _handle_event(self, event: Sequence[Any]) -> None:
        task_id, run_id, first, total, records = event
        # A list of bytes only: nothing in it but bytes objects can be unpickled here.
        payloads: list[bytes] = pickle.loads(records) if records else []
        task = self._in_flight.get(task_id)
        if task is None:
            # Our topic, so our executor's records, but the task is over (cancelled while it
            # ran): hand them on as they come.
            self._dispatch(task_id, UNKNOWN_ATTEMPT, payloads)
            return
        run = task.run(run_id)
        if total != _dask_worker.NOT_LAST:
            run.total = total
        if first == run.handled:
            self._dispatch(task_id, run.attempt, payloads, task.recent)
            run.handled += len(payloads)
            # Batches that overtook this one (Dask keeps the order; be robust all the same).
            while run.handled in run.waiting:
                payloads = run.waiting.pop(run.handled)
                self._dispatch(task_id, run.attempt, payloads, task.recent)
                run.handled += len(payloads)
        elif first > run.handled:
            run.waiting[first] = payloads
        if task.outcome is not None:
            self._complete_if_handled(task)

    def _handle_finished(self, batch: list[Task]) -> None:
        finished = [task for task in batch if task.dask_future.status == "finished"]
        values: dict[int, Any] = {}
        if finished:
            try:
                gathered = self._client.gather([task.dask_future for task in finished])
                values = {task.task_id: outcome for task, outcome in zip(finished, gathered, strict=True)}
            except Exception:
                # One of them could not be fetched (its worker died, or its value does not
                # serialize); fetch each alone below, so that only that one fails.
                values = {}
        for task in batch:
            try:
                if task.task_id in values:
                    self._record_success(task, values[task.task_id])
                else:
                    self._record_alone(task)
            except Exception as error:  # never let the thread die
                task.outcome = (None, error)
            if task.outcome is None:  # cancelled
                self._finish(task)
            else:
                self._complete_if_handled(task)

    def _record_success(self, task: Task, outcome: _dask_worker.Outcome) -> None:
        run_id, total, value = outcome
        if total:
            task.final_run = task.run(run_id)
            task.final_run.total = total
        task.outcome = (value, None)

    def _record_alone(self, task: Task) -> None:
        dask_future = task.dask_future
        if dask_future.status == "cancelled":
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()
            return
        if dask_future.status == "error":
            exception = dask_future.exception()
            traceback = dask_future.traceback()
            if traceback is not None:
                exception = exception.with_traceback(traceback)
            # The erred attempt's last event, with its total, came ahead of this on Dask's
            # ordered streams; should it not have, wait for it: the latest run is the one that
            # erred. Not after a KilledWorker: that run died with its worker, and no total will
            # come (earlier runs that never said a total died the same way).
            if task.runs and not isinstance(exception, KilledWorker):
                task.final_run = max(task.runs.values(), key=_attempt_of)
            if isinstance(exception, KilledWorker):
                # Dask names the worker; say what the task was and what it logged last.
                _crash.add_notes(exception, [_crash.lost_task_note(task.call, task.recent)])
            task.outcome = (None, exception)
            return
        try:
            outcome = dask_future.result()
        except BaseException as error:
            # The task ran but its value could not travel (it does not serialize), or Dask
            # lost it. Its records came as events all the same.
            task.outcome = (None, error)
            return
        self._record_success(task, outcome)

    def _complete_if_handled(self, task: Task) -> None:
        if task.all_handled():
            self._finish(task)
        elif task.deadline is None:
            task.deadline = time.monotonic() + LATE_RECORDS_TIMEOUT
            self._parked[task.task_id] = task

    def _expire_parked(self) -> None:
        now = time.monotonic()
        for task in list(self._parked.values()):
            if task.deadline is not None and task.deadline <= now:
                if task.final_run is not None and task.final_run.total is None:
                    _LOGGER.error(
                        "logexec: the last records of Dask task %d (attempt %d) did not reach the "
                        "driver within %.0f s of its error; the worker's connection to the scheduler "
                        "may have broken",
                        task.task_id,
                        task.final_run.attempt,
                        LATE_RECORDS_TIMEOUT,
                    )
                else:
                    missing = sum(
                        (run.total or 0) - run.handled for run in task.runs.values() if not run.complete()
                    )
                    _LOGGER.error(
                        "logexec: %d record(s) of Dask task %d did not reach the driver within %.0f s "
                        "of its outcome; the worker's connection to the scheduler may have broken",
                        missing,
                        task.task_id,
                        LATE_RECORDS_TIMEOUT,
                    )
                self._finish(task)

    def _finish(self, task: Task) -> None:
        self._parked.pop(task.task_id, None)
        if task.outcome is not None:
            value, error = task.outcome
            _complete(task.future, value, error)
        self._dispatcher.forget(task.task_id)
        # Let Dask release the task's result on the worker now that we have it.
        task.dask_future = None
        with self._lock:
            self._in_flight.pop(task.task_id, None)

    def _dispatch(
        self,
        task_id: int,
        attempt: int,
        payloads: list[bytes],
        recent: collections.deque[logging.LogRecord] | None = None,
    ) -> None:
        dispatch = self._dispatcher.dispatch
        for payload in payloads:
            try:
                _, record = _records.build_record(_records.decode_values(payload))
            except Exception as problem:
                _LOGGER.error(
                    "logexec: a record of a Dask task could not be rebuilt in the driver and was "
                    "skipped (%s: %s); a value in its extra may be of a class the driver cannot import",
                    type(problem).__name__,
                    problem,
                )
                continue
            # Set in the record's dict: it is an attribute like any extra, for formatters
            # ("%(dask_attempt)s") and filters alike.
            record.__dict__["dask_attempt"] = attempt
            if recent is not None:
                recent.append(record)
            dispatch(task_id, record)

    def _clean_up(self) -> None:
        """Unsubscribe, and drop what the scheduler kept of our topic."""
        with self._lock:
            if not self._subscribed:
                return
            self._subscribed = False
        client = self._client
        reason = ""
        try:
            forgotten = client.run_on_scheduler(_dask_scheduler.forget_topic, self.topic, client.id)
        except Exception as error:  # logexec missing on the scheduler, or the client closing
            forgotten = False
            reason = f"{type(error).__name__}: {error}"
        if not forgotten:
            try:
                client.unsubscribe_topic(self.topic)
            except Exception:
                pass  # the client is closed: its subscriptions went with it
            if client.status == "running":
                _LOGGER.warning(
                    "logexec: the Dask scheduler keeps the last events of topic %s (at most %d "
                    "KiB each) after shutdown, because it could not be told to drop them (%s)",
                    self.topic,
                    _dask_worker.MAX_BATCH_BYTES // 1024,
                    reason or "its distributed version keeps them elsewhere",
                )
        _drop_event_handler(client, self.topic)


def _attempt_of(run: Run) -> int:
    return run.attempt


def _drop_event_handler(client: Any, topic: str) -> None:
    """Remove our handler from the client's table of event handlers.

    ``Client.unsubscribe_topic`` (distributed 2026.8) only tells the scheduler, and leaves the
    handler in the client, where it would keep this executor's receiver alive for the client's
    lifetime. There is no public way to remove it; this is the one place that reaches in.
    """
    handlers = getattr(client, "_event_handlers", None)
    if isinstance(handlers, dict):
        handlers.pop(topic, None)


def _complete(future: Future[Any], value: Any, error: BaseException | None) -> None:
    # A future the caller cancelled meanwhile stays cancelled; its records were handled.
    if not future.set_running_or_notify_cancel():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
