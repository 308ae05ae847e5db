"""The worker side of ``logexec.joblib``: each joblib batch runs inside logexec's task wrapper.

loky starts a worker with logexec's initializer (``_worker.initialize``), which connects it
to the parent's listener and puts the one ``QueueHandler`` on root. Every batch joblib sends
then runs through ``run_batch``, which

* first brings the worker's logger levels up to date with the parent's, as they were when
  the ``Parallel`` call began: loky keeps its workers for many calls, so the levels the
  initializer applied at the worker's start go stale when the parent changes its own (a
  test that calls ``caplog.set_level``, an application that turns on DEBUG); and
* then runs the batch in ``_worker.run_task``, which returns only once the parent has
  handled every record the batch logged ("a result means its records are handled").
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from . import _worker

# (explicitly set logger levels by name, "" for root; the level given to logging.disable)
Levels = tuple[dict[str, int], int]

# The levels this worker last applied, and the loggers that got a level from them.
_applied: Levels | None = None
_named: frozenset[str] = frozenset()


def run_batch(levels: Levels | None, task_id: int, batch: Callable[[], Any]) -> Any:
    """Run one joblib batch; return only after the parent has handled its records."""
    if levels is not None and levels != _applied:
        apply_levels(levels)
    return run_task(task_id, batch)


def apply_levels(levels: Levels) -> None:
    """Mirror the parent's levels; a logger the parent no longer sets goes back to NOTSET."""
    global _applied, _named
    logger_levels, disabled = levels
    for name in _named.difference(logger_levels):
        logging.getLogger(name or None).setLevel(logging.NOTSET)
    for name, level in logger_levels.items():
        logger = logging.getLogger(name or None)
        if logger.level != level:
            # setLevel clears every logger's cache: only when something changed.
            logger.setLevel(level)
    logging.disable(disabled)
    _applied = levels
    _named = frozenset(name for name in logger_levels if name)


# Adapter to the core: the single call into logexec's task wrapper (see _worker.run_task).
# No context variables are propagated (the joblib backend has no such option), hence the
# empty addresses and None for their captured values.
def run_task(task_id: int, batch: Callable[[], Any]) -> Any:
    return _worker.run_task(task_id, (), None, batch)
