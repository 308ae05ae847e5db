"""``LoggingDaskExecutor``: the same logging guarantees for tasks on a Dask cluster.

Data flow::

   driver (this process)                               Dask workers (shared with others)
   ────────────────────────────────────────────────    ──────────────────────────────────────────
   submit(fn, *args)                                    run_task(task id, levels, fn, ...):
     │ task id; copy_context() kept by task id            • lease: while any of our tasks runs,
     │ the driver's levels, captured now                    one handler on root, the driver's
     ▼                                                      levels lowered into place
   client.submit(run_task, ..., pure=False) ─── task ──▶  • fn runs in a context holding this
                                                            task's collector; the handler keeps
                                                            only records logged in that context
                                                          • fn's exception is caught: part of
                                                            the outcome, like its value
   Dask-Callback-Thread: only enqueues ◀── done ─────── outcome = (value, error, records)
   dispatch thread ("logexec-dask-dispatch")
     • client.gather(the finished outcomes)
     • rebuild each record, context.run(dispatch) in
       the submitter's context (the Dispatcher that
       LoggingProcessPoolExecutor uses)
     • then, and only then, complete the future
   future.result() ◀────────────────────────────────

Why the records ride back with the task's outcome rather than on a side channel (Dask's
event topics, which ``Client.forward_logging`` uses, or pub/sub):

* **Result means handled**, trivially: the future completes after the dispatch thread has
  handled the records that came in the same message as the result. There is no second
  channel whose ordering against the result would need a barrier.
* **Isolation**, trivially: an outcome goes only to the client and executor that submitted
  the task. Nothing is published on the scheduler, so another client can neither receive
  our records nor switch our forwarding off, and there is no plugin to register, leak or
  remove: between tasks a worker's logging is exactly as we found it.
* **A record never fails its task**: each is pickled alone with ``_transport``'s policy
  (an unpicklable value becomes its ``repr()``), not by Dask's msgpack.
* **The network thread never runs a handler**: Dask's callback thread only puts the
  finished future on a queue; gathering and handling happen on our own thread.

The price: a task's records reach the driver when the task ends, not while it runs, and
only records logged in the task's own context are its records. A thread the task starts
itself is included only if it runs in the task's context (``contextvars.copy_context().run``,
``asyncio.to_thread``); records of other threads on a shared worker are not ours to take.

The task's own exception is caught on the worker, serialized by Dask's own function (so it
carries its traceback), and raised from the future here after the records are handled. To
Dask the task therefore succeeded; its exception is ours to report.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import pickle
import queue
import threading
import uuid
import weakref
from collections.abc import Iterable
from concurrent.futures import Executor, Future
from typing import Any, Callable, TypeVar

try:
    import distributed
    from dask.utils import funcname
    from distributed.core import clean_exception
except ImportError as error:
    raise ImportError(
        "logexec.dask needs Dask's 'distributed' package, an optional extra of logexec; "
        "install it with: pip install 'logexec[dask]'"
    ) from error

from . import _compat, _context, _dask_worker, _transport
from ._dispatch import Dispatcher, check_handlers

__all__ = ["LoggingDaskExecutor"]

T = TypeVar("T")

_LOGGER = logging.getLogger("logexec")

# Put on the arrival queue to tell the dispatch thread to stop once nothing is in flight.
_WAKE = object()


class _Task:
    """One submitted task: our future, Dask's, and the task id its records carry."""

    __slots__ = ("dask_future", "future", "task_id")

    def __init__(self, task_id: int, future: Future[Any]) -> None:
        self.task_id = task_id
        self.future = future
        self.dask_future: Any = None


class _Receiver:
    """The driver side: a queue of finished tasks and the thread that handles them.

    It holds no reference to the executor, so an executor dropped without ``shutdown``
    can still be collected; its finalizer then lets the thread end once idle.
    """

    def __init__(self, client: Any, dispatcher: Dispatcher) -> None:
        self._client = client
        self._dispatcher = dispatcher
        self._arrivals: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._in_flight: dict[int, _Task] = {}
        self._closing = False
        self._thread: threading.Thread | None = None

    # Called by the executor --------------------------------------------------------------

    def add(self, task: _Task) -> None:
        with self._lock:
            self._in_flight[task.task_id] = task
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
        """Stop the thread once every task in flight has been handled."""
        with self._lock:
            self._closing = True
            thread = self._thread
        self._arrivals.put(_WAKE)
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join()

    # The dispatch thread -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._arrivals.get()
            batch = [] if item is _WAKE else [item]
            # Take whatever else has finished meanwhile: one gather for all of them.
            while True:
                try:
                    item = self._arrivals.get_nowait()
                except queue.Empty:
                    break
                if item is not _WAKE:
                    batch.append(item)
            if batch:
                self._handle_batch(batch)
            with self._lock:
                if self._closing and not self._in_flight:
                    self._thread = None
                    return

    def _handle_batch(self, batch: list[_Task]) -> None:
        finished = [task for task in batch if task.dask_future.status == "finished"]
        outcomes: dict[int, Any] = {}
        if finished:
            try:
                gathered = self._client.gather([task.dask_future for task in finished])
                outcomes = {task.task_id: outcome for task, outcome in zip(finished, gathered)}
            except Exception:
                # One of them could not be fetched (its worker died, say); fetch each
                # alone below, so that only that one fails.
                outcomes = {}
        for task in batch:
            try:
                if task.task_id in outcomes:
                    self._deliver(task, outcomes[task.task_id])
                else:
                    self._deliver_alone(task)
            except Exception as error:  # never let the thread die
                _complete(task.future, None, error)
            finally:
                self._finish(task)

    def _deliver_alone(self, task: _Task) -> None:
        dask_future = task.dask_future
        if dask_future.status == "cancelled":
            if task.future.cancel():
                task.future.set_running_or_notify_cancel()
            return
        try:
            outcome = dask_future.result()
        except BaseException as error:
            if dask_future.status == "finished":
                # The task ran but its outcome could not travel (a value that does not
                # serialize): fetch its records alone, then report the error.
                self._deliver_records_only(task, dask_future)
            # Otherwise Dask could not run our wrapper at all (a KilledWorker, a function
            # that would not unpickle there): nothing was logged that we could receive.
            _complete(task.future, None, error)
            return
        self._deliver(task, outcome)

    def _deliver_records_only(self, task: _Task, dask_future: Any) -> None:
        try:
            records_only = self._client.submit(_dask_worker.records_of, dask_future, pure=False)
            records = records_only.result()
        except Exception:
            return  # the worker holding the outcome is gone too; nothing left to fetch
        self._dispatch_records(records)

    def _deliver(self, task: _Task, outcome: _dask_worker.Outcome) -> None:
        value, error, records = outcome
        # The records first: the future must not complete before they are handled.
        self._dispatch_records(records)
        if error is None:
            _complete(task.future, value, None)
        else:
            _, exception, traceback = clean_exception(*error)
            if exception is None:  # Dask's way of saying it could not rebuild it
                exception = RuntimeError("the Dask task failed, and its exception was lost in transit")
            _complete(task.future, None, exception.with_traceback(traceback))

    def _dispatch_records(self, records: bytes) -> None:
        dispatch = self._dispatcher.dispatch
        # A list of bytes only: nothing in it but bytes objects can be unpickled here.
        payloads: list[bytes] = pickle.loads(records)
        for payload in payloads:
            try:
                task_id, record = _transport.build_record(_transport.decode_values(payload))
            except Exception as problem:
                _LOGGER.error(
                    "logexec: a record of a Dask task could not be rebuilt in the driver and was "
                    "skipped (%s: %s); a value in its extra may be of a class the driver cannot import",
                    type(problem).__name__,
                    problem,
                )
                continue
            dispatch(task_id, record)

    def _finish(self, task: _Task) -> None:
        self._dispatcher.forget(task.task_id)
        # Let Dask release the outcome on the worker now that we have it.
        task.dask_future = None
        with self._lock:
            self._in_flight.pop(task.task_id, None)


class LoggingDaskExecutor(Executor):
    """A ``concurrent.futures.Executor`` on a Dask cluster whose tasks log through the driver.

    Every record logged inside a task, on any worker, is handled by this process's logging
    as if the call had been made here (``logging.getLogger(record.name).handle(record)``),
    or by exactly the given ``handlers``, before the task's future completes.

    client
        A connected, synchronous ``distributed.Client``. The executor never closes it.
    handlers
        ``None`` (dispatch by logger name, the default) or a sequence of ``logging.Handler``.
    propagate_contextvars
        Module-level ``contextvars.ContextVar`` objects, in modules the workers can import,
        whose values at ``submit`` are set in the task while it runs. (Driver-side filters
        always see the submitter's whole context, with or without this.)
    """

    def __init__(
        self,
        client: Any,
        *,
        handlers: Iterable[Any] | None = None,
        propagate_contextvars: Iterable[Any] = (),
    ) -> None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client, got {client!r}")
        self._client = client
        self._dispatcher = Dispatcher(check_handlers(handlers))
        self._variables = _context.locate_contextvars(propagate_contextvars)
        self._addresses = tuple(self._variables)
        self._receiver = _Receiver(client, self._dispatcher)
        self._lock = threading.Lock()
        self._shutdown = False
        self._task_ids = itertools.count()
        # Dropped without shutdown(): let the dispatch thread end once it is idle.
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
                task.task_id,
                levels,
                self._addresses,
                captured,
                fn,
                kwargs,
                *args,
                key=f"{funcname(fn)}-logexec-{uuid.uuid4().hex}",
                pure=False,
            )
        except BaseException:
            self._receiver.discard(task)
            raise
        task.future.add_done_callback(_CancelInDask(task))
        task.dask_future.add_done_callback(_Arrived(self._receiver, task))
        return task.future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking tasks; with ``wait``, return once every task's records are handled.

        The client stays open: the executor did not create it. Nothing stays installed on
        the workers or the scheduler, because nothing is installed beyond a running task.
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


def _complete(future: Future[Any], value: Any, error: BaseException | None) -> None:
    # A future the caller cancelled meanwhile stays cancelled; its records were handled.
    if not future.set_running_or_notify_cancel():
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)
