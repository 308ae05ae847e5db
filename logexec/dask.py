"""``LoggingDaskExecutor``: the same logging guarantees for tasks on a Dask cluster.

Data flow::

   driver (this process)                                Dask workers (shared with others)
   ─────────────────────────────────────────────────    ──────────────────────────────────────────
   submit(fn, *args)                                     run_task(topic, task id, levels, fn, ...):
     │ task id; copy_context() kept by task id             • lease: while any of our tasks runs,
     │ the driver's levels, captured now                     one handler on root, the driver's
     │ first submit: subscribe_topic(our topic)              levels lowered into place
     ▼                                                     • fn runs in a context holding this
   client.submit(run_task, ..., pure=False,  ── task ──▶    attempt's run; the handler keeps only
                 retries=..., **options)                    records logged in that context
                                                           • a batch leaves when it holds 256
   client's event loop: only enqueues  ◀── events ──────    records or 64 KiB, or 50 ms after its
        (via the scheduler: log_event → our topic)          first record: Worker.log_event(topic,
                                                            [task, run, first seq, total|-1, batch])
   Dask-Callback-Thread: only enqueues ◀── done ───────  • fn returns: last batch with the total;
   dispatch thread ("logexec-dask-dispatch")                Dask gets (run id, total, value)
     • each batch, in sequence order per run: rebuild     • fn raises: last batch with the total,
       each record, mark record.dask_attempt, and           then the exception propagates: Dask
       context.run(dispatch) in the submitter's context     sees an erred task, applies retries
     • a finished task: gather (run id, total, value);
       an erred one: its exception and traceback
     • complete the future once every run whose total
       is known has had that many records handled
   future.result() ◀─────────────────────────────────

Why Dask's event topics, one per executor (measured on a loopback ``LocalCluster``, see
docs/dask.md): they ride on connections every Dask deployment already has (worker →
scheduler → client), so nothing new must be reachable or secured; batched, they carry 110-170k
records/s, beyond what the driver's own handling takes (~75k/s), with a median latency of about
2 ms. A comm of our own (worker → driver) measured faster with big batches and 1.4 ms, but it
needs every worker to reach the driver, which a client behind NAT or an SSH tunnel does not
allow, and its own authentication. ``distributed`` 2026 no longer has Pub/Sub.

What keeps each guarantee:

* **Result means handled** is a count, not a timing: a successful task's value carries its
  run's total, an erred run's last event does, and the future completes only when that many
  records of the run have been handled (for an erred task, once the latest run's total has
  arrived, unless the error is a ``KilledWorker``: that run died and will never say it).
  Dask's streams are ordered (worker → scheduler → client), so the count is normally
  complete when the outcome arrives; if a batch was lost
  (a worker's stream to the scheduler broke), the future completes after
  ``LATE_RECORDS_TIMEOUT`` with an error record that says how many are missing.
* **Isolation**: a topic per executor, named with a random uuid; only this executor
  subscribes to it, and each record carries its task id.
* **Nothing left behind**: shutdown unsubscribes and drops what the scheduler kept of the
  topic (``_dask_scheduler.forget_topic``); on a worker the handler and levels live only as
  long as one of our tasks runs there.
* **The network thread never runs a handler**: the client's event loop and Dask's callback
  thread only put items on a queue; records are handled on our own thread.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import pickle
import queue
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from typing import Any, Callable, TypeVar

try:
    import distributed
    from dask.utils import funcname
    from distributed import KilledWorker
except ImportError as error:
    raise ImportError(
        "logexec.dask needs Dask's 'distributed' package, an optional extra of logexec; "
        "install it with: pip install 'logexec[dask]'"
    ) from error

from . import _compat, _context, _dask_scheduler, _dask_worker, _transport
from ._dispatch import Dispatcher, check_handlers

__all__ = ["LoggingDaskExecutor"]

T = TypeVar("T")

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

# client.submit options that may be given to the executor, as Client.get_executor takes them
# (plus priority and fifo_timeout). Not key (each submit needs its own), not actor/actors
# (an actor is not a function call whose records we could collect).
SUBMIT_OPTIONS = frozenset(
    {"workers", "resources", "retries", "priority", "fifo_timeout", "allow_other_workers", "pure"}
)


def check_submit_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the executor's ``**kwargs`` for ``client.submit``; raise naming the parameter."""
    unknown = sorted(set(options) - SUBMIT_OPTIONS)
    if unknown:
        raise TypeError(
            f"LoggingDaskExecutor got unexpected keyword argument(s) {', '.join(unknown)}; the "
            f"client.submit options it passes on are {', '.join(sorted(SUBMIT_OPTIONS))}"
        )
    checked = dict(options)
    if checked.pop("pure", False) is not False:
        raise ValueError(
            f"pure must be False, got {options['pure']!r}: every submit is its own run with its "
            "own records, while pure=True lets Dask run identical calls once and hand every "
            "caller that one result (whose records were handled once, for one of them)"
        )
    retries = checked.get("retries")
    if retries is not None and (not isinstance(retries, int) or isinstance(retries, bool) or retries < 0):
        raise ValueError(f"retries must be None or an int >= 0, got {retries!r}")
    priority = checked.get("priority", 0)
    if not isinstance(priority, (int, float)) or isinstance(priority, bool):
        raise TypeError(f"priority must be a number, got {priority!r}")
    resources = checked.get("resources")
    if resources is not None and not isinstance(resources, Mapping):
        raise TypeError(f"resources must be None or a mapping of resource name to amount, got {resources!r}")
    workers = checked.get("workers")
    if workers is not None and not isinstance(workers, (str, Iterable)):
        raise TypeError(f"workers must be None, an address or an iterable of addresses, got {workers!r}")
    if not isinstance(checked.get("allow_other_workers", False), bool):
        raise TypeError(f"allow_other_workers must be a bool, got {checked['allow_other_workers']!r}")
    return checked


class _Run:
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


class _Task:
    """One submitted task: our future, Dask's, its attempts, and its outcome once known."""

    __slots__ = ("dask_future", "deadline", "final_run", "future", "outcome", "runs", "task_id")

    def __init__(self, task_id: int, future: Future[Any]) -> None:
        self.task_id = task_id
        self.future = future
        self.dask_future: Any = None
        self.runs: dict[str, _Run] = {}
        # (value, error) once Dask has finished with the task.
        self.outcome: tuple[Any, BaseException | None] | None = None
        # The run whose outcome that is, when it logged: its total must be known and met.
        self.final_run: _Run | None = None
        self.deadline: float | None = None

    def all_handled(self) -> bool:
        final = self.final_run
        if final is not None and final.total is None:
            return False
        return all(run.complete() for run in self.runs.values())

    def run(self, run_id: str) -> _Run:
        run = self.runs.get(run_id)
        if run is None:
            # Attempts are numbered in the order their first event (or result) arrives:
            # Dask starts a retry only after the attempt before it has erred.
            run = self.runs[run_id] = _Run(len(self.runs) + 1)
        return run


class _Receiver:
    """The driver side: the topic subscription, a queue of arrivals and the thread that handles them.

    It holds no reference to the executor, so an executor dropped without ``shutdown``
    can still be collected; its finalizer then lets the thread clean up and end once idle.
    """

    def __init__(self, client: Any, dispatcher: Dispatcher, topic: str) -> None:
        self._client = client
        self._dispatcher = dispatcher
        self.topic = topic
        # Events (sequences), finished tasks (_Task) and _WAKE, in the order they happened.
        self._arrivals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: dict[int, _Task] = {}
        # Tasks whose outcome is known but whose records are not all handled yet. Only the
        # dispatch thread touches it.
        self._parked: dict[int, _Task] = {}
        self._closing = False
        self._thread: threading.Thread | None = None
        self._subscribed = False

    # Called by the executor --------------------------------------------------------------

    def add(self, task: _Task) -> None:
        with self._lock:
            self._in_flight[task.task_id] = task
            if not self._subscribed:
                # Before the first task is submitted: both messages go out on the client's
                # one ordered stream, so the scheduler knows the subscriber before any of our
                # tasks can log.
                self._client.subscribe_topic(self.topic, self._on_event)
                self._subscribed = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="logexec-dask-dispatch", daemon=True)
                self._thread.start()

    def discard(self, task: _Task) -> None:
        """Forget a task that never reached Dask (its submit raised)."""
        with self._lock:
            self._in_flight.pop(task.task_id, None)
        self._dispatcher.forget(task.task_id)
        # A shutdown may be waiting for exactly this task to leave.
        self._arrivals.put(_WAKE)

    def arrived(self, task: _Task) -> None:
        """Dask's done-callback: runs on Dask's callback thread, so it only enqueues."""
        self._arrivals.put(task)

    def in_flight(self) -> list[_Task]:
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
                    if type(item) is _Task:
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
            self._dispatch(task_id, run.attempt, payloads)
            run.handled += len(payloads)
            # Batches that overtook this one (Dask keeps the order; be robust all the same).
            while run.handled in run.waiting:
                payloads = run.waiting.pop(run.handled)
                self._dispatch(task_id, run.attempt, payloads)
                run.handled += len(payloads)
        elif first > run.handled:
            run.waiting[first] = payloads
        if task.outcome is not None:
            self._complete_if_handled(task)

    def _handle_finished(self, batch: list[_Task]) -> None:
        finished = [task for task in batch if task.dask_future.status == "finished"]
        values: dict[int, Any] = {}
        if finished:
            try:
                gathered = self._client.gather([task.dask_future for task in finished])
                values = {task.task_id: outcome for task, outcome in zip(finished, gathered)}
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

    def _record_success(self, task: _Task, outcome: _dask_worker.Outcome) -> None:
        run_id, total, value = outcome
        if total:
            task.final_run = task.run(run_id)
            task.final_run.total = total
        task.outcome = (value, None)

    def _record_alone(self, task: _Task) -> None:
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

    def _complete_if_handled(self, task: _Task) -> None:
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

    def _finish(self, task: _Task) -> None:
        self._parked.pop(task.task_id, None)
        if task.outcome is not None:
            value, error = task.outcome
            _complete(task.future, value, error)
        self._dispatcher.forget(task.task_id)
        # Let Dask release the task's result on the worker now that we have it.
        task.dask_future = None
        with self._lock:
            self._in_flight.pop(task.task_id, None)

    def _dispatch(self, task_id: int, attempt: int, payloads: list[bytes]) -> None:
        dispatch = self._dispatcher.dispatch
        for payload in payloads:
            try:
                _, record = _transport.build_record(_transport.decode_values(payload))
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


class LoggingDaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` on a Dask cluster whose tasks log through the driver.

    Every record logged inside a task, on any worker, is handled by this process's logging
    as if the call had been made here (``logging.getLogger(record.name).handle(record)``),
    or by exactly the given ``handlers``, while the task runs (within about 50 ms plus
    Dask's own latency), and all of them before the task's future completes. Each record
    carries ``record.dask_attempt``: 1 for the task's first attempt, 2 for the next
    (Dask's ``retries``, or a rerun after a worker was lost), and so on.

    client
        A connected, synchronous ``distributed.Client``. The executor never closes it.
    handlers
        ``None`` (dispatch by logger name, the default) or a sequence of ``logging.Handler``.
    propagate_contextvars
        Module-level ``contextvars.ContextVar`` objects, in modules the workers can import,
        whose values at ``submit`` are set in the task while it runs. (Driver-side filters
        always see the submitter's whole context, with or without this.)
    **kwargs
        Options for every ``client.submit``, as ``Client.get_executor`` takes them:
        ``retries``, ``resources``, ``priority``, ``workers``, ``allow_other_workers``,
        ``fifo_timeout``. ``pure`` may only be False (the default here).
    """

    def __init__(
        self,
        client: Any,
        *,
        handlers: Iterable[Any] | None = None,
        propagate_contextvars: Iterable[Any] = (),
        **kwargs: Any,
    ) -> None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {client!r}")
        if client.asynchronous:
            raise TypeError("client must be a synchronous distributed.Client, got one with asynchronous=True")
        self._options = check_submit_options(kwargs)
        self._client = client
        self._dispatcher = Dispatcher(check_handlers(handlers))
        self._variables = _context.locate_contextvars(propagate_contextvars)
        self._addresses = tuple(self._variables)
        self._topic = f"logexec-{uuid.uuid4().hex}"
        self._receiver = _Receiver(client, self._dispatcher, self._topic)
        self._lock = threading.Lock()
        self._shutdown = False
        self._task_ids = itertools.count()
        # Dropped without shutdown(): let the dispatch thread clean up and end once idle.
        weakref.finalize(self, self._receiver.close, False)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            captured = _context.capture_values(self._variables)
            levels = (_compat.explicit_levels(), _compat.disabled_level())
            task = _Task(next(self._task_ids), Future())
            self._dispatcher.register(task.task_id, contextvars.copy_context())
            self._receiver.add(task)
        try:
            # pure=False: two identical submits are two runs, each with its own records
            # (get_executor()'s default pure=True would run them once). The user's kwargs
            # travel as one argument so that none of them is taken for a Dask option.
            task.dask_future = self._client.submit(
                _dask_worker.run_task,
                self._topic,
                task.task_id,
                levels,
                self._addresses,
                captured,
                fn,
                kwargs,
                *args,
                key=f"{funcname(fn)}-logexec-{uuid.uuid4().hex}",
                pure=False,
                **self._options,
            )
        except BaseException:
            self._receiver.discard(task)
            raise
        task.future.add_done_callback(_CancelInDask(task))
        task.dask_future.add_done_callback(_Arrived(self._receiver, task))
        return task.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``wait``, return once every task's records are handled.

        Then the executor's topic is unsubscribed and dropped from the scheduler. The client
        stays open: the executor did not create it.
        """
        with self._lock:
            self._shutdown = True
        if cancel_futures:
            for task in self._receiver.in_flight():
                task.future.cancel()
        self._receiver.close(wait)

    def __enter__(self) -> LoggingDaskExecutor:
        return self


class _Arrived:
    """Dask done-callback for one task."""

    __slots__ = ("_receiver", "_task")

    def __init__(self, receiver: _Receiver, task: _Task) -> None:
        self._receiver = receiver
        self._task = task

    def __call__(self, dask_future: Any) -> None:
        self._receiver.arrived(self._task)


class _CancelInDask:
    """Done-callback on our future: a cancelled future cancels its Dask task too."""

    __slots__ = ("_task",)

    def __init__(self, task: _Task) -> None:
        self._task = task

    def __call__(self, future: Future[Any]) -> None:
        dask_future = self._task.dask_future
        if future.cancelled() and dask_future is not None:
            try:
                dask_future.cancel()
            except Exception:
                pass  # the client is closing; the task is gone with it


def _attempt_of(run: _Run) -> int:
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
