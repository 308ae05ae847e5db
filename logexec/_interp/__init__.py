"""The subinterpreter front (CPython 3.14+): ``LoggingInterpreterPoolExecutor``.

Every interpreter has its own copy of every module, ``logging`` included, so the
application's logging configuration does not exist where ``InterpreterPoolExecutor`` runs
its tasks: their records go to each interpreter's ``lastResort``, on stderr, unformatted.
This front bridges them, keeping everything of logexec above the transport (the record
codec ``logexec._records``, the ``Dispatcher``, the task bracket's rule: a result only once
its records are handled) and replacing the transport with a ``concurrent.interpreters``
queue::

 main interpreter                                    each interpreter (one task at a time)
 ────────────────────────────────────────────────    ───────────────────────────────────────
 LoggingInterpreterPoolExecutor(...)                 initialize(link, user_init, user_args):
   queues: records (shared), answer queues             • take an answer queue; HELLO
   ─ Link in initargs (pickled, with the levels) ─▶   • root: one InterpreterHandler
 submit(fn, *args): task id; the submitter's            • mirror the main levels; user_init
   context kept; levels if changed                     • atexit: a last barrier, GOODBYE
   ─ run_task(task_id, ..., fn, *args) ───────────▶  run_task: levels; task id; fn
 reader thread ("logexec-interpreters")                • each log call (any thread): the
   • bytes: decode_record; dispatcher.dispatch ◀──────   record's bytes onto the records queue
     in the submitter's context                        • fn done: if it logged, a BARRIER
   • BARRIER: answer on its answer queue ─────────▶      marker, and wait for the answer
 future.result() ◀────────────────────────────────── (returned or raised after the answer)

Items on such a queue are bound to the interpreter that put them, and read as ``UNBOUND``
once it is closed; the barriers (after each task that logged, and at the interpreter's
close) make sure each interpreter's items are read first (see ``_worker``).
"""

import sys

if sys.version_info >= (3, 14):  # mypy checks on 3.11
    from ._executor import LoggingInterpreterPoolExecutor

__all__ = ["LoggingInterpreterPoolExecutor"]
