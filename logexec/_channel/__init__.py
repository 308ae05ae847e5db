"""The channel, and its seam with the fronts: how a worker's records reach the parent.

A *front* is what a user submits work to: ``LoggingProcessPoolExecutor`` (``_executor``),
the joblib backend (``logexec.joblib``), and next ``multiprocessing.Pool`` and ``Process``.
Every front needs the same four things from the channel, and this package exports exactly
those; a front imports nothing else from it (``tests/test_layout.py`` checks)::

 parent process (a front, then this seam)                 worker processes (spawn|fork|forkserver)
 ──────────────────────────────────────────────────────   ─────────────────────────────────────────
 1. channel = LogChannel(dispatcher, on_worker_exit)       2. initialize(config, user_init, user_args)
    config = channel.open()  ── config in initargs ────▶      (first, before the user's initializer):
    channel.start()   (under fork: after the fork)              • connect to the listener, prove the key
                                                                • every logger: no handlers, no filters,
 3. submit(fn, *args):                                            propagate = True
    task_id; dispatcher.register(task_id,                       • root: one QueueHandler → own channel
      contextvars.copy_context())                               • mirror the parent's levels
    levels update (the changes from the base) if changed
    ─ run_task(task_id, ..., levels, fn, *args) ─────────▶  3. run_task(...): apply the update if new;
                                                                run fn; each log call: the frame is out
 listener thread ("logexec-listener")  ◀──── frames ─────        before the call returns (by task id)
   • rebuild the record (logexec._records)                      • fn done: a barrier, if it logged,
   • dispatcher.dispatch(task_id, record): in the                 and wait for the answer
     submitter's context, getLogger(name).handle(record)              │
   • answer barriers ─────────────────────────── ack ──▶  ◀──────────┘
 future.result() ◀──── result ────────────────────────────  (sent only after the barrier's answer)
   ForgetWhenDone(dispatcher, task_id)

 4. a worker's connection ends ─▶ on_worker_exit([WorkerExit(pid, cut_off)]) on the listener
    thread; True once heard (False: call again soon). Then, when the front knows its last
    worker is gone (joined), channel.stop(): every connection is read to its end, then the
    thread stops.

The seam, name by name:

1. **A listener to start and stop.** ``LogChannel(dispatcher, on_worker_exit=None)``; its
   ``config`` (a ``WorkerConfig``, pickled into each worker with the parent's levels: its
   ``levels`` as the front fixed them, else those at pickling);
   ``open() -> WorkerConfig`` binds (before any worker starts); ``start()``; ``stop(wait=True)``
   only after the last worker is gone, since it reads every connection to its end;
   ``wait_stopped(timeout) -> bool``; ``thread``, ``address``, ``transport``. The channel
   holds no reference to the front: its life follows the workers, never the user's reference.
2. **A worker set-up, first in each worker.** ``initialize(config, user_initializer,
   user_initargs)``, the pool's initializer; it runs the user's initializer last, so that it
   can log.
3. **A task bracket.** Worker side: ``run_task(task_id, propagated, captured, levels, fn,
   /, *args, **kwargs)`` runs ``fn`` and returns only once the parent has handled every
   record it logged (a barrier, sent only if it logged). ``levels`` is None while the
   parent's levels are the base levels the front fixed in ``config.levels`` before its
   workers started; after a change, a ``LevelsUpdate``: ``(version, level_changes(base,
   current_levels()), disabled)``, made once per change (``LevelTracker``: ``base`` for the
   config, ``update()`` per task, under the submit lock). It names only the loggers that
   differ from the base, so a task's size does not grow with the configured loggers, and
   it is complete by itself, whichever updates a worker missed (the joblib front sends one,
   version 0 while unchanged, with every batch). A worker applies them with
   ``WorkerLevels(base, start)`` (made at its set-up: the start levels applied, None to
   keep those it has) and its ``apply(update)`` per task: any version but the one applied
   last; ``run_task`` does it, and a front with a transport of its own does the same
   (the interpreter front). Parent side:
   ``Dispatcher.register(task_id, context)`` before the task is submitted, and
   ``ForgetWhenDone(dispatcher, task_id)`` on its future (``logexec._dispatch``), so that its
   records are handled in the submitter's ``contextvars`` context. ``register`` is also where
   ``logexec.capture_records()`` hooks in: it reads the capture lists open in that context
   once, and ``dispatch`` appends each of the task's records to them; a front that
   registers its tasks gets capture for free (one that dispatches in a context of its own
   uses ``captures_of`` and ``append_captured``, as the joblib backend does).
4. **A worker's death.** ``on_worker_exit(exits: Sequence[WorkerExit]) -> bool``: each
   ``WorkerExit`` has the worker's ``pid`` and ``cut_off`` (bytes of a record it was still
   writing: 0 means it ended between records), its last ``records`` (at most 10) and the
   ``last_task`` id they were logged for. Every record it sent before is handled by then.
   Its exit code is the pool's to tell; ``logexec._crash`` turns both into the notes of a
   broken pool's exception.

And ``report(level, message, *args, exc_info=None)``: logexec's own reports, through the
parent's logging, never raising.

A front with a transport of its own (Dask ships records in its event topics; 3.14's
interpreters would use a queue) keeps everything above the transport: the record codec
(``logexec._records``), ``Dispatcher``, the levels (``LevelTracker`` in the parent,
``WorkerLevels`` in the worker) and the task bracket's rule (a result only once its records
are handled, by count or by barrier).

Inside (not for fronts): ``_listener`` (the thread, assembled from ``_guard``, ``_accept``,
``_read``), ``_framing`` (the wire format), ``_transports`` (which transport: ``_ring``,
``_socket``, ``_portable``), ``_worker`` (the worker's end of its connection) and ``_setup``
(the worker set-up, its handler and the task bracket).
"""

from ._guard import OnWorkerExit, WorkerExit, report
from ._parent import LevelTracker, LogChannel
from ._setup import WorkerLevels, initialize, run_task
from ._worker import Levels, LevelsUpdate, WorkerConfig, current_levels, level_changes

__all__ = [
    "LevelTracker",
    "Levels",
    "LevelsUpdate",
    "LogChannel",
    "OnWorkerExit",
    "WorkerConfig",
    "WorkerExit",
    "WorkerLevels",
    "current_levels",
    "initialize",
    "level_changes",
    "report",
    "run_task",
]
